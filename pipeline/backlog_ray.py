"""The Ray engine for re-triage: the same ``route_rows`` in Ray Data actors, for backlogs too big for one box.

Only imported for ``--engine ray`` (Ray is an optional extra and slow to import).

- **Reading** is one streaming read task that runs the ordinary backlog reader (same rejects, same
  line numbers, same resume skip) on the node that runs the command, where INPUT is; it yields
  blocks of ``batch_size`` rows as it goes, so nothing is loaded whole.
- **Routing** is ``map_batches`` with a callable class: each actor loads ``Pipeline.from_folder``
  once and calls ``route_rows`` — the same function the local engine uses — on each batch.
  The model folder's files travel through the object store and are verified by the normal loader
  on every actor, so worker nodes need Hearken installed but not the model on disk.
- **Writing** stays on the driver: batches come back in input order (``preserve_order``) and go
  to the same committing sink as the local engine, so checkpoints and resume work the same way.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.backlog import RetriageOptions, batched, route_rows
from pipeline.backlog_io import InputFormat, RoutedRow, Row, read_rows
from pipeline.heap import HeapTrimmer
from pipeline.schema import Message

log = logging.getLogger(__name__)

_ROW_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("subject", pa.string()),
        ("reject", pa.string()),
        ("previous", pa.string()),
    ]
)
_ROUTED_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("result_json", pa.string()),
        ("reject", pa.string()),
        ("tier", pa.string()),
        ("queue", pa.string()),
        ("product", pa.string()),
        ("needs_human_review", pa.bool_()),
        ("previous", pa.string()),
    ]
)


def rows_to_table(rows: list[Row]) -> pa.Table:
    """Input rows as an Arrow block (explicit schema: an all-null column must not change type)."""
    return pa.Table.from_pylist(
        [
            {
                "seq": r.seq,
                "line": r.line,
                "id": r.message.id if r.message else r.raw_id,
                "text": r.message.text if r.message else None,
                "subject": r.message.subject if r.message else None,
                "reject": r.reject,
                "previous": json.dumps(r.previous) if r.previous else None,
            }
            for r in rows
        ],
        schema=_ROW_SCHEMA,
    )


def table_to_rows(table: pa.Table) -> list[Row]:
    rows = []
    for r in table.to_pylist():
        previous = json.loads(r["previous"]) if r["previous"] else {}
        message = None
        if r["reject"] is None:
            message = Message(id=r["id"], text=r["text"], subject=r["subject"])
        rows.append(Row(r["seq"], r["line"], message, r["reject"], r["id"], previous))
    return rows


def routed_to_table(routed: list[RoutedRow]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "seq": r.seq,
                "line": r.line,
                "id": r.id,
                "result_json": r.result_json,
                "reject": r.reject,
                "tier": r.tier,
                "queue": r.queue,
                "product": r.product,
                "needs_human_review": r.needs_human_review,
                "previous": json.dumps(r.previous) if r.previous else None,
            }
            for r in routed
        ],
        schema=_ROUTED_SCHEMA,
    )


def table_to_routed(table: pa.Table) -> list[RoutedRow]:
    out = []
    for r in table.to_pylist():
        encoded = r.pop("previous")
        previous = json.loads(encoded) if encoded else {}
        out.append(RoutedRow(**r, previous=previous))
    return out


class BacklogDatasource(Datasource):
    """One streaming read task over the backlog file, in order, starting after ``skip`` records."""

    def __init__(self, path: Path, fmt: InputFormat, skip: int, block_rows: int) -> None:
        self.path = path
        self.fmt: InputFormat = fmt
        self.skip = skip
        self.block_rows = block_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        metadata = BlockMetadata(
            num_rows=None, size_bytes=None, exec_stats=None, input_files=(str(self.path),)
        )
        return [ReadTask(self._read, metadata, schema=_ROW_SCHEMA, per_task_row_limit=per_task_row_limit)]

    def _read(self) -> Iterator[pa.Table]:
        for batch in batched(read_rows(self.path, self.fmt, skip=self.skip), self.block_rows):
            yield rows_to_table(batch)


class RayRouter:
    """A Ray Data actor: loads the pipeline once, then routes every batch it is given with ``route_rows``."""

    def __init__(
        self, model_files: dict[str, bytes] | ray.ObjectRef, threads: int, trim_memory_interval_s: float = 0.0
    ) -> None:
        from pipeline.runtime import configure_threads
        from pipeline.triage import Pipeline

        if isinstance(model_files, ray.ObjectRef):  # Ray Data does not resolve refs in constructor kwargs
            model_files = ray.get(model_files)
        configure_threads(max(1, threads))
        self._folder = tempfile.TemporaryDirectory(prefix="hearken-model-")
        folder = Path(self._folder.name)
        for name, data in model_files.items():
            (folder / name).write_bytes(data)
        self.pipeline = Pipeline.from_folder(folder)  # verifies every file against the manifest
        self._trimmer = HeapTrimmer(trim_memory_interval_s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        routed = routed_to_table(route_rows(self.pipeline, table_to_rows(batch)))
        self._trimmer.trim_if_due()
        return routed


def read_model_files(folder: Path) -> dict[str, bytes]:
    """The model folder's files, to ship to actors through the object store."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def route_on_ray(options: RetriageOptions, input_format: InputFormat, skip: int) -> Iterator[list[RoutedRow]]:
    """Routed batches in input order, computed by Ray Data actors; joins or starts Ray as told."""
    from pipeline.artifact import default_model_dir, read_manifest

    folder = Path(options.model or default_model_dir()).resolve()
    read_manifest(folder)  # fail here, with the fix, rather than in every actor
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, include_dashboard=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        context.print_on_execution_start,
    )
    try:
        context.execution_options.preserve_order = True  # results come back in input order
        context.enable_progress_bars = False  # ours is on stderr already
        context.print_on_execution_start = False
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actors = options.ray_actors or max(1, int(cluster_cpus // options.ray_cpus_per_actor))
        log.info(
            "ray: %d actors x %.1f CPUs on a cluster of %.0f CPUs",
            actors,
            options.ray_cpus_per_actor,
            cluster_cpus,
        )
        here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
        dataset = ray.data.read_datasource(
            BacklogDatasource(options.input.resolve(), input_format, skip, options.batch_size),
            num_cpus=0,  # reading is light; leave every CPU to the actors
            label_selector=here,  # INPUT is a local file of this node
        ).map_batches(
            RayRouter,
            fn_constructor_kwargs={
                # By reference: put in the object store once, not pickled into every actor's constructor
                # (Ray warned of a 166 MB UDF and of constructor arguments lost on actor restarts).
                "model_files": ray.put(read_model_files(folder)),
                "threads": int(max(1, options.ray_cpus_per_actor)),
                "trim_memory_interval_s": options.trim_memory_interval_s,
            },
            batch_size=options.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.ray_cpus_per_actor,
        )
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            if table.num_rows:
                yield table_to_routed(table)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved[:2]
        context.print_on_execution_start = saved[2]
        if started_here:
            ray.shutdown()
