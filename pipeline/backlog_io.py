"""Backlog files in and out: streaming readers that never give up on a bad row, and crash-safe writers.

Readers turn JSONL, CSV or Parquet into ``Row`` objects one record at a time (Parquet one record
batch at a time), so memory does not grow with the file. A record that cannot become a message
(no id, invalid JSON, invalid UTF-8, a CSV line with the wrong number of fields) is still yielded,
with the reason, so that the caller can put it in the rejects file with its line number instead of
stopping a run of hours on one bad ticket.

Writers append results and report a *committed position* after an fsync. The run's checkpoint
stores that position; a resumed run truncates everything written after it and carries on, so a kill
at any instant loses or duplicates nothing. JSONL and CSV are plain appends (position = byte
offset); Parquet cannot be appended to once its footer is missing, so committed batches go to part
files that are merged into the one output file when the run finishes (position = part count).

Accepted input columns (names are case-sensitive):

- ``id`` (required; numbers are turned into strings), ``text`` (required), ``subject`` (optional);
- an existing route, optional, used only for the report's table of moves:
  tier from ``previous_tier``, ``tier`` or ``route_tier``; queue from ``previous_queue``, ``queue`` or
  ``route_queue``; product from ``previous_product``, ``product`` or ``product_label``. In JSONL a
  previous v1 result's nested ``route.tier``, ``route.queue`` and ``product.label`` are read as well.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import re
import shutil
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from pipeline.errors import DataError
from pipeline.schema import Message, TriageResult

log = logging.getLogger(__name__)

InputFormat = Literal["jsonl", "csv", "parquet"]
OutputFormat = Literal["jsonl", "csv", "parquet"]
Dimension = Literal["tier", "queue", "product"]

INPUT_EXTENSIONS: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: Column names read as the existing route, in order of preference.
PREVIOUS_ROUTE_COLUMNS: dict[Dimension, tuple[str, ...]] = {
    "tier": ("previous_tier", "tier", "route_tier"),
    "queue": ("previous_queue", "queue", "route_queue"),
    "product": ("previous_product", "product", "product_label"),
}
#: Nested fields of a previous v1 result (JSONL only), read when no flat column is present.
_NESTED_ROUTE: dict[Dimension, tuple[str, str]] = {
    "tier": ("route", "tier"),
    "queue": ("route", "queue"),
    "product": ("product", "label"),
}
#: Lone surrogates: what ``surrogateescape`` makes of bytes that are not UTF-8 (or a JSON "\\udXXX" escape).
_SURROGATE = re.compile("[\ud800-\udfff]")
_CSV_FIELD_LIMIT = 1 << 26
_COPY_CHUNK = 1 << 20


@dataclass
class Row:
    """One input record: a message to route, or the reason it cannot be one.

    ``seq`` counts records from 0 (blank lines are not records); it is what a checkpoint counts.
    ``line`` is the 1-based line in JSONL/CSV (the CSV header is line 1) or row in Parquet.
    """

    seq: int
    line: int
    message: Message | None
    reject: str | None = None
    raw_id: str | None = None
    previous: dict[str, str | None] = field(default_factory=dict)


@dataclass
class RoutedRow:
    """What a routing worker sends back for one ``Row``: the v1 JSON, or the reason it was rejected.

    The route fields are copied out so that the driver can tally the report without parsing JSON.
    """

    seq: int
    line: int
    id: str | None
    result_json: str | None
    reject: str | None
    tier: str | None = None
    queue: str | None = None
    product: str | None = None
    needs_human_review: bool = False
    previous: dict[str, str | None] = field(default_factory=dict)


# ===================================================================================== formats


def detect_input_format(path: Path, explicit: InputFormat | None = None) -> InputFormat:
    """The explicit format, else the one the extension names (``.gz`` and friends are not read)."""
    if explicit is not None:
        return explicit
    found = INPUT_EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"Cannot tell the format of {path} from its extension {path.suffix!r}.",
            fix="name the file .jsonl, .csv or .parquet, or pass --input-format jsonl|csv|parquet",
        )
    return found


def detect_output_format(path: Path, explicit: OutputFormat | None = None) -> OutputFormat:
    """The explicit format, else ``.parquet``/``.csv`` from the extension, else JSONL."""
    if explicit is not None:
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    return "jsonl"


def _clean_id(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    return text or None


def _clean_label(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _route_columns(columns: Iterable[str]) -> dict[Dimension, str]:
    """Which column carries each dimension of the existing route, if any."""
    present = set(columns)
    chosen: dict[Dimension, str] = {}
    for dimension, names in PREVIOUS_ROUTE_COLUMNS.items():
        for name in names:
            if name in present:
                chosen[dimension] = name
                break
    return chosen


def _make_row(
    seq: int, line: int, raw_id: Any, text: Any, subject: Any, previous: dict[str, str | None]
) -> Row:
    """Validate the fields every format shares; a row that fails carries the reason."""
    row_id = _clean_id(raw_id)
    if row_id is None:
        return Row(seq, line, None, "missing id", None, previous)
    if text is None:
        return Row(seq, line, None, "missing text", row_id, previous)
    if not isinstance(text, str):
        return Row(seq, line, None, f"text is a {type(text).__name__}, not a string", row_id, previous)
    if any(isinstance(v, str) and _SURROGATE.search(v) for v in (row_id, text, subject)):
        return Row(seq, line, None, "text is not valid UTF-8", _SURROGATE.sub("?", row_id), previous)
    message = Message(id=row_id, text=text, subject=subject if isinstance(subject, str) and subject else None)
    return Row(seq, line, message, None, row_id, previous)


# ===================================================================================== readers


def read_rows(path: Path, fmt: InputFormat, *, skip: int = 0, parquet_batch: int = 1024) -> Iterator[Row]:
    """Stream the rows of a backlog file, skipping the first ``skip`` records (those already done)."""
    if not path.is_file():
        raise DataError(f"Backlog file {path} not found.", fix="check the INPUT path")
    if fmt == "jsonl":
        return read_jsonl_rows(path, skip=skip)
    if fmt == "csv":
        return read_csv_rows(path, skip=skip)
    return read_parquet_rows(path, skip=skip, batch_size=parquet_batch)


def read_jsonl_rows(path: Path, *, skip: int = 0) -> Iterator[Row]:
    """One ``Row`` per non-blank line: a message, or the reason the line cannot be one."""
    seq = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            seq += 1
            if seq <= skip:
                continue
            yield _jsonl_row(seq - 1, number, raw)


def _jsonl_row(seq: int, number: int, raw: bytes) -> Row:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Row(seq, number, None, "line is not valid UTF-8")
    except json.JSONDecodeError as exc:
        return Row(seq, number, None, f"line is not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return Row(seq, number, None, f"line is a JSON {type(record).__name__}, not an object")
    previous: dict[str, str | None] = {}
    columns = _route_columns(record)
    for dimension in PREVIOUS_ROUTE_COLUMNS:
        if dimension in columns and not isinstance(record[columns[dimension]], dict):
            previous[dimension] = _clean_label(record[columns[dimension]])
        else:
            outer, inner = _NESTED_ROUTE[dimension]
            nested = record.get(outer)
            if isinstance(nested, dict) and inner in nested:
                previous[dimension] = _clean_label(nested[inner])
    return _make_row(seq, number, record.get("id"), record.get("text"), record.get("subject"), previous)


def _decoded_lines(handle: io.BufferedReader) -> Iterator[str]:
    """Decode line by line, bad bytes kept as surrogates, so one bad byte rejects one record, not the file."""
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        yield raw.decode("utf-8", errors="surrogateescape")


def read_csv_rows(path: Path, *, skip: int = 0) -> Iterator[Row]:
    """One ``Row`` per CSV record (quoted fields may span lines); malformed records are rejected rows."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with path.open("rb") as handle:
        reader = csv.reader(_decoded_lines(handle), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"The header of {path} is not valid CSV ({exc}).", fix="check the file") from exc
        header = [h.strip() for h in header]
        missing = [name for name in ("id", "text") if name not in header]
        if missing:
            raise DataError(
                f"{path} has no {' or '.join(map(repr, missing))} column (columns: {', '.join(header)}).",
                fix="name the columns id and text (subject and previous_tier/queue/product are optional)",
            )
        index = {name: header.index(name) for name in header}
        route_columns = _route_columns(header)
        id_at, text_at, subject_at = index["id"], index["text"], index.get("subject")
        seq, last_line = 0, reader.line_num
        while True:
            start = last_line + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last_line = reader.line_num
                seq += 1
                if seq > skip:
                    yield Row(seq - 1, start, None, f"malformed CSV record ({exc})")
                continue
            last_line = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            seq += 1
            if seq <= skip:
                continue
            raw_id = _clean_id(record[id_at]) if len(record) > id_at else None
            if any(_SURROGATE.search(value) for value in record):
                safe_id = None if raw_id is None else _SURROGATE.sub("?", raw_id)
                yield Row(seq - 1, start, None, "line is not valid UTF-8", safe_id)
                continue
            if len(record) != len(header):
                reason = f"malformed CSV record: {len(record)} fields where the header has {len(header)}"
                yield Row(seq - 1, start, None, reason, raw_id)
                continue
            previous = {dim: _clean_label(record[index[col]]) for dim, col in route_columns.items()}
            subject = record[subject_at] if subject_at is not None else None
            yield _make_row(seq - 1, start, record[id_at], record[text_at], subject, previous)


