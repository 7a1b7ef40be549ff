"""The team's hand-labelled routing set (``data/routing/``), joined back to the public texts it labels.

It measures the router as a whole: tier, escalation signals with their evidence spans, asks,
product and language, on messages written by the team (stored with their text) and on real
CFPB narratives (stored as row id + sha256 only, because the public texts must not be copied
into the project). Public rows are read through the same CSV reader as the ask set
(``pipeline.goldsets``), so their spans index the exact string every other evaluation sees,
and a changed or differently-read text fails loudly on the hash instead of shifting spans.

Labels are validated strictly on load: a typo in a signal name or a span off the end of a text
would otherwise change a score without anyone noticing. How the set was built and labelled:
``data/routing/GUIDELINES.md``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.corpora import PRODUCT_LABELS
from pipeline.datadir import resolve_data_dir
from pipeline.errors import DataError

# Imported (not copied) so both gold sets read CFPB texts and their JSONL files through one
# reader each and cannot drift apart.
from pipeline.goldsets import lookup_texts, read_jsonl_rows

ROUTING_GOLDSET_DIR = Path(__file__).resolve().parent.parent / "data" / "routing"
ROUTING_SPLITS: tuple[str, ...] = ("dev", "test", "dev2", "dev3")
# dev2 and dev3 are further development sets written fresh so rule tuning can be checked on
# phrasings it was not tuned on; each is only worth that if it shares no message with the splits
# it must be independent of, so the loader refuses any overlap instead of trusting the authors.
INDEPENDENT_OF: dict[str, tuple[str, ...]] = {"dev2": ("dev", "test"), "dev3": ("dev", "test", "dev2")}
TIERS: tuple[str, ...] = ("none", "tier1", "tier2", "tier3")
SOURCES: tuple[str, ...] = ("team", "cfpb_complaints")

# ROUTING_POLICY.md §4, in its order: escalating signals force tier3, the others are reported only.
ESCALATING_SIGNALS: tuple[str, ...] = (
    "repeat_failure",
    "unanswered_contact",
    "bounced_between_agents",
    "public_threat",
    "legal_threat",
    "regulator_threat",
    "manager_request",
    "charged_not_delivered",
)
REPORTED_SIGNALS: tuple[str, ...] = ("long_wait", "hardship", "vulnerable_customer")
ROUTING_SIGNALS: tuple[str, ...] = ESCALATING_SIGNALS + REPORTED_SIGNALS

_FIELDS = {
    "id",
    "source",
    "row_id",
    "text_sha256",
    "text",
    "subject",
    "tier",
    "signals",
    "asks",
    "product",
    "language",
    "kind",
    "note",
}
_SIGNAL_FIELDS = {"name", "start", "end", "in_quoted_history"}
_FIX = "restore data/routing/ from git; the format is in data/routing/GUIDELINES.md"


@dataclass(frozen=True)
class GoldSignal:
    """One labelled signal: its name and the character span of the shortest clause that shows it."""

    name: str
    start: int
    end: int
    in_quoted_history: bool


@dataclass(frozen=True)
class RoutingGoldMessage:
    """One labelled message with its text (team-written, or joined back from the public data set)."""

    id: str
    source: str
    row_id: str | None
    text: str
    subject: str | None
    tier: str
    signals: list[GoldSignal]
    asks: list[tuple[int, int]]
    product: str | None
    language: str
    kind: str
    note: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(raw: dict, where: str) -> None:
    """Refuse any row whose fields do not have the documented types, naming the field."""
    problems: list[str] = []
    if not isinstance(raw["id"], str) or not raw["id"]:
        problems.append("id must be a non-empty string")
    if raw["source"] not in SOURCES:
        problems.append(f"source must be one of {list(SOURCES)}")
    if raw["row_id"] is not None and not isinstance(raw["row_id"], str):
        problems.append("row_id must be a string or null")
    if not isinstance(raw["text_sha256"], str) or len(raw["text_sha256"]) != 64:
        problems.append("text_sha256 must be a 64-character hex string")
    if raw["text"] is not None and not isinstance(raw["text"], str):
        problems.append("text must be a string or null")
    if raw["subject"] is not None and not isinstance(raw["subject"], str):
        problems.append("subject must be a string or null")
    if raw["tier"] not in TIERS:
        problems.append(f"tier {raw['tier']!r} is not one of {list(TIERS)}")
    if raw["product"] is not None and raw["product"] not in PRODUCT_LABELS:
        problems.append(f"product {raw['product']!r} is not null or one of the 11 labels {PRODUCT_LABELS}")
    if not isinstance(raw["language"], str) or len(raw["language"]) != 2 or not raw["language"].islower():
        problems.append("language must be a two-letter lower-case ISO 639-1 code")
    if not isinstance(raw["kind"], str) or not raw["kind"]:
        problems.append("kind must be a non-empty string")
    if not isinstance(raw["note"], str):
        problems.append("note must be a string")
    signals = raw["signals"]
    if not isinstance(signals, list):
        problems.append("signals must be a list")
    else:
        for signal in signals:
            if not isinstance(signal, dict) or set(signal) != _SIGNAL_FIELDS:
                problems.append(f"each signal needs exactly the fields {sorted(_SIGNAL_FIELDS)}")
            elif signal["name"] not in ROUTING_SIGNALS:
                problems.append(f"signal {signal['name']!r} is not one of {list(ROUTING_SIGNALS)}")
            elif not (_is_int(signal["start"]) and _is_int(signal["end"])):
                problems.append("signal start and end must be integers")
            elif not isinstance(signal["in_quoted_history"], bool):
                problems.append("signal in_quoted_history must be true or false")
    asks = raw["asks"]
    if not isinstance(asks, list) or not all(
        isinstance(a, list) and len(a) == 2 and all(_is_int(x) for x in a) for a in asks
    ):
        problems.append("asks must be a list of [start, end] integer pairs")
    if raw["source"] == "team" and (raw["text"] is None or raw["row_id"] is not None):
        problems.append("a team row carries its text and has row_id null")
    if raw["source"] == "cfpb_complaints" and (raw["text"] is not None or raw["row_id"] is None):
        problems.append("a public row has text null (never copy public texts) and a row_id")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems) + ".", fix=_FIX)


def _check_spans(raw: dict, text: str, where: str) -> None:
    """Spans must lie inside the text; asks sorted and disjoint; tier consistent with the signals."""
    n = len(text)
    for signal in raw["signals"]:
        start, end = signal["start"], signal["end"]
        if not 0 <= start < end <= n:
            raise DataError(
                f"{where}: signal {signal['name']} span ({start}, {end}) is empty or outside the text "
                f"of {n} characters.",
                fix=_FIX,
            )
    previous_end = 0
    for start, end in raw["asks"]:
        if not previous_end <= start < end <= n:
            raise DataError(
                f"{where}: ask span ({start}, {end}) is empty, out of order, overlapping or outside the "
                f"text of {n} characters.",
                fix=_FIX,
            )
        previous_end = end
    escalating = any(s["name"] in ESCALATING_SIGNALS for s in raw["signals"])
    if escalating != (raw["tier"] == "tier3"):
        raise DataError(
            f"{where}: tier {raw['tier']} contradicts the signals (ROUTING_POLICY §3: tier3 if and only "
            "if an escalating signal is present).",
            fix=_FIX,
        )


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise DataError(f"Routing gold-set file {path} is missing.", fix="restore data/routing/ from git")
    rows: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for where, raw in read_jsonl_rows(path, str(path), fix=_FIX):
        if not isinstance(raw, dict) or set(raw) != _FIELDS:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise DataError(f"{where}: expected exactly the fields {sorted(_FIELDS)}, got {got}.", fix=_FIX)
        _check_types(raw, where)
        if raw["id"] in seen:
            raise DataError(f"{where}: id {raw['id']} is listed twice.", fix=_FIX)
        seen.add(raw["id"])
        rows.append((where, raw))
    return rows


def _normalised_sha256(text: str) -> str:
    """Hash of the text with case and whitespace folded, so a re-spaced or re-cased copy still collides."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def _check_independent(split: str, rows: list[tuple[str, dict]], folder: Path) -> None:
    """Refuse a row of ``split`` whose text also appears in a split it must be independent of.

    Texts are compared by hash only: the exact ``text_sha256`` of every row (team and public),
    and a case- and whitespace-folded hash of the team texts. Nothing of the other splits is
    returned or printed, so the held-out test texts stay unread by whoever runs this.
    """
    others = INDEPENDENT_OF.get(split, ())
    exact: dict[str, str] = {}
    folded: dict[str, str] = {}
    for other in others:
        for _, raw in _read_rows(folder / f"{other}.jsonl"):
            exact[raw["text_sha256"]] = other
            if raw["text"] is not None:
                folded[_normalised_sha256(raw["text"])] = other
    for where, raw in rows:
        clash = exact.get(raw["text_sha256"])
        if clash is None and raw["text"] is not None:
            clash = folded.get(_normalised_sha256(raw["text"]))
        if clash is not None:
            raise DataError(
                f"{where}: the text of {raw['id']} is also in {clash}.jsonl; {split} must share no text "
                f"with {', '.join(others)}.",
                fix=f"replace the message in {split}.jsonl with a freshly written one",
            )


