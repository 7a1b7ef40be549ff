"""The hand-labelled routing set loads against the real shared data and keeps its promises.

These tests read the real data sets (``$HEARKEN_DATA_DIR`` or ``../shared/datasets``) because
the CFPB rows are meaningless without their texts; a missing data directory is an error, not
a skip. Corrupted copies are written to ``tmp_path`` and loaded through ``goldset_dir``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.corpora import PRODUCT_LABELS
from pipeline.datadir import resolve_data_dir
from pipeline.errors import DataError
from pipeline.routing_goldset import (
    ESCALATING_SIGNALS,
    REPORTED_SIGNALS,
    ROUTING_GOLDSET_DIR,
    ROUTING_SIGNALS,
    TIERS,
    RoutingGoldMessage,
    load_routing_goldset,
)

ROOT = Path(__file__).resolve().parent.parent


def stored_rows(split: str) -> list[dict]:
    """The label rows of ``data/routing/<split>.jsonl`` as stored (public rows without their text)."""
    path = ROUTING_GOLDSET_DIR / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def spelling_blind_digest(text: str) -> str:
    """A hash that ignores case and spacing: a copied message respelled still collides."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def check_spans_and_tier(m: RoutingGoldMessage) -> None:
    """Every span a non-empty trimmed piece, each signal once, tier3 exactly with an escalating signal."""
    for start, end in [(s.start, s.end) for s in m.signals] + list(m.asks):
        piece = m.text[start:end]
        assert piece and piece == piece.strip(), (m.id, start, end)
    names = [s.name for s in m.signals]
    assert len(names) == len(set(names)), m.id
    assert (m.tier == "tier3") == any(n in ESCALATING_SIGNALS for n in names), m.id


@pytest.fixture(scope="module")
def splits() -> dict[str, list[RoutingGoldMessage]]:
    return {split: load_routing_goldset(split) for split in ("dev", "test")}


@pytest.fixture(scope="module")
def messages(splits: dict[str, list[RoutingGoldMessage]]) -> list[RoutingGoldMessage]:
    return splits["dev"] + splits["test"]


def test_at_least_220_messages_split_about_40_60(splits: dict[str, list[RoutingGoldMessage]]) -> None:
    dev, test = len(splits["dev"]), len(splits["test"])
    assert dev + test >= 220
    assert 0.35 <= dev / (dev + test) <= 0.45


def test_composition_has_about_80_cfpb_rows_and_the_briefed_tier_mix(
    messages: list[RoutingGoldMessage],
) -> None:
    sources = Counter(m.source for m in messages)
    assert 70 <= sources["cfpb_complaints"] <= 90
    assert sources["team"] >= 140
    share = {tier: n / len(messages) for tier, n in Counter(m.tier for m in messages).items()}
    assert 0.35 <= share["tier3"] <= 0.45
    assert 0.25 <= share["tier2"] <= 0.31
    assert 0.15 <= share["tier1"] <= 0.21
    assert 0.05 <= share["none"] <= 0.08


def test_splits_share_no_id_row_or_text(splits: dict[str, list[RoutingGoldMessage]]) -> None:
    for key in (
        lambda m: m.id,
        lambda m: m.text,
        lambda m: (m.source, m.row_id) if m.row_id else m.id,
    ):
        dev = {key(m) for m in splits["dev"]}
        test = {key(m) for m in splits["test"]}
        assert not dev & test
        assert len(dev) == len(splits["dev"]) and len(test) == len(splits["test"])


def test_every_span_is_a_non_empty_trimmed_piece_of_its_text(messages: list[RoutingGoldMessage]) -> None:
    for m in messages:
        spans = [(s.start, s.end) for s in m.signals] + list(m.asks)
        for start, end in spans:
            piece = m.text[start:end]
            assert 0 <= start < end <= len(m.text), m.id
            assert piece and piece == piece.strip(), (m.id, start, end)
        assert m.asks == sorted(m.asks), m.id


def test_labels_are_valid_and_tier3_exactly_when_an_escalating_signal_is_labelled(
    messages: list[RoutingGoldMessage],
) -> None:
    for m in messages:
        assert m.tier in TIERS and m.product in (None, *PRODUCT_LABELS), m.id
        assert re.fullmatch(r"[a-z]{2}", m.language), m.id
        names = [s.name for s in m.signals]
        assert set(names) <= set(ROUTING_SIGNALS), m.id
        assert len(names) == len(set(names)), f"{m.id}: one evidence per signal name"
        assert (m.tier == "tier3") == any(n in ESCALATING_SIGNALS for n in names), m.id
        assert (m.source == "team") == (m.row_id is None), m.id