def read_parquet_rows(path: Path, *, skip: int = 0, batch_size: int = 1024) -> Iterator[Row]:
    """Rows of a Parquet file, one record batch in memory at a time; skipped row groups are not read."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path} is not a readable Parquet file ({exc}).", fix="check the file") from exc
    names = parquet.schema_arrow.names
    missing = [name for name in ("id", "text") if name not in names]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(repr(m) for m in missing)} column (columns: {', '.join(names)}).",
            fix="name the columns id and text (subject and previous_tier/queue/product are optional)",
        )
    route_columns = _route_columns(names)
    wanted = ["id", "text", *(["subject"] if "subject" in names else []), *route_columns.values()]
    groups, first_seq = [], 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first_seq + rows <= skip and not groups:
            first_seq += rows
            continue
        groups.append(group)
    seq = first_seq
    if not groups:
        return
    for batch in parquet.iter_batches(batch_size=batch_size, row_groups=groups, columns=wanted):
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        for i in range(batch.num_rows):
            seq += 1
            if seq <= skip:
                continue
            text = columns["text"][i]
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    yield Row(seq - 1, seq, None, "text is not valid UTF-8", _clean_id(columns["id"][i]))
                    continue
            previous = {dim: _clean_label(columns[col][i]) for dim, col in route_columns.items()}
            subject = columns["subject"][i] if "subject" in columns else None
            yield _make_row(seq - 1, seq, columns["id"][i], text, subject, previous)


def count_records(path: Path, fmt: InputFormat) -> int:
    """A cheap up-front count for the progress bar (an estimate for JSONL/CSV, exact for Parquet)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "jsonl":
        lines, last = 0, b"\n"
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(_COPY_CHUNK), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        return lines + (last != b"\n")
    records, quotes = 0, 0  # a record ends at a newline outside quotes: an even quote count so far
    with path.open("rb") as handle:
        for raw in handle:
            quotes += raw.count(b'"')
            if quotes % 2 == 0 and raw.strip():
                records += 1
    return max(records - 1, 0)


