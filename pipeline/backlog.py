"""Batch re-triage of a backlog file through the same ``Pipeline`` the service uses.

When the model or the routing rules change, operations re-route the whole open backlog and look
at what moved before applying it. Three promises shape this module:

- **Flat memory.** Rows are read, routed and written batch by batch; at most a few batches are
  in flight whatever the file size.
- **No lost, no duplicated row after a crash.** Each batch is appended and fsynced, then a small
  checkpoint (rows consumed, committed output position, the report tally) replaces the previous
  one atomically. ``resume`` truncates whatever was written after the last checkpoint and skips the
  rows it covers, so a kill at any instant is harmless.
- **A bad row never stops the run** and is never dropped silently: it goes to the rejects file with
  its line number and the reason.

Engines only decide *where* ``route_rows`` runs: ``local`` runs it in threads over one shared
``Pipeline`` while the main thread reads and writes (torch releases the GIL, so file work overlaps
inference); ``ray`` runs it in Ray Data actors that each load the pipeline once. Both hand back
batches in input order to the same committing sink.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.backlog_io import (
    CommittedWriter,
    InputFormat,
    OutputFormat,
    RejectsWriter,
    RoutedRow,
    Row,
    count_records,
    detect_input_format,
    detect_output_format,
    file_fingerprint,
    fsync_dir,
    open_writer,
    read_rows,
)
from pipeline.backlog_report import ReportContext, RouteTally, write_report
from pipeline.errors import DataError, HearkenError
from pipeline.heap import HeapTrimmer
from pipeline.schema import Message, TriageResult

log = logging.getLogger(__name__)

Engine = Literal["local", "ray"]
CHECKPOINT_FORMAT = 1


class BatchRouter(Protocol):
    """What re-triage needs of a ``Pipeline`` (tests wrap one to simulate crashes)."""

    model_version: str

    def route_batch(self, messages: Sequence[Message]) -> list[TriageResult | HearkenError]: ...


class RetriageOptions(BaseModel):
    """Everything a re-triage run needs; the CLI fills it from its options."""

    model_config = ConfigDict(extra="forbid")

    input: Path = Field(description="Backlog file: JSONL, CSV or Parquet with id, text and optional columns.")
    output: Path = Field(description="Where the v1 results go, one per routed input row, in input order.")
    input_format: InputFormat | None = Field(
        default=None, description="Input format; None: from the extension."
    )
    output_format: OutputFormat | None = Field(
        default=None, description="Output format; None: .parquet/.csv from the extension, else JSONL."
    )
    model: Path | None = Field(default=None, description="Model folder; None: $HEARKEN_MODEL or the default.")
    rejects: Path | None = Field(default=None, description="Rejects file; None: OUTPUT.rejects.jsonl.")
    report: Path | None = Field(
        default=None, description="Report base name (BASE.md and BASE.html); None: OUTPUT.report.*"
    )
    write_report: bool = Field(default=True, description="Write the Markdown/HTML report at the end.")
    resume: bool = Field(default=False, description="Continue the unfinished run recorded in the checkpoint.")
    batch_size: int = Field(
        default=256,
        ge=1,
        description="Rows per route_batch call and per commit. Large batches let the encoder sort windows by "
        "length and pad less; the cost is memory and the work redone after a crash.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Local engine: threads calling route_batch on the one shared pipeline (torch threads are "
        "split between them). Reading and writing always overlap inference in the main thread.",
    )
    trim_memory_interval_s: float = Field(
        default=30.0,
        ge=0.0,
        description="Give memory the encoder has freed back to the operating system at most this often, "
        "between batches (glibc malloc_trim, a few ms); 0 never does.",
    )
    engine: Engine = Field(default="local", description="local: this machine; ray: Ray Data actors.")
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join ('auto', 'ray://host:10001'); None: start a local Ray."
    )
    ray_actors: int | None = Field(
        default=None,
        ge=1,
        description="Ray actors, each with its own pipeline; None: cluster CPUs / CPUs per actor.",
    )
    ray_cpus_per_actor: float = Field(
        default=1.0, gt=0, description="CPUs (and torch threads) per Ray actor."
    )
    progress: bool = Field(default=True, description="Show a progress bar on stderr.")


class Checkpoint(BaseModel):
    """The sidecar ``OUTPUT.checkpoint.json``: what is durably done, replaced atomically after each batch."""

    model_config = ConfigDict(extra="forbid")

    format: int = CHECKPOINT_FORMAT
    input: str = Field(description="Input path as given.")
    input_fingerprint: str = Field(
        description="Size and head hash of the input, to refuse resuming on another."
    )
    input_format: InputFormat
    output_format: OutputFormat
    model_version: str = Field(description="Results from two models must not be mixed in one output.")
    rows_consumed: int = Field(
        default=0, description="Input records done (routed or rejected), from the start."
    )
    output_position: int = Field(
        default=0, description="Committed output bytes (JSONL/CSV) or parts (Parquet)."
    )
    rejects_position: int = Field(default=0, description="Committed bytes of the rejects file.")
    seconds: float = Field(default=0.0, description="Wall time of all runs so far.")
    complete: bool = Field(default=False, description="The output is final.")
    tally: RouteTally = Field(default_factory=RouteTally)


@dataclass
class RetriageSummary:
    """Counts for the final lines on stderr and the exit code."""

    output: Path
    rejects: Path | None
    tally: RouteTally
    rows_this_run: int = 0
    seconds_this_run: float = 0.0
    resumed_at: int = 0
    reports: list[Path] = field(default_factory=list)

    @property
    def routed(self) -> int:
        return self.tally.routed

    @property
    def rejected(self) -> int:
        return self.tally.rejected

    def describe(self) -> str:
        """A few human lines: what happened, how fast, where to look."""
        tiers = ", ".join(f"{k}: {v}" for k, v in sorted(self.tally.tiers.items())) or "none"
        rate = self.rows_this_run / self.seconds_this_run if self.seconds_this_run > 0 else 0.0
        lines = [
            f"routed {self.routed}, rejected {self.rejected}; tiers {tiers}; "
            f"human review {self.tally.human_review} ({100 * self.tally.human_review_share:.1f}%)",
            f"this run: {self.rows_this_run} rows in {self.seconds_this_run:.1f} s ({rate:.1f} rows/s)"
            + (f", resumed after row {self.resumed_at}" if self.resumed_at else ""),
            f"output: {self.output}",
        ]
        if self.rejects is not None:
            lines.append(f"rejects: {self.rejects}")
        if self.reports:
            lines.append("report: " + ", ".join(str(p) for p in self.reports))
        return "\n".join(lines)


# ================================================================================= routing


def route_rows(pipeline: BatchRouter, rows: Sequence[Row]) -> list[RoutedRow]:
    """Route a batch with ``Pipeline.route_batch``; every row comes back, routed or with its reject reason.

    Shared by every engine (threads here, Ray actors in ``backlog_ray``): there is one inference path.
    A failure of the whole batch (a bug in a stage, met by one odd message) is retried message by
    message so that only the culprit is rejected and the backlog run goes on.
    """
    good = [row for row in rows if row.message is not None]
    messages = [row.message for row in good if row.message is not None]
    try:
        outcomes: list[TriageResult | HearkenError | Exception] = list(pipeline.route_batch(messages))
    except Exception:
        log.exception("route_batch failed on a batch of %d; routing its messages one by one", len(messages))
        outcomes = []
        for message in messages:
            try:
                outcomes.extend(pipeline.route_batch([message]))
            except Exception as exc:
                outcomes.append(exc)
    by_seq = {row.seq: outcome for row, outcome in zip(good, outcomes, strict=True)}
    routed = []
    for row in rows:
        outcome = by_seq.get(row.seq)
        if outcome is None:
            routed.append(
                RoutedRow(
                    row.seq, row.line, row.raw_id, None, row.reject or "unreadable row", previous=row.previous
                )
            )
        elif isinstance(outcome, TriageResult):
            routed.append(
                RoutedRow(
                    row.seq,
                    row.line,
                    outcome.id,
                    outcome.model_dump_json(),
                    None,
                    tier=outcome.route.tier,
                    queue=outcome.route.queue,
                    product=outcome.product.label,
                    needs_human_review=outcome.route.needs_human_review,
                    previous=row.previous,
                )
            )
        else:
            reason = (
                str(outcome)
                if isinstance(outcome, HearkenError)
                else (f"the pipeline failed on this message (a bug, please report it): {outcome!r}")
            )
            routed.append(RoutedRow(row.seq, row.line, row.raw_id, None, reason, previous=row.previous))
    return routed


def batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """Consecutive batches of ``size`` rows (the last one shorter)."""
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def route_local(
    pipeline: BatchRouter,
    batches: Iterable[list[Row]],
    workers: int = 1,
    torch_threads: int | None = None,
    trim_memory_interval_s: float = 0.0,
) -> Iterator[list[RoutedRow]]:
    """Route batches in ``workers`` threads; yield results in input order.

    The caller's thread pulls the next input batch and writes finished ones while the workers run
    the model; at most ``workers + 1`` batches are in flight, which bounds memory.

    ``torch_threads``: torch's intra-op threads in each worker. The setting is per thread: a worker
    that is not told gets OpenMP's default (every CPU), so two workers would run twice as many
    threads as there are CPUs, and a ``torch.set_num_threads`` made by the caller would be ignored.
    ``trim_memory_interval_s``: see ``HeapTrimmer`` (0: never).
    """
    from pipeline.runtime import configure_threads

    trimmer = HeapTrimmer(trim_memory_interval_s)
    with ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix="hearken-route",
        initializer=configure_threads,
        initargs=(torch_threads,),
    ) as pool:
        pending: deque[Future[list[RoutedRow]]] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(route_rows, pipeline, batch))
                while len(pending) > workers or (pending and pending[0].done()):
                    yield pending.popleft().result()
                    trimmer.trim_if_due()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ================================================================================= checkpoint


def checkpoint_path(output: Path) -> Path:
    """``OUTPUT.checkpoint.json``, beside the output."""
    return output.with_name(output.name + ".checkpoint.json")


def default_rejects_path(output: Path) -> Path:
    return output.with_name(output.name + ".rejects.jsonl")


def default_report_base(output: Path) -> Path:
    return output.with_name(output.name + ".report")


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write to a temp file, fsync, rename over the old one, fsync the folder: never half a checkpoint."""
    temp = path.with_name(path.name + ".tmp")
    with temp.open("w", encoding="utf-8") as handle:
        handle.write(checkpoint.model_dump_json())
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)
    fsync_dir(path.parent)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint, or None when there is none; a corrupt one is an error with the fix."""
    if not path.exists():
        return None
    try:
        return Checkpoint.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise DataError(
            f"The checkpoint {path} is not readable ({exc.errors()[0]['msg']}).",
            fix=f"delete {path} and run again without --resume to start over",
        ) from exc


def _start_state(options: RetriageOptions, fresh: Checkpoint, path: Path) -> tuple[Checkpoint, bool]:
    """Decide between a fresh start and a resume; return the checkpoint to continue from and ``resumed``."""
    existing = load_checkpoint(path)
    if not options.resume:
        if existing is not None and not existing.complete:
            raise DataError(
                f"{options.output} belongs to an unfinished run ({existing.rows_consumed} rows committed).",
                fix=f"add --resume to continue it, or delete {path} to start over",
            )
        return fresh, False
    if existing is None:
        if options.output.exists():
            raise DataError(
                f"Cannot resume: {options.output} exists but has no checkpoint {path}.",
                fix="run again without --resume to start over",
            )
        log.info("nothing to resume for %s; starting from the beginning", options.output)
        return fresh, False
    mismatches = [
        name
        for name in ("input_fingerprint", "input_format", "output_format", "model_version")
        if getattr(existing, name) != getattr(fresh, name)
    ]
    if mismatches:
        details = "; ".join(
            f"{n}: was {getattr(existing, n)!r}, now {getattr(fresh, n)!r}" for n in mismatches
        )
        raise DataError(
            f"Cannot resume {options.output}: the run differs from the one in the checkpoint ({details}).",
            fix="resume with the same input, formats and model, or run without --resume to start over",
        )
    return existing, True


# ================================================================================= the run


class _Sink:
    """Writes routed batches in order and commits each one: output, rejects, then the checkpoint."""

    def __init__(
        self, writer: CommittedWriter, rejects: RejectsWriter, checkpoint: Checkpoint, path: Path
    ) -> None:
        self.writer = writer
        self.rejects = rejects
        self.checkpoint = checkpoint
        self.path = path
        self.started = time.monotonic()
        self.seconds_before = checkpoint.seconds

    def commit(self, rows: list[RoutedRow]) -> None:
        if not rows:
            return
        self.writer.write(rows)
        self.rejects.write(rows)
        position = self.writer.commit()
        rejects_position = self.rejects.commit()
        self.checkpoint.tally.update(rows)
        self.checkpoint.rows_consumed = rows[-1].seq + 1
        self.checkpoint.output_position = position
        self.checkpoint.rejects_position = rejects_position
        self.checkpoint.seconds = self.seconds_before + time.monotonic() - self.started
        save_checkpoint(self.path, self.checkpoint)

    def finish(self) -> None:
        self.writer.finish()
        self.checkpoint.complete = True
        self.checkpoint.seconds = self.seconds_before + time.monotonic() - self.started
        save_checkpoint(self.path, self.checkpoint)
        self.writer.cleanup()

    def close(self) -> None:
        self.writer.close()
        self.rejects.close()


def _progress(options: RetriageOptions, input_format: InputFormat, initial: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    total: int | None = None
    if options.progress:
        try:
            total = count_records(options.input, input_format)
        except OSError:
            total = None
    return tqdm(
        total=total,
        initial=initial,
        unit="row",
        desc="retriage",
        file=sys.stderr,
        disable=not options.progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _model_version(options: RetriageOptions, pipeline: BatchRouter | None) -> str:
    if pipeline is not None:
        return pipeline.model_version
    from pipeline.artifact import default_model_dir, read_manifest

    return read_manifest(options.model or default_model_dir()).model_version


def run_retriage(options: RetriageOptions, pipeline: BatchRouter | None = None) -> RetriageSummary:
    """Re-route a backlog file; write results, rejects, checkpoint and report; return the summary.

    ``pipeline`` is the loaded ``Pipeline`` for the local engine (loaded from ``options.model`` when
    None); the Ray engine loads it in each actor from ``options.model`` instead.
    """
    input_format = detect_input_format(options.input, options.input_format)
    output_format = detect_output_format(options.output, options.output_format)
    if not options.input.is_file():
        raise DataError(f"Backlog file {options.input} not found.", fix="check the INPUT path")
    if options.output.resolve() == options.input.resolve():
        raise DataError("OUTPUT is the INPUT file.", fix="write the results to another path")
    if options.engine == "local" and pipeline is None:
        from pipeline.triage import Pipeline

        pipeline = Pipeline.from_folder(options.model)
    rejects_path = options.rejects or default_rejects_path(options.output)
    state_path = checkpoint_path(options.output)
    fresh = Checkpoint(
        input=str(options.input),
        input_fingerprint=file_fingerprint(options.input),
        input_format=input_format,
        output_format=output_format,
        model_version=_model_version(options, pipeline if options.engine == "local" else None),
    )
    checkpoint, resumed = _start_state(options, fresh, state_path)
    resumed_at = checkpoint.rows_consumed if resumed else 0
    started = time.monotonic()
    ran = not checkpoint.complete
    if ran:
        if not resumed:
            options.output.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(state_path, checkpoint)  # before touching OUTPUT: resume can trust what it finds
        writer = open_writer(options.output, output_format, checkpoint.output_position if resumed else None)
        rejects = RejectsWriter(rejects_path, checkpoint.rejects_position if resumed else None)
        sink = _Sink(writer, rejects, checkpoint, state_path)
        try:
            with _progress(options, input_format, checkpoint.rows_consumed) as bar:
                for routed in _route(options, pipeline, input_format, checkpoint.rows_consumed):
                    sink.commit(routed)
                    bar.update(len(routed))
                    bar.set_postfix(rejected=checkpoint.tally.rejected, refresh=False)
            sink.finish()
        finally:
            sink.close()
    else:
        log.info("%s is already complete; rewriting the report only", options.output)
    tally = checkpoint.tally
    if tally.rejected == 0:
        rejects_path.unlink(missing_ok=True)
    summary = RetriageSummary(
        output=options.output,
        rejects=rejects_path if tally.rejected else None,
        tally=tally,
        rows_this_run=checkpoint.rows_consumed - resumed_at if ran else 0,
        seconds_this_run=time.monotonic() - started,
        resumed_at=resumed_at,
    )
    if options.write_report:
        context = ReportContext(
            input=str(options.input),
            output=str(options.output),
            rejects=str(rejects_path) if tally.rejected else None,
            model_version=checkpoint.model_version,
            engine=options.engine,
            seconds=checkpoint.seconds,
        )
        summary.reports = list(
            write_report(tally, context, options.report or default_report_base(options.output))
        )
    return summary


def _route(
    options: RetriageOptions, pipeline: BatchRouter | None, input_format: InputFormat, skip: int
) -> Iterator[list[RoutedRow]]:
    """Routed batches in input order, from the chosen engine, starting after ``skip`` records."""
    if options.engine == "ray":
        from pipeline.backlog_ray import route_on_ray  # imports ray: only when asked for

        yield from route_on_ray(options, input_format, skip)
        return
    if pipeline is None:
        raise ValueError("the local engine needs a pipeline")
    rows = read_rows(options.input, input_format, skip=skip)
    import torch

    # Each worker gets its share of the caller's threads; the caller only reads and writes meanwhile.
    per_worker = max(1, torch.get_num_threads() // options.workers)
    yield from route_local(
        pipeline,
        batched(rows, options.batch_size),
        options.workers,
        per_worker,
        options.trim_memory_interval_s,
    )
