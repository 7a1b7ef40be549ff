"""Re-triage runs through the tiny pipeline: formats, rejects, report, resume after a crash, threads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backlog import (
    Checkpoint,
    RetriageOptions,
    checkpoint_path,
    route_rows,
    run_retriage,
)
from pipeline.backlog_io import Row
from pipeline.errors import DataError
from pipeline.schema import Message, TriageResult

TEXTS = [
    "Hi, I was charged twice for my card this month. Can you refund the second charge?",
    "My transfer has been pending for a week.\nPlease tell me when it will arrive.",
    "I want to close my account. Who do I talk to?",
]


def write_backlog(path: Path, n: int, *, bad: bool = True) -> list[str]:
    """``n`` good rows (with a previous tier) plus, when ``bad``, four bad lines; returns the good ids."""
    ids = []
    with path.open("wb") as handle:
        for i in range(n):
            ids.append(f"m{i}")
            record = {"id": f"m{i}", "text": f"{TEXTS[i % 3]} (#{i})", "previous_tier": f"tier{1 + i % 3}"}
            handle.write(json.dumps(record).encode() + b"\n")
            if bad and i == 2:
                handle.write(b'{"id": "broken", "text": \n')
                handle.write(b'{"id": "empty", "text": "   "}\n')
            if bad and i == 5:
                handle.write(b'{"text": "nobody"}\n')
                handle.write(b'{"id": "bin", "text": "\xff\xfe\x00"}\n')
    return ids


def small_run(tmp_path: Path, n: int, **overrides) -> RetriageOptions:
    """Options for a quiet run (no progress bar, no report) over a fresh ``n``-row backlog of good rows."""
    write_backlog(tmp_path / "in.jsonl", n, bad=False)
    values = {
        "input": tmp_path / "in.jsonl",
        "output": tmp_path / "out.jsonl",
        "batch_size": 2,
        "progress": False,
        "write_report": False,
    }
    return RetriageOptions(**{**values, **overrides})


def output_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_jsonl_run_writes_results_rejects_and_report(tmp_path: Path, tiny_pipeline) -> None:
    ids = write_backlog(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out" / "results.jsonl"
    summary = run_retriage(
        RetriageOptions(input=tmp_path / "in.jsonl", output=out, batch_size=5, progress=False), tiny_pipeline
    )
    assert output_ids(out) == ids
    for line in out.read_text().splitlines():
        TriageResult.model_validate_json(line)
    assert summary.routed == 12 and summary.rejected == 4
    rejects = [
        json.loads(line)
        for line in (tmp_path / "out" / "results.jsonl.rejects.jsonl").read_text().splitlines()
    ]
    assert [r["line"] for r in rejects] == [4, 5, 9, 10]
    assert rejects[0]["reason"].startswith("line is not valid JSON")
    assert rejects[1]["id"] == "empty" and "empty" in rejects[1]["reason"] and "Fix:" in rejects[1]["reason"]
    assert rejects[2]["reason"] == "missing id"
    assert rejects[3]["reason"] == "line is not valid UTF-8"
    markdown = (tmp_path / "out" / "results.jsonl.report.md").read_text()
    assert "## Moves: tier" in markdown and "`m0`" in markdown
    # Every previous tier moved somewhere (or stayed): 12 routed rows, 4 per previous tier.
    assert sum(markdown.count(f"| tier{n} | ") >= 1 for n in (1, 2, 3)) == 3
    html = (tmp_path / "out" / "results.jsonl.report.html").read_text()
    assert 'src="data:image/png;base64,iVBOR' in html
    checkpoint = Checkpoint.model_validate_json(checkpoint_path(out).read_text())
    assert checkpoint.complete and checkpoint.rows_consumed == 16
    assert "rejected 4" in summary.describe()


def test_csv_in_parquet_out_and_parquet_in_csv_out(tmp_path: Path, tiny_pipeline) -> None:
    csv_in = tmp_path / "in.csv"
    csv_in.write_text('id,text,queue\na,"Where is my card?",cards\nb,"Refund me, please.",billing\n')
    parquet_out = tmp_path / "out.parquet"
    report = tmp_path / "reports" / "run1"
    summary = run_retriage(
        RetriageOptions(input=csv_in, output=parquet_out, report=report, progress=False), tiny_pipeline
    )
    assert summary.rejected == 0 and not (tmp_path / "out.parquet.rejects.jsonl").exists()
    table = pq.read_table(parquet_out)
    assert table.column("id").to_pylist() == ["a", "b"]
    TriageResult.model_validate(table.to_pylist()[1])
    # The CSV carried an existing queue: the report shows where each one moved.
    moves = (tmp_path / "reports" / "run1.md").read_text().split("## Moves: queue")[1]
    assert "| cards | " in moves and "| billing | " in moves
    assert (tmp_path / "reports" / "run1.html").exists()

    parquet_in = tmp_path / "backlog.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["Cancel my order.", "Thanks!"]}), parquet_in)
    csv_out = tmp_path / "results.txt"
    run_retriage(
        RetriageOptions(
            input=parquet_in, output=csv_out, output_format="csv", write_report=False, progress=False
        ),
        tiny_pipeline,
    )
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith('"schema_version","id"') and len(lines) == 3
    assert not (tmp_path / "results.txt.report.md").exists()


class CrashingPipeline:
    """The tiny pipeline, but the process 'dies' during the ``crash_on``-th batch."""

    def __init__(self, pipeline, crash_on: int) -> None:
        self.pipeline = pipeline
        self.model_version = pipeline.model_version
        self.calls = 0
        self.crash_on = crash_on

    def route_batch(self, messages):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("simulated kill")
        return self.pipeline.route_batch(messages)


@pytest.mark.parametrize("output_name", ["out.jsonl", "out.csv", "out.parquet"])
def test_resume_after_crash_has_every_row_once(tmp_path: Path, tiny_pipeline, output_name: str) -> None:
    ids = write_backlog(tmp_path / "in.jsonl", 30)
    out = tmp_path / output_name
    options = RetriageOptions(input=tmp_path / "in.jsonl", output=out, batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_retriage(options, CrashingPipeline(tiny_pipeline, crash_on=4))
    checkpoint = Checkpoint.model_validate_json(checkpoint_path(out).read_text())
    assert not checkpoint.complete and checkpoint.rows_consumed == 12
    if output_name != "out.parquet":
        with out.open("ab") as handle:  # half a batch that reached the disk but not the checkpoint
            handle.write(b'{"schema_version":"1","id":"m9", "trunc')
    with pytest.raises(DataError, match="--resume"):
        run_retriage(options, tiny_pipeline)
    summary = run_retriage(options.model_copy(update={"resume": True}), tiny_pipeline)
    assert summary.resumed_at == 12 and summary.routed == 30 and summary.rejected == 4
    if output_name == "out.parquet":
        got = pq.read_table(out).column("id").to_pylist()
    elif output_name == "out.csv":
        import csv

        with out.open(newline="") as handle:
            got = [r["id"] for r in csv.DictReader(handle)]
    else:
        got = output_ids(out)
    assert got == ids
    rejects = (tmp_path / f"{output_name}.rejects.jsonl").read_text().splitlines()
    assert [json.loads(r)["line"] for r in rejects] == [4, 5, 9, 10]
    again = run_retriage(options.model_copy(update={"resume": True}), tiny_pipeline)  # complete: no-op
    assert again.rows_this_run == 0 and again.routed == 30


def test_resume_refuses_another_input(tmp_path: Path, tiny_pipeline) -> None:
    write_backlog(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    options = RetriageOptions(input=tmp_path / "in.jsonl", output=out, batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_retriage(options, CrashingPipeline(tiny_pipeline, crash_on=2))
    write_backlog(tmp_path / "in.jsonl", 11)
    with pytest.raises(DataError, match="input_fingerprint"):
        run_retriage(options.model_copy(update={"resume": True}), tiny_pipeline)
    out2 = tmp_path / "other.jsonl"
    out2.write_text("not ours\n")
    with pytest.raises(DataError, match="no checkpoint"):
        run_retriage(options.model_copy(update={"output": out2, "resume": True}), tiny_pipeline)


def test_two_worker_threads_keep_input_order(tmp_path: Path, tiny_pipeline) -> None:
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    base = small_run(tmp_path, 40, output=one, batch_size=3)
    ids = output_ids(tmp_path / "in.jsonl")  # the input ids, in order
    run_retriage(base, tiny_pipeline)
    run_retriage(base.model_copy(update={"output": two, "workers": 2}), tiny_pipeline)
    assert output_ids(two) == ids
    assert one.read_text() == two.read_text()


class ThreadRecorder:
    """Wraps a pipeline; records torch's intra-op thread count seen by each routing thread."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_version = inner.model_version
        self.seen: dict[str, int] = {}

    def route_batch(self, messages):
        import threading

        import torch

        self.seen[threading.current_thread().name] = torch.get_num_threads()
        return self.inner.route_batch(messages)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_threads_share_the_callers_torch_threads(tmp_path: Path, tiny_pipeline, workers: int) -> None:
    """torch's thread setting is per thread: each worker must be given its share, not OpenMP's default."""
    import torch

    options = small_run(tmp_path, 12, workers=workers)
    recorder = ThreadRecorder(tiny_pipeline)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_retriage(options, recorder)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert recorder.seen and all(name.startswith("hearken-route") for name in recorder.seen)
    assert set(recorder.seen.values()) == {2 // workers}


def test_a_batch_failure_rejects_only_the_culprit(tiny_pipeline) -> None:
    class Fragile:
        model_version = tiny_pipeline.model_version

        def route_batch(self, messages):
            if any("boom" in m.text for m in messages):
                if len(messages) > 1:
                    raise RuntimeError("stage bug")
                raise ValueError("boom")
            return tiny_pipeline.route_batch(messages)

    rows = [
        Row(i, i + 1, Message(id=f"x{i}", text=t), raw_id=f"x{i}")
        for i, t in enumerate(["ok", "boom", "fine"])
    ]
    routed = route_rows(Fragile(), rows)
    assert [r.result_json is not None for r in routed] == [True, False, True]
    assert "a bug, please report it" in routed[1].reject and routed[1].id == "x1"


def test_binary_and_empty_text_are_rejected_with_the_pipeline_reason(tiny_pipeline) -> None:
    texts = ["\x00\x01\x02\x03\x04 binary \x05\x06\x07\x08", "  \n ", "A real question?"]
    rows = [Row(i, i + 1, Message(id=f"b{i}", text=t), raw_id=f"b{i}") for i, t in enumerate(texts)]
    routed = route_rows(tiny_pipeline, rows)
    assert routed[0].result_json is None and "Fix:" in routed[0].reject
    assert routed[1].result_json is None and "empty" in routed[1].reject
    assert routed[2].result_json is not None and routed[2].reject is None


def test_freed_memory_is_trimmed_between_batches(
    tmp_path: Path, tiny_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.heap import HeapTrimmer

    trims: list[int] = []
    monkeypatch.setattr(HeapTrimmer, "_find_malloc_trim", staticmethod(lambda: trims.append))
    run_retriage(small_run(tmp_path, 9, trim_memory_interval_s=1e-9), tiny_pipeline)
    assert len(trims) >= 3  # between batches (5 batches of at most 2 rows)
    trims.clear()
    run_retriage(
        small_run(tmp_path, 9, output=tmp_path / "again.jsonl", trim_memory_interval_s=0.0), tiny_pipeline
    )
    assert trims == []