def file_fingerprint(path: Path) -> str:
    """Size plus a hash of the first MiB: enough to notice a different or rewritten input on resume."""
    import hashlib

    with path.open("rb") as handle:
        head = handle.read(_COPY_CHUNK)
    return f"{path.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


# ===================================================================================== writers


class CommittedWriter(Protocol):
    """An output that is appended to in batches and made durable by ``commit``."""

    def write(self, rows: list[RoutedRow]) -> None: ...

    def commit(self) -> int: ...

    def finish(self) -> None: ...

    def cleanup(self) -> None: ...

    def close(self) -> None: ...


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AppendFile:
    """A byte file appended to and fsynced; ``position`` is the committed size, restored by truncation."""

    def __init__(self, path: Path, position: int | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if position is None:
            self.handle = path.open("wb")
        else:
            if not path.exists():
                if position:
                    raise DataError(
                        f"{path} is missing, but the checkpoint says {position} bytes of it were committed.",
                        fix="run again without --resume to start over",
                    )
                path.touch()
            self.handle = path.open("r+b")
            if path.stat().st_size < position:
                raise DataError(
                    f"{path} is shorter ({path.stat().st_size} bytes) than its committed size ({position}).",
                    fix="the file was changed after the crash; run again without --resume to start over",
                )
            self.handle.truncate(position)
            self.handle.seek(position)
        self.position = self.handle.tell()

    def append(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> int:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.position = self.handle.tell()
        return self.position

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()


class JsonlWriter:
    """One v1 result per line (the default output)."""

    def __init__(self, path: Path, position: int | None) -> None:
        self.file = AppendFile(path, position)

    def write(self, rows: list[RoutedRow]) -> None:
        data = "".join(r.result_json + "\n" for r in rows if r.result_json is not None)
        self.file.append(data.encode("utf-8"))

    def commit(self) -> int:
        return self.file.commit()

    def finish(self) -> None:
        self.file.commit()

    def cleanup(self) -> None:
        """Nothing to remove: the output was the file appended to."""

    def close(self) -> None:
        self.file.close()


#: CSV and Parquet columns: the top-level fields of the v1 result, in contract order.
RESULT_COLUMNS = tuple(TriageResult.model_fields)


class CsvWriter:
    """The v1 fields as columns; nested ones (asks, product, route…) as JSON strings. Written by pyarrow."""

    def __init__(self, path: Path, position: int | None) -> None:
        self.file = AppendFile(path, position)
        self.header_written = self.file.position > 0

    def write(self, rows: list[RoutedRow]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        records = [json.loads(r.result_json) for r in rows if r.result_json is not None]
        if not records and self.header_written:
            return
        columns = {
            name: [
                None
                if rec.get(name) is None
                else json.dumps(rec[name], ensure_ascii=False)
                if isinstance(rec[name], (dict, list))
                else str(rec[name])
                for rec in records
            ]
            for name in RESULT_COLUMNS
        }
        table = pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=not self.header_written))
        self.file.append(buffer.getvalue())
        self.header_written = True

    def commit(self) -> int:
        return self.file.commit()

    def finish(self) -> None:
        if not self.header_written:
            self.write([])
        self.file.commit()

    def cleanup(self) -> None:
        """Nothing to remove: the output was the file appended to."""

    def close(self) -> None:
        self.file.close()


def _arrow_type(annotation: Any) -> Any:
    """Arrow type of a pydantic field annotation, so Parquet columns follow ``schema.py`` by themselves."""
    import pyarrow as pa

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot map {annotation} to Arrow")
        return _arrow_type(args[0])
    if origin is Literal or annotation is str:
        return pa.string()
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(annotation)[0]))
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([pa.field(n, _arrow_type(f.annotation)) for n, f in annotation.model_fields.items()])
    raise TypeError(f"cannot map {annotation} to Arrow")