def test_signal_names_match_the_routing_policy_table() -> None:
    """ROUTING_SIGNALS is a copy of ROUTING_POLICY §4; a renamed signal there must fail here."""
    policy = (resolve_data_dir().parent / "ROUTING_POLICY.md").read_text(encoding="utf-8")
    section = policy.split("## 4. Signals", 1)[1].split("## 5.", 1)[0]
    escalating_part, reported_part = section.split("Reported but not escalating", 1)
    assert re.findall(r"^\| `(\w+)` \|", escalating_part, flags=re.MULTILINE) == list(ESCALATING_SIGNALS)
    assert re.findall(r"`(\w+)`", reported_part) == list(REPORTED_SIGNALS)


def test_coverage_of_signals_languages_and_quoted_history(messages: list[RoutingGoldMessage]) -> None:
    positives = Counter(name for m in messages for name in {s.name for s in m.signals})
    for name in ESCALATING_SIGNALS:
        assert positives[name] >= 8, name
    for name in REPORTED_SIGNALS:
        assert positives[name] >= 5, name
    non_english = [m for m in messages if m.language != "en"]
    assert len(non_english) >= 8
    assert len({m.language for m in non_english}) >= 4
    assert {m.tier for m in non_english} == set(TIERS)
    assert any(s.in_quoted_history for m in messages for s in m.signals)
    assert sum(m.tier != "tier3" and m.kind != "cfpb_real" for m in messages) >= 60  # hard negatives etc.


def test_public_texts_are_not_copied_into_labels_or_scripts(messages: list[RoutingGoldMessage]) -> None:
    owned = [ROUTING_GOLDSET_DIR / name for name in ("dev.jsonl", "test.jsonl", "second_pass.jsonl")]
    owned += [ROUTING_GOLDSET_DIR / "GUIDELINES.md", ROOT / "scripts" / "build_routing_set.py"]
    corpus = "\n".join(path.read_text(encoding="utf-8") for path in owned)
    for m in messages:
        if m.source != "cfpb_complaints":
            continue
        # Any 40-character window of the narrative (step 20), skipping redaction-only runs.
        windows = (m.text[i : i + 40] for i in range(0, max(1, len(m.text) - 40), 20))
        leaked = [w for w in windows if re.sub(r"[X\s/{}$.,0-9]", "", w) and w in corpus]
        assert not leaked, (m.id, leaked[:1])


def test_second_pass_covers_60_labelled_messages_with_valid_labels(
    messages: list[RoutingGoldMessage],
) -> None:
    by_id = {m.id: m for m in messages}
    rows = [json.loads(line) for line in (ROUTING_GOLDSET_DIR / "second_pass.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    for row in rows:
        assert set(row) == {"id", "tier", "signals", "product"}
        assert row["id"] in by_id
        assert row["tier"] in TIERS and set(row["signals"]) <= set(ROUTING_SIGNALS)
        assert row["product"] in (None, *PRODUCT_LABELS)
    agreement = sum(by_id[r["id"]].tier == r["tier"] for r in rows) / len(rows)
    assert agreement >= 0.9  # GUIDELINES.md §8 reports 1.000; a large drop means the labels drifted


def _corrupt(tmp_path: Path, change: Callable[[dict], None], source: str = "team") -> tuple[Path, str]:
    """Copy dev.jsonl with its first tier3 ``source`` row changed; return the folder and "file:line"."""
    lines = (ROUTING_GOLDSET_DIR / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    index = next(i for i, r in enumerate(rows) if r["source"] == source and r["tier"] == "tier3")
    change(rows[index])
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return tmp_path, f"dev.jsonl:{index + 1}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["signals"][0].update(name="rude_agent"), "signal 'rude_agent' is not one of"),
        (lambda r: r.update(tier="tier4"), "tier 'tier4' is not one of"),
        (lambda r: r.update(product="crypto"), "product 'crypto' is not null or one of"),
        (lambda r: r.update(language="english"), "two-letter"),
        (lambda r: r["signals"][0].update(end=10**6), "span"),
        (lambda r: r.update(tier="tier1"), "contradicts the signals"),
        (lambda r: r.update(text=r["text"] + " edited"), "no longer hashes"),
        (lambda r: r.pop("kind"), "expected exactly the fields"),
        (lambda r: r.update(row_id="123"), "team row carries its text"),
    ],
)
def test_a_corrupted_team_row_is_refused_naming_file_and_line(
    tmp_path: Path, change: Callable[[dict], None], message: str
) -> None:
    folder, where = _corrupt(tmp_path, change)
    with pytest.raises(DataError, match=re.escape(where)) as error:
        load_routing_goldset("dev", goldset_dir=folder)
    assert message in str(error.value)
    assert error.value.fix


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(text_sha256="0" * 64), "no longer hashes"),
        (lambda r: r.update(row_id="999999999999"), "is not in the data file"),
        (lambda r: r.update(text="copied public text"), "never copy public texts"),
    ],
)
def test_a_corrupted_public_row_is_refused(
    tmp_path: Path, change: Callable[[dict], None], message: str
) -> None:
    folder, where = _corrupt(tmp_path, change, source="cfpb_complaints")
    with pytest.raises(DataError, match=re.escape(where)) as error:
        load_routing_goldset("dev", goldset_dir=folder)
    assert message in str(error.value)


