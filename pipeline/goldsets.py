"""The team's hand-labelled ask set (``data/asks/``), joined back to the public texts it labels.

The JSONL files hold labels only (data set, row id, sha256 of the text, character spans of the
asks); the texts stay in the shared data directory, because their licences do not let us copy
them into the project and because a copy could drift from the source without anyone noticing.
The loader therefore reads each source file once, looks the labelled rows up by id and checks
that every text still hashes to what the labeller saw. Spans are offsets into the exact string
the reader below returns (CSV opened with ``newline=""`` so embedded ``\\r\\n`` survive); any
other way of reading the files would shift them, which the hash check turns into a loud error
instead of silently wrong scores. How the set was sampled and labelled: ``data/asks/GUIDELINES.md``.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.datadir import resolve_data_dir
from pipeline.errors import DataError

GOLDSET_DIR = Path(__file__).resolve().parent.parent / "data" / "asks"
SPLITS: tuple[str, ...] = ("dev", "test")
MIN_OVERLAP = 0.5

_FIELDS = {"dataset", "row_id", "text_sha256", "n_chars", "asks", "has_quoted_history", "note"}


@dataclass(frozen=True)
class AskGoldMessage:
    """One labelled message: the source text and the character spans (start, end) of its asks.

    ``asks`` is empty for a message with no ask (an alert, a thank-you, pure narrative); those
    messages are in the set on purpose, to measure false alarms.
    """

    dataset: str
    row_id: str
    text: str
    asks: list[tuple[int, int]]
    has_quoted_history: bool
    note: str


def _csv_rows(handle: io.TextIOBase) -> Iterator[dict[str, str]]:
    """DictReader with a field limit large enough for the longest narratives (21,928 chars)."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, 1 << 30))
    try:
        yield from csv.DictReader(handle)
    finally:
        csv.field_size_limit(previous)


