"""Backlog readers and writers: bad rows become rejects with line numbers; writers resume by truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backlog_io import (
    CsvWriter,
    JsonlWriter,
    ParquetWriter,
    RoutedRow,
    count_records,
    detect_input_format,
    detect_output_format,
    read_rows,
    result_schema,
)
from pipeline.errors import DataError
from pipeline.schema import RouteResult, TriageResult


def _result(row_id: str) -> TriageResult:
    return TriageResult(
        id=row_id,
        language="en",
        asks=[{"text": "Can you help?", "start": 0, "end": 13, "score": 0.9}],
        product={
            "label": "credit_card",
            "confidence": 0.8,
            "mentions": [{"text": "card", "start": 1, "end": 5}],
        },
        intent={"label": "refund", "confidence": 0.7},
        route=RouteResult(tier="tier2", queue="cards", confidence=0.6, reasons=["an ask"]),
        model_version="test",
    )


def _routed(seq: int) -> RoutedRow:
    return RoutedRow(seq, seq + 1, f"r{seq}", _result(f"r{seq}").model_dump_json(), None)


def test_formats_from_extension_or_flag(tmp_path: Path) -> None:
    assert detect_input_format(Path("a.JSONL")) == "jsonl"
    assert detect_input_format(Path("a.csv")) == "csv"
    assert detect_input_format(Path("a.parquet")) == "parquet"
    assert detect_input_format(Path("a.txt"), "csv") == "csv"
    with pytest.raises(DataError, match="--input-format"):
        detect_input_format(Path("a.txt"))
    assert detect_output_format(Path("o.out")) == "jsonl"
    assert detect_output_format(Path("o.parquet")) == "parquet"
    assert detect_output_format(Path("o.jsonl"), "csv") == "csv"


def test_jsonl_bad_lines_are_rows_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": 1, "text": "first", "tier": "tier1"}\n'
        b"\n"
        b"not json\n"
        b'{"text": "no id"}\n'
        b'{"id": "x", "text": "bad \xff byte"}\n'
        b"[1, 2]\n"
        b'{"id": "n", "text": 5}\n'
        b'{"id": "v1", "text": "again", "route": {"tier": "tier3", "queue": "q"}, '
        b'"product": {"label": "p"}}\n'
        b'{"id": "last", "text": "no newline at the end"}'
    )
    rows = list(read_rows(path, "jsonl"))
    assert [r.line for r in rows] == [1, 3, 4, 5, 6, 7, 8, 9]
    assert [r.seq for r in rows] == list(range(8))
    first = rows[0]
    assert first.message is not None and first.message.id == "1" and first.previous == {"tier": "tier1"}
    reasons = [r.reject for r in rows]
    assert reasons[1].startswith("line is not valid JSON")
    assert reasons[2] == "missing id"
    assert reasons[3] == "line is not valid UTF-8"
    assert "not an object" in reasons[4]
    assert "not a string" in reasons[5] and rows[5].raw_id == "n"
    assert rows[6].previous == {"tier": "tier3", "queue": "q", "product": "p"}
    assert rows[7].message is not None and rows[7].message.text == "no newline at the end"
    assert [r.seq for r in read_rows(path, "jsonl", skip=5)] == [5, 6, 7]
    assert count_records(path, "jsonl") == 9  # an estimate: blank lines count


def test_csv_multiline_malformed_and_utf8(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"id,text,subject,previous_queue\n"
        b'a1,"two\nlines",hello,billing\n'
        b"a2,too,many,fields,here\n"
        b'a3,"bad ""quote"x,,\n'
        b"a4,caf\xe9,,\n"
        b"\n"
        b",no id,,\n"
        b"a6,fine,,cards\n"
    )
    rows = list(read_rows(path, "csv"))
    assert [r.line for r in rows] == [2, 4, 5, 6, 8, 9]
    ok = rows[0]
    assert ok.message is not None and ok.message.text == "two\nlines" and ok.message.subject == "hello"
    assert ok.previous == {"queue": "billing"}
    assert (
        rows[1].reject == "malformed CSV record: 5 fields where the header has 4" and rows[1].raw_id == "a2"
    )
    assert rows[2].reject is not None and rows[2].reject.startswith("malformed CSV record (")
    assert rows[3].reject == "line is not valid UTF-8" and rows[3].raw_id == "a4"
    assert rows[4].reject == "missing id"
    assert rows[5].message is not None and rows[5].previous == {"queue": "cards"}
    assert [r.seq for r in read_rows(path, "csv", skip=4)] == [4, 5]
    assert count_records(path, "csv") == 6


def test_csv_without_required_columns_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("ticket,body\n1,hello\n")
    with pytest.raises(DataError, match="name the columns id and text"):
        list(read_rows(path, "csv"))


def test_parquet_rows_and_skip_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2, None, 4, 5, 6, 7], pa.int64()),
            "text": pa.array([b"a", b"b", b"c", b"\xff", b"e", b"f", b"g"], pa.binary()),
            "tier": ["t1", None, "t1", "t2", "t2", "t2", "t3"],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    rows = list(read_rows(path, "parquet", parquet_batch=3))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[0].message is not None and rows[0].message.id == "1" and rows[0].previous == {"tier": "t1"}
    assert rows[1].previous == {"tier": None}
    assert rows[2].reject == "missing id"
    assert rows[3].reject == "text is not valid UTF-8" and rows[3].raw_id == "4"
    assert [r.seq for r in read_rows(path, "parquet", skip=3)] == [3, 4, 5, 6]
    assert [r.seq for r in read_rows(path, "parquet", skip=7)] == []
    assert count_records(path, "parquet") == 7


def test_jsonl_writer_truncates_to_the_committed_position(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path, None)
    writer.write([_routed(0), _routed(1)])
    committed = writer.commit()
    writer.write([_routed(2)])  # written but never committed: a crash here
    writer.file.handle.flush()
    writer.close()
    resumed = JsonlWriter(path, committed)
    resumed.write([_routed(2)])
    resumed.finish()
    resumed.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["r0", "r1", "r2"]


def test_csv_writer_header_once_and_nested_fields_as_json(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, None)
    writer.write([_routed(0)])
    committed = writer.commit()
    writer.close()
    resumed = CsvWriter(path, committed)
    resumed.write([_routed(1)])
    resumed.finish()
    resumed.close()
    import csv

    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["id"] for r in records] == ["r0", "r1"]
    assert json.loads(records[0]["route"])["queue"] == "cards"
    assert json.loads(records[0]["asks"])[0]["text"] == "Can you help?"
    assert records[0]["language"] == "en"


def test_parquet_writer_parts_resume_and_merge(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    writer = ParquetWriter(path, None)
    writer.write([_routed(0), _routed(1)])
    committed = writer.commit()
    writer.write([_routed(2)])
    writer.commit()  # a part the checkpoint never heard of
    resumed = ParquetWriter(path, committed)
    resumed.write([_routed(2), _routed(3)])
    resumed.commit()
    resumed.finish()
    assert path.with_name(path.name + ".parts").exists()  # kept until the checkpoint says complete
    resumed.cleanup()
    table = pq.read_table(path)
    assert table.schema.equals(result_schema())
    assert table.column("id").to_pylist() == ["r0", "r1", "r2", "r3"]
    again = TriageResult.model_validate(table.to_pylist()[0])
    assert again == _result("r0")
    assert not path.with_name(path.name + ".parts").exists()