def test_a_missing_file_and_an_unknown_split_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        load_routing_goldset("test", goldset_dir=tmp_path)
    with pytest.raises(ValueError):
        load_routing_goldset("train")  # type: ignore[arg-type]


# --- dev2: the second, team-written development set -------------------------------------------


@pytest.fixture(scope="module")
def dev2() -> list[RoutingGoldMessage]:
    return load_routing_goldset("dev2")


def test_dev2_has_160_team_messages_with_sequential_ids_and_six_other_languages(
    dev2: list[RoutingGoldMessage],
) -> None:
    assert [m.id for m in dev2] == [f"d2-{n:04d}" for n in range(1, 161)]
    assert all(m.source == "team" and m.row_id is None for m in dev2)
    non_english = [m for m in dev2 if m.language != "en"]
    assert sorted(m.language for m in non_english) == ["de", "es", "fr", "it", "nl", "pt"]
    assert all(m.signals for m in non_english)
    tiers = Counter(m.tier for m in dev2)
    assert set(tiers) == set(TIERS)
    assert sum(not m.signals for m in dev2) >= 25  # plain messages and hard negatives


def test_dev2_spans_round_trip_to_the_stored_rows(dev2: list[RoutingGoldMessage]) -> None:
    rows = stored_rows("dev2")
    assert len(rows) == len(dev2)
    for row, m in zip(rows, dev2, strict=True):
        assert hashlib.sha256(m.text.encode("utf-8")).hexdigest() == row["text_sha256"], m.id
        assert [[s.start, s.end] for s in m.signals] == [[s["start"], s["end"]] for s in row["signals"]], m.id
        assert [list(a) for a in m.asks] == row["asks"], m.id
        check_spans_and_tier(m)


def test_dev2_has_at_least_ten_positives_per_signal_and_quoted_history(
    dev2: list[RoutingGoldMessage],
) -> None:
    positives = Counter(name for m in dev2 for name in {s.name for s in m.signals})
    too_few = {name: positives[name] for name in ROUTING_SIGNALS if positives[name] < 10}
    assert not too_few, too_few
    assert sum(any(s.in_quoted_history for s in m.signals) for m in dev2) >= 3


def test_dev2_shares_no_text_with_dev_or_test(dev2: list[RoutingGoldMessage]) -> None:
    """Compared by hash only, so running this never shows a test text."""

    tuned_on = {
        spelling_blind_digest(m.text) for split in ("dev", "test") for m in load_routing_goldset(split)
    }
    assert not {spelling_blind_digest(m.text) for m in dev2} & tuned_on
    assert len({m.text for m in dev2}) == len(dev2)