def _read_cfpb(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        for row in _csv_rows(handle):
            yield row["Complaint ID"], row["Consumer complaint narrative"]


def _read_itsm(path: Path) -> Iterator[tuple[str, str]]:
    # The file starts with a BOM; the row id is the 0-based index among the data rows.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for index, row in enumerate(_csv_rows(handle)):
            yield str(index), row["Description"]


def _read_twacs(path: Path) -> Iterator[tuple[str, str]]:
    with bz2.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        for row in _csv_rows(handle):
            yield row["first_tweet_id"], row["first_utterance"]


# data set -> (file inside the data directory, reader yielding (row id, text))
SOURCES: dict[str, tuple[str, Callable[[Path], Iterator[tuple[str, str]]]]] = {
    "cfpb_complaints": ("cfpb_complaints/cfpb_narratives_combined.csv", _read_cfpb),
    "itsm_ticket_assignment": ("itsm_ticket_assignment/input_data.csv", _read_itsm),
    "twacs_airline_support": ("twacs_airline_support/airlines_raw.csv.bz2", _read_twacs),
}


@dataclass(frozen=True)
class _Label:
    dataset: str
    row_id: str
    text_sha256: str
    n_chars: int
    asks: list[tuple[int, int]]
    has_quoted_history: bool
    note: str


def _parse_label(raw: object, where: str) -> _Label:
    """Validate one JSONL row strictly: a typo in the gold set must not quietly change a score."""
    if not isinstance(raw, dict) or set(raw) != _FIELDS:
        raise DataError(
            f"{where}: expected an object with exactly the fields {sorted(_FIELDS)}.",
            fix="restore the file from git; see data/asks/GUIDELINES.md for the format",
        )
    asks = raw["asks"]
    ok = (
        raw["dataset"] in SOURCES
        and isinstance(raw["row_id"], str)
        and isinstance(raw["text_sha256"], str)
        and isinstance(raw["n_chars"], int)
        and isinstance(raw["has_quoted_history"], bool)
        and isinstance(raw["note"], str)
        and isinstance(asks, list)
        and all(
            isinstance(a, dict)
            and set(a) == {"start", "end"}
            and all(isinstance(a[k], int) and not isinstance(a[k], bool) for k in ("start", "end"))
            for a in asks
        )
    )
    if not ok:
        raise DataError(
            f"{where}: a field has the wrong type or the data set is unknown (known: {sorted(SOURCES)}).",
            fix="restore the file from git; see data/asks/GUIDELINES.md for the format",
        )
    return _Label(
        dataset=raw["dataset"],
        row_id=raw["row_id"],
        text_sha256=raw["text_sha256"],
        n_chars=raw["n_chars"],
        asks=[(a["start"], a["end"]) for a in asks],
        has_quoted_history=raw["has_quoted_history"],
        note=raw["note"],
    )


def read_jsonl_rows(path: Path, location: str, fix: str) -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a hand-labelled JSONL file, parsed, with where it stands (``location:line``).

    Shared by the ask and the routing gold sets so that a broken line is reported the same way in
    both; checking the parsed row is the caller's job, since the format is the caller's.
    """
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{location}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg}).", fix=fix) from exc
        yield where, raw


def _read_labels(path: Path) -> list[_Label]:
    if not path.is_file():
        raise DataError(f"Gold-set file {path} is missing.", fix="restore data/asks/ from git")
    labels: list[_Label] = []
    seen: set[tuple[str, str]] = set()
    for where, raw in read_jsonl_rows(path, path.name, fix="restore the file from git"):
        label = _parse_label(raw, where)
        key = (label.dataset, label.row_id)
        if key in seen:
            raise DataError(
                f"{where}: {key[0]} row {key[1]} is listed twice.", fix="restore the file from git"
            )
        seen.add(key)
        labels.append(label)
    return labels


def lookup_texts(dataset: str, row_ids: set[str], data_dir: Path) -> dict[str, str]:
    """Read one source file once and keep only the labelled rows (first occurrence of an id wins).

    Public because every hand-labelled set (asks, routing) and the script that builds the routing
    set join their labels to the public texts through here, reading the files exactly one way so
    that character spans stay valid. TwACS repeats some tweet ids with identical texts; first-wins
    is safe because callers check each text's sha256, which catches a duplicate whose text differs.
    """
    relative, reader = SOURCES[dataset]
    path = data_dir / relative
    if not path.is_file():
        raise DataError(
            f"Data file {path} is missing.",
            fix="check that the data directory is the complete shared/datasets",
        )
    found: dict[str, str] = {}
    try:
        for row_id, text in reader(path):
            if row_id in row_ids and row_id not in found:
                found[row_id] = text
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise DataError(
            f"Could not read {path} ({type(exc).__name__}: {exc}).",
            fix="the data file is damaged or not the expected version; restore the shared data set",
        ) from exc
    return found


def load_ask_goldset(
    split: Literal["dev", "test"],
    data_dir: Path | str | None = None,
    *,
    goldset_dir: Path | str | None = None,
) -> list[AskGoldMessage]:
    """Load one split of the hand-labelled ask set with its texts, verified against the labels.

    ``data_dir`` is the shared data-set directory (resolved like every other reader:
    argument, then ``$HEARKEN_DATA_DIR``, then ``../shared/datasets``). ``goldset_dir`` exists
    for tests that need a modified copy of the label files. Raises ``DataError`` naming the
    row when a labelled row is missing, its text no longer hashes to the recorded sha256, or a
    span does not fit inside the text; scoring against shifted spans would be silently wrong.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    root = resolve_data_dir(data_dir)
    labels = _read_labels(Path(goldset_dir or GOLDSET_DIR) / f"{split}.jsonl")
    texts: dict[str, dict[str, str]] = {}
    for dataset in SOURCES:
        wanted = {label.row_id for label in labels if label.dataset == dataset}
        if wanted:
            texts[dataset] = lookup_texts(dataset, wanted, root)
    messages = []
    for label in labels:
        name = f"{split}: {label.dataset} row {label.row_id}"
        text = texts[label.dataset].get(label.row_id)
        if text is None:
            raise DataError(
                f"{name} is not in the data file.",
                fix="the shared data set differs from the one that was labelled",
            )
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest != label.text_sha256 or len(text) != label.n_chars:
            raise DataError(
                f"{name}: the text no longer matches the labelled text (sha256 or length differs).",
                fix="the shared data set changed or is read differently; the spans would be wrong",
            )
        previous_end = 0
        for start, end in label.asks:
            if not (previous_end <= start < end <= len(text)):
                raise DataError(
                    f"{name}: ask span ({start}, {end}) is empty, out of order, overlapping or outside "
                    f"the text of {len(text)} characters.",
                    fix="restore data/asks/ from git",
                )
            previous_end = end
        messages.append(
            AskGoldMessage(
                dataset=label.dataset,
                row_id=label.row_id,
                text=text,
                asks=list(label.asks),
                has_quoted_history=label.has_quoted_history,
                note=label.note,
            )
        )
    return messages


def ask_hit(pred: tuple[int, int], gold: list[tuple[int, int]]) -> bool:
    """True when ``pred`` overlaps some gold span by at least half of the shorter of the two.

    Why not exact match: gold spans are whole sentences, or clauses where the customer wrote a
    run-on without punctuation, and a sentence segmenter will cut the same text differently
    (a run-on kept whole, a list item split off, a trailing fragment attached). Measuring the
    overlap against the *shorter* span accepts a predicted sentence that contains the gold
    clause (or lies inside a long gold sentence), while a prediction that merely touches a
    gold span at its edge does not count. This is a per-pair test; how predictions are matched
    to gold spans (one-to-one or not) is the caller's decision.
    """
    p_start, p_end = pred
    p_len = p_end - p_start
    if p_len <= 0:
        return False
    for g_start, g_end in gold:
        g_len = g_end - g_start
        overlap = min(p_end, g_end) - max(p_start, g_start)
        if g_len > 0 and overlap > 0 and overlap >= MIN_OVERLAP * min(p_len, g_len):
            return True
    return False
