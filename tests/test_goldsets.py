"""The hand-labelled ask set loads against the real shared data and keeps its promises.

These tests read the real data sets (``$HEARKEN_DATA_DIR`` or ``../shared/datasets``); a missing
data directory is an error, not a skip, because the gold set is meaningless without its texts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import DataError
from pipeline.goldsets import GOLDSET_DIR, SOURCES, AskGoldMessage, ask_hit, load_ask_goldset

DATASETS = set(SOURCES)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[AskGoldMessage]]:
    return {split: load_ask_goldset(split) for split in ("dev", "test")}


def test_both_splits_load_with_at_least_320_messages(splits: dict[str, list[AskGoldMessage]]) -> None:
    assert splits["dev"] and splits["test"]
    assert len(splits["dev"]) + len(splits["test"]) >= 320


def test_no_row_is_listed_twice_or_in_both_splits(splits: dict[str, list[AskGoldMessage]]) -> None:
    keys = [(m.dataset, m.row_id) for split in splits.values() for m in split]
    duplicated = [key for key, n in Counter(keys).items() if n > 1]
    assert duplicated == []


def test_no_text_appears_twice(splits: dict[str, list[AskGoldMessage]]) -> None:
    # CFPB repeats narratives under different complaint ids; a repeat across splits would leak.
    texts = [m.text for split in splits.values() for m in split]
    assert len(set(texts)) == len(texts)


def test_every_span_is_non_empty_trimmed_and_inside_its_text(splits: dict[str, list[AskGoldMessage]]) -> None:
    for message in (m for split in splits.values() for m in split):
        for start, end in message.asks:
            assert 0 <= start < end <= len(message.text), (message.dataset, message.row_id)
            span = message.text[start:end]
            assert span.strip() == span, (message.dataset, message.row_id, start, end)


def test_each_source_data_set_is_in_both_splits(splits: dict[str, list[AskGoldMessage]]) -> None:
    for name, split in splits.items():
        assert {m.dataset for m in split} == DATASETS, name


def test_split_is_about_40_60_within_each_data_set(splits: dict[str, list[AskGoldMessage]]) -> None:
    dev = Counter(m.dataset for m in splits["dev"])
    test = Counter(m.dataset for m in splits["test"])
    for dataset in DATASETS:
        assert 0.35 <= dev[dataset] / (dev[dataset] + test[dataset]) <= 0.45, dataset


def test_at_least_40_messages_have_no_ask_and_most_splits_have_asks(
    splits: dict[str, list[AskGoldMessage]],
) -> None:
    messages = [m for split in splits.values() for m in split]
    assert sum(not m.asks for m in messages) >= 40
    for name, split in splits.items():
        assert sum(bool(m.asks) for m in split) >= 40, name


def test_label_files_carry_no_message_text() -> None:
    allowed = {"dataset", "row_id", "text_sha256", "n_chars", "asks", "has_quoted_history", "note"}
    for split in ("dev", "test"):
        for line in (GOLDSET_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert set(row) == allowed
            assert len(row["note"]) <= 120


def _copy_with(tmp_path: Path, change: Callable[[dict], None]) -> tuple[Path, str]:
    """Copy dev.jsonl with its first row that has asks changed by ``change``; return folder, row id."""
    rows = [json.loads(line) for line in (GOLDSET_DIR / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    target = next(row for row in rows if row["asks"])
    row_id = target["row_id"]
    change(target)
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return tmp_path, row_id


def test_a_changed_text_hash_is_reported_with_the_row(tmp_path: Path) -> None:
    folder, row_id = _copy_with(tmp_path, lambda row: row.update(text_sha256="0" * 64))
    with pytest.raises(DataError, match=f"row {row_id}: the text no longer matches"):
        load_ask_goldset("dev", goldset_dir=folder)


def test_a_span_outside_the_text_is_reported_with_the_row(tmp_path: Path) -> None:
    folder, row_id = _copy_with(tmp_path, lambda row: row["asks"][-1].update(end=row["n_chars"] + 5))
    with pytest.raises(DataError, match=f"row {row_id}: ask span"):
        load_ask_goldset("dev", goldset_dir=folder)


def test_an_unknown_row_id_is_reported(tmp_path: Path) -> None:
    folder, _ = _copy_with(tmp_path, lambda row: row.update(row_id="999999999999"))
    with pytest.raises(DataError, match="row 999999999999 is not in the data file"):
        load_ask_goldset("dev", goldset_dir=folder)


def test_an_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError):
        load_ask_goldset("train")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ((0, 10), [(0, 10)], True),  # identical
        ((5, 15), [(0, 10)], True),  # overlap 5 = 50% of the shorter (10): counts
        ((6, 16), [(0, 10)], False),  # overlap 4 < 50%
        ((10, 20), [(0, 10)], False),  # adjacent, no overlap
        ((30, 40), [(0, 10)], False),  # far apart
        ((0, 100), [(40, 50)], True),  # prediction contains the gold clause
        ((40, 50), [(0, 100)], True),  # prediction lies inside a long gold sentence
        ((0, 100), [(95, 120)], False),  # touches the edge of a gold span only (5 of 25)
        ((50, 60), [(0, 10), (52, 70)], True),  # second gold span matches
        ((5, 5), [(0, 10)], False),  # empty prediction
        ((0, 10), [], False),  # no gold asks
    ],
)
def test_ask_hit(pred: tuple[int, int], gold: list[tuple[int, int]], expected: bool) -> None:
    assert ask_hit(pred, gold) is expected