@pytest.mark.parametrize("respell", [lambda t: t, lambda t: "  " + t.upper().replace(" ", "\n ") + " "])
def test_a_dev2_row_copied_from_dev_is_refused(tmp_path: Path, respell: Callable[[str], str]) -> None:
    for name in ("dev.jsonl", "test.jsonl"):
        shutil.copyfile(ROUTING_GOLDSET_DIR / name, tmp_path / name)
    copied = next(r["text"] for r in stored_rows("dev") if r["source"] == "team")
    rows = stored_rows("dev2")
    text = respell(copied)
    rows[4].update(
        text=text,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        signals=[],
        asks=[],
        tier="none",
    )
    (tmp_path / "dev2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("dev2.jsonl:5")) as error:
        load_routing_goldset("dev2", goldset_dir=tmp_path)
    assert "also in dev.jsonl" in str(error.value)
    assert error.value.fix


# --- dev3: team-written and CFPB rows, written before the round-3 lexicon changes ----------------


@pytest.fixture(scope="module")
def dev3() -> list[RoutingGoldMessage]:
    return load_routing_goldset("dev3")


def test_dev3_mixes_team_and_public_rows_with_sequential_ids(dev3: list[RoutingGoldMessage]) -> None:
    assert [m.id for m in dev3] == [f"d3-{n:04d}" for n in range(1, len(dev3) + 1)]
    assert len(dev3) >= 150
    sources = Counter(m.source for m in dev3)
    assert sources["team"] >= 100 and sources["cfpb_complaints"] >= 50
    assert all(m.kind == "cfpb_real" for m in dev3 if m.source == "cfpb_complaints")
    assert set(Counter(m.tier for m in dev3)) == set(TIERS)
    assert sum(not m.signals for m in dev3) >= 25  # plain messages and hard negatives
    # The last 45 rows are the check rows (never tuned on); they mix both sources.
    check = dev3[-45:]
    assert {m.source for m in check} == {"team", "cfpb_complaints"}


def test_dev3_stores_no_public_text(dev3: list[RoutingGoldMessage]) -> None:
    rows = stored_rows("dev3")
    assert len(rows) == len(dev3)
    for row, m in zip(rows, dev3, strict=True):
        assert (row["text"] is None) == (row["source"] == "cfpb_complaints"), m.id
        assert hashlib.sha256(m.text.encode("utf-8")).hexdigest() == row["text_sha256"], m.id
        check_spans_and_tier(m)


def test_dev3_covers_every_signal_and_quoted_history(dev3: list[RoutingGoldMessage]) -> None:
    positives = Counter(name for m in dev3 for name in {s.name for s in m.signals})
    too_few = {name: positives[name] for name in ROUTING_SIGNALS if positives[name] < 5}
    assert not too_few, too_few
    assert sum(any(s.in_quoted_history for s in m.signals) for m in dev3) >= 2
    assert sum(m.language != "en" for m in dev3) >= 3


def test_dev3_shares_no_text_with_dev_dev2_or_test(dev3: list[RoutingGoldMessage]) -> None:
    """Compared by hash only, so running this never shows a test text."""

    others = {
        spelling_blind_digest(m.text)
        for split in ("dev", "dev2", "test")
        for m in load_routing_goldset(split)
    }
    assert not {spelling_blind_digest(m.text) for m in dev3} & others
    assert len({m.text for m in dev3}) == len(dev3)
    public = [m.row_id for m in dev3 if m.row_id is not None]
    assert len(public) == len(set(public))


def test_a_dev3_row_copied_from_dev2_is_refused(tmp_path: Path) -> None:
    for name in ("dev.jsonl", "test.jsonl", "dev2.jsonl"):
        shutil.copyfile(ROUTING_GOLDSET_DIR / name, tmp_path / name)
    copied = stored_rows("dev2")[7]["text"]
    rows = stored_rows("dev3")
    team = next(i for i, r in enumerate(rows) if r["source"] == "team")
    text = "  " + copied.upper() + " "
    rows[team].update(
        text=text,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        signals=[],
        asks=[],
        tier="none",
    )
    (tmp_path / "dev3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"dev3.jsonl:{team + 1}")) as error:
        load_routing_goldset("dev3", goldset_dir=tmp_path)
    assert "also in dev2.jsonl" in str(error.value)


def test_a_dev3_public_row_already_in_dev_is_refused(tmp_path: Path) -> None:
    for name in ("dev.jsonl", "test.jsonl", "dev2.jsonl"):
        shutil.copyfile(ROUTING_GOLDSET_DIR / name, tmp_path / name)
    used = next(r for r in stored_rows("dev") if r["source"] == "cfpb_complaints")
    rows = stored_rows("dev3")
    public = next(i for i, r in enumerate(rows) if r["source"] == "cfpb_complaints")
    rows[public].update(
        row_id=used["row_id"], text_sha256=used["text_sha256"], signals=[], asks=[], tier="tier2"
    )
    (tmp_path / "dev3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("also in dev.jsonl")):
        load_routing_goldset("dev3", goldset_dir=tmp_path)