def load_routing_goldset(
    split: Literal["dev", "test", "dev2", "dev3"],
    data_dir: Path | str | None = None,
    *,
    goldset_dir: Path | str | None = None,
) -> list[RoutingGoldMessage]:
    """Load one split of the routing set with every text, verified against its labels.

    ``data_dir`` is the shared data-set directory (argument, then ``$HEARKEN_DATA_DIR``, then
    ``../shared/datasets``); it is only read when the split has public rows. ``goldset_dir``
    points at another copy of the label files (tests use it for corrupted copies). ``dev2`` is
    the second, team-written development set; it is refused if any of its texts is also in
    ``dev`` or ``test``. ``dev3`` (team-written and CFPB rows) is refused if any of its texts is
    also in ``dev``, ``test`` or ``dev2`` (compared by hash, see ``INDEPENDENT_OF``). Raises
    ``DataError`` naming the file and line for a malformed row, an unknown tier, signal or
    product, a span outside its text, a tier that contradicts the signals, or a text whose
    sha256 differs from what the labeller saw.
    """
    if split not in ROUTING_SPLITS:
        raise ValueError(f"split must be one of {ROUTING_SPLITS}, not {split!r}")
    folder = Path(goldset_dir or ROUTING_GOLDSET_DIR)
    rows = _read_rows(folder / f"{split}.jsonl")
    _check_independent(split, rows, folder)
    public_ids = {raw["row_id"] for _, raw in rows if raw["source"] == "cfpb_complaints"}
    public: dict[str, str] = {}
    if public_ids:
        public = lookup_texts("cfpb_complaints", public_ids, resolve_data_dir(data_dir))
    messages: list[RoutingGoldMessage] = []
    for where, raw in rows:
        if raw["source"] == "team":
            text = raw["text"]
        else:
            found = public.get(raw["row_id"])
            if found is None:
                raise DataError(
                    f"{where}: CFPB row {raw['row_id']} is not in the data file.",
                    fix="point HEARKEN_DATA_DIR (or data_dir) at the shared data sets that were labelled",
                )
            text = found
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != raw["text_sha256"]:
            raise DataError(
                f"{where}: the text of {raw['id']} no longer hashes to the labelled text_sha256.",
                fix="the shared data set changed or is read differently (or the team text was edited); "
                "restore it, or re-label the row and rebuild with scripts/build_routing_set.py",
            )
        _check_spans(raw, text, where)
        messages.append(
            RoutingGoldMessage(
                id=raw["id"],
                source=raw["source"],
                row_id=raw["row_id"],
                text=text,
                subject=raw["subject"],
                tier=raw["tier"],
                signals=[
                    GoldSignal(s["name"], s["start"], s["end"], s["in_quoted_history"])
                    for s in raw["signals"]
                ],
                asks=[(a[0], a[1]) for a in raw["asks"]],
                product=raw["product"],
                language=raw["language"],
                kind=raw["kind"],
                note=raw["note"],
            )
        )
    return messages