def result_schema() -> Any:
    """The Arrow schema of a v1 result (nested fields as structs and lists)."""
    import pyarrow as pa

    return pa.schema([pa.field(n, _arrow_type(f.annotation)) for n, f in TriageResult.model_fields.items()])


class ParquetWriter:
    """Committed batches become part files in ``OUTPUT.parts/``; ``finish`` merges them into OUTPUT.

    The parts are removed by ``cleanup`` only after the checkpoint records the run as complete, so a
    crash during or just after the merge is resumed by merging again.

    A Parquet file is unreadable until its footer is written, so it cannot be appended to across a
    crash; parts written after the last checkpoint are deleted on resume.
    """

    def __init__(self, path: Path, position: int | None) -> None:
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self.schema = result_schema()
        self.pending: list[dict[str, Any]] = []
        if position is None:
            shutil.rmtree(self.parts, ignore_errors=True)
            position = 0
        self.parts.mkdir(parents=True, exist_ok=True)
        missing = [n for n in range(position) if not self._part(n).exists()]
        if missing:
            raise DataError(
                f"{len(missing)} committed part(s) of {path} are missing from {self.parts}.",
                fix="run again without --resume to start over",
            )
        for part in self.parts.glob("part-*.parquet"):
            if int(part.stem.removeprefix("part-")) >= position:
                part.unlink()
        for stray in self.parts.glob("*.tmp"):
            stray.unlink()
        self.count = position

    def _part(self, number: int) -> Path:
        return self.parts / f"part-{number:06d}.parquet"

    def write(self, rows: list[RoutedRow]) -> None:
        self.pending.extend(json.loads(r.result_json) for r in rows if r.result_json is not None)

    def commit(self) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.pending:
            table = pa.Table.from_pylist(self.pending, schema=self.schema)
            temp = self._part(self.count).with_suffix(".tmp")
            with temp.open("wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            temp.replace(self._part(self.count))
            fsync_dir(self.parts)
            self.count += 1
            self.pending = []
        return self.count

    def finish(self) -> None:
        import pyarrow.parquet as pq

        self.commit()
        temp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(temp, self.schema) as writer:
            for number in range(self.count):
                writer.write_table(pq.read_table(self._part(number), schema=self.schema))
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
        temp.replace(self.path)
        fsync_dir(self.path.parent)

    def cleanup(self) -> None:
        """Remove the parts, once the checkpoint says the merged file is final (not before)."""
        shutil.rmtree(self.parts, ignore_errors=True)

    def close(self) -> None:
        self.pending = []


def open_writer(path: Path, fmt: OutputFormat, position: int | None) -> CommittedWriter:
    """A writer for ``fmt``; ``position`` None starts afresh, an int resumes from that commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        return JsonlWriter(path, position)
    if fmt == "csv":
        return CsvWriter(path, position)
    return ParquetWriter(path, position)


class RejectsWriter:
    """The rejects file: one JSON object per bad row with its line number, id (if any) and reason."""

    def __init__(self, path: Path, position: int | None) -> None:
        self.file = AppendFile(path, position)

    def write(self, rows: list[RoutedRow]) -> None:
        data = "".join(
            json.dumps({"line": r.line, "id": r.id, "reason": r.reject}, ensure_ascii=False) + "\n"
            for r in rows
            if r.reject is not None
        )
        if data:
            self.file.append(data.encode("utf-8"))

    def commit(self) -> int:
        return self.file.commit()

    def close(self) -> None:
        self.file.close()
