"""The pure helpers of ``scripts/bench_classify.py``: filters, the burying composer, ECE, the table.

The script is imported as a module (it is not part of the package); nothing here reads the public
data sets, only the speed-baseline test loads a model (the tiny one), and every text is written by
the team for these tests.
"""

from __future__ import annotations

import copy
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipeline.errors import DataError

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_classify.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_classify", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_classify"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load()

WORDS = ("the", "statement", "arrived", "late", "and", "balance", "looked", "different", "from", "last")


def background(n: int = 120, seed: int = 3) -> list[str]:
    """Team-written filler sentences of 5-30 words, each distinct (numbered)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(5, 30)
        words = [f"note{i}", *(rng.choice(WORDS) for _ in range(length - 1))]
        out.append(" ".join(words).capitalize() + ".")
    return out


# ----------------------------------------------------------------------------- overlap filter


def test_drop_training_overlap_ignores_case_and_whitespace() -> None:
    evaluated = ["My  card was\nCHARGED twice.", "A new complaint.", "the fee  was wrong "]
    training = ["my card was charged twice.", "The fee was wrong", "Something else entirely."]
    kept, dropped = bench.drop_training_overlap(evaluated, training)
    assert kept == [1]
    assert dropped == [0, 2]


def test_drop_training_overlap_keeps_near_duplicates_that_differ_in_words() -> None:
    kept, dropped = bench.drop_training_overlap(["the fee was wrong today"], ["the fee was wrong"])
    assert (kept, dropped) == ([0], [])


def test_text_key_matches_split_of_normalisation() -> None:
    assert bench.text_key("  Hello\t\tWORLD \n again ") == "hello world again"


# ----------------------------------------------------------------------------- burying composer


def test_bury_utterance_puts_the_utterance_after_200_to_600_background_words() -> None:
    pool = background()
    rng = random.Random(11)
    for _ in range(40):
        case = bench.bury_utterance("How do I top up my card?", pool, rng, closing_share=0.0)
        assert case.text[case.utterance_start : case.utterance_end] == "How do I top up my card?"
        assert case.text.endswith("How do I top up my card?")
        prefix = case.text[: case.utterance_start]
        assert len(prefix.split()) == case.background_words
        assert 200 <= case.background_words <= 600
        assert any(prefix.startswith(sentence) for sentence in pool)  # starts at a sentence boundary
        assert case.closing is None


def test_bury_utterance_respects_other_word_ranges() -> None:
    pool = background()
    rng = random.Random(5)
    counts = [
        bench.bury_utterance("Where is my card", pool, rng, min_words=50, max_words=60).background_words
    ]
    counts += [
        bench.bury_utterance("Where is my card", pool, rng, min_words=50, max_words=60).background_words
        for _ in range(30)
    ]
    assert all(50 <= c <= 60 for c in counts)


def test_bury_utterance_adds_one_closing_line_after_the_utterance() -> None:
    pool = background()
    case = bench.bury_utterance("where is my new card", pool, random.Random(2), closing_share=1.0)
    assert case.closing in bench.CLOSINGS
    # no final stop on the utterance: the closing goes on its own line so it is its own sentence
    assert case.text.endswith("where is my new card\n" + case.closing)
    punctuated = bench.bury_utterance("Where is my new card?", pool, random.Random(2), closing_share=1.0)
    assert punctuated.text.endswith("Where is my new card? " + punctuated.closing)
    assert punctuated.text[punctuated.utterance_start : punctuated.utterance_end] == "Where is my new card?"


def test_bury_utterance_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    pool = background()
    first = [bench.bury_utterance("Why was I charged a fee?", pool, random.Random(7)) for _ in range(3)]
    again = [bench.bury_utterance("Why was I charged a fee?", pool, random.Random(7)) for _ in range(3)]
    assert first == again
    others = {bench.bury_utterance("Why was I charged a fee?", pool, random.Random(s)).text for s in range(8)}
    assert len(others) > 1


def test_bury_utterance_fails_with_a_fix_when_background_is_too_short() -> None:
    with pytest.raises(DataError) as caught:
        bench.bury_utterance("Where is my card?", background(n=3), random.Random(0))
    assert caught.value.fix
    with pytest.raises(DataError):
        bench.bury_utterance("Where is my card?", [], random.Random(0))


def test_cut_at_token_cuts_at_the_end_of_the_last_kept_token() -> None:
    text = "abc def ghi"
    ends = [3, 7, 11]
    assert bench.cut_at_token(text, ends, 2) == "abc def"
    assert bench.cut_at_token(text, ends, 3) == text
    assert bench.cut_at_token(text, ends, 10) == text
    with pytest.raises(ValueError):
        bench.cut_at_token(text, ends, 0)


# ----------------------------------------------------------------------------- metrics


def test_ece_matches_a_hand_computed_case() -> None:
    # 15 bins: 0.95 -> (14/15, 1], 0.55 -> (8/15, 9/15], 0.25 -> (3/15, 4/15]
    # |0.5 - 0.95| * 2/4 + |1 - 0.55| * 1/4 + |0 - 0.25| * 1/4 = 0.225 + 0.1125 + 0.0625
    ece = bench.expected_calibration_error([0.95, 0.95, 0.55, 0.25], [True, False, True, False])
    assert ece == pytest.approx(0.4)


def test_ece_bins_are_closed_on_the_right_and_zero_when_calibrated() -> None:
    # two bins (0, .5] and (.5, 1]: 0.5 belongs to the first, so the mean confidence there is 0.5
    assert bench.expected_calibration_error([0.5, 0.5, 1.0], [True, False, True], n_bins=2) == pytest.approx(
        0
    )
    assert bench.expected_calibration_error([0.0, 1.0], [False, True]) == pytest.approx(0)
    with pytest.raises(ValueError):
        bench.expected_calibration_error([], [])
    with pytest.raises(ValueError):
        bench.expected_calibration_error([0.5], [True, False])
    with pytest.raises(ValueError):
        bench.expected_calibration_error([1.5], [True])


def test_accuracy_and_macro_f1_count_missing_labels_as_wrong() -> None:
    gold = ["a", "a", "b", "b"]
    predicted = ["a", None, "b", "a"]
    assert bench.accuracy(gold, predicted) == pytest.approx(0.5)
    # a: tp 1, fp 1, fn 1 -> 0.5; b: tp 1, fp 0, fn 1 -> 2/3
    assert bench.macro_f1(gold, predicted) == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        bench.accuracy(gold, predicted[:2])


# ----------------------------------------------------------------------------- table


def sample_report() -> dict[str, Any]:
    return {
        "model_version": "hearken-test-1",
        "quick": False,
        "machine": {"precision": "bf16", "threads": 2, "cpu": "x86_64"},
        "banking77": {
            "n": 3080,
            "hearken_accuracy": 0.9123,
            "hearken_ece": 0.0345,
            "baseline_tfidf_linearsvc_accuracy": 0.8876,
        },
        "cfpb_product": {
            "scored_rows": 219,
            "hearken": {"accuracy": 0.71, "macro_f1": 0.655, "ece": 0.08},
            "hearken_reason": None,
            "baseline_tfidf_linearsvc": {"accuracy": 0.6, "macro_f1": 0.5},
            "baseline_tfidf_linearsvc_first_200_chars": {"accuracy": 0.4, "macro_f1": 0.35},
        },
        "cfpb_product_held_out": {
            "rows": 262,
            "scored_rows": 262,
            "hearken": {"accuracy": 0.8, "macro_f1": 0.61, "ece": 0.025},
            "hearken_reason": None,
            "baseline_tfidf_linearsvc": {"accuracy": 0.7, "macro_f1": 0.45},
        },
        "buried_intent": {
            "messages": 3080,
            "hearken_buried_accuracy": 0.88,
            "hearken_bare_accuracy": 0.9123,
            "ratio": 0.9646,
            "baseline_first_512_tokens_accuracy": 0.5,
            "baseline_ratio": 0.548,
        },
        "precision_agreement": {
            "other": "bf16",
            "banking77": {"intent_agreement": 0.998, "fp32_accuracy": 0.913, "other_accuracy": 0.912},
            "cfpb_aegis": {"product_agreement": 1.0},
        },
        "speed": {
            "messages": 2615,
            "batch_size": 32,
            "hearken_messages_per_second": 34.94,
            "transformers_messages_per_second": 20.0,
            "ratio": 1.747,
        },
        "cold_start": {"runs_seconds": [3.1, 2.9, 3.4], "median_seconds": 3.1},
        "memory": {"messages": 1000, "peak_rss_mib": 812.4},
    }


def table_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_format_table_renders_every_measure_with_its_baseline_and_goal() -> None:
    table = bench.format_table(sample_report())
    lines = table.splitlines()
    assert lines[0].startswith("Model `hearken-test-1`, bf16, 2 threads")
    assert "quick" not in lines[0]
    assert "| measure | Hearken | baseline (same run) | goal |" in lines
    rows = table_rows(table)
    assert all(len(row) == 4 for row in rows)
    by_measure = {row[0]: row for row in rows}
    bank = by_measure["Banking77 test intent accuracy (3080 utterances)"]
    assert bank[1] == "0.912" and "LinearSVC 0.888" in bank[2]
    product = next(row for name, row in by_measure.items() if name.startswith("CFPB AEGIS product"))
    assert product[1] == "0.710 / 0.655"
    assert "first 200 chars 0.400 / 0.350" in product[2]
    held_out = next(row for name, row in by_measure.items() if name.startswith("CFPB test split"))
    assert "262 rows" in held_out[0] and held_out[1] == "0.800 / 0.610 / 0.025"
    assert held_out[2] == "TF-IDF + LinearSVC 0.700 / 0.450"
    buried = next(row for name, row in by_measure.items() if name.startswith("buried intent"))
    assert "0.965" in buried[1] and buried[3] == "ratio ≥ 0.97"
    assert "ratio 0.548" in buried[2]
    speed = next(row for name, row in by_measure.items() if name.startswith("speed"))
    assert speed[1] == "34.9 msg/s" and "× 1.75" in speed[2]
    cold = next(row for name, row in by_measure.items() if name.startswith("cold start"))
    assert cold[1] == "3.10 s" and "median of 3" in cold[0] and cold[3] == "≤ 3 s"
    memory = next(row for name, row in by_measure.items() if name.startswith("peak RSS"))
    assert memory[1] == "812 MiB"


def test_format_table_says_why_when_the_model_has_no_product_head() -> None:
    report = copy.deepcopy(sample_report())
    report["quick"] = True
    report["cfpb_product"]["hearken"] = None
    report["cfpb_product"]["hearken_reason"] = "this model has no product head"
    report["precision_agreement"]["cfpb_aegis"] = {"product_agreement": None}
    report["cold_start"] = {"runs_seconds": [], "median_seconds": None, "error": "boom"}
    report["cfpb_product_held_out"] = {"rows": 262, "hearken": None, "hearken_reason": "no product head"}
    table = bench.format_table(report)
    assert "quick run" in table.splitlines()[0]
    rows = table_rows(table)
    product = next(row for row in rows if row[0].startswith("CFPB AEGIS product"))
    assert product[1] == "n/a (this model has no product head)"
    assert "TF-IDF + LinearSVC 0.600 / 0.500" in product[2]
    assert not any(row[0].startswith("same, ECE of product") for row in rows)
    assert not any(row[0].startswith("CFPB test split") for row in rows)
    agreement = next(row for row in rows if "argmax agreement" in row[0])
    assert agreement[1] == "0.998 / n/a"
    cold = next(row for row in rows if row[0].startswith("cold start"))
    assert cold[1] == "n/a (failed: see the JSON report)"


# ----------------------------------------------------------------------------- speed baseline


def test_transformers_baseline_takes_the_folder_weights_of_a_prepacked_bf16_pipeline(
    tiny_pipeline: Any, tiny_model_dir: Path
) -> None:
    """A bf16 pipeline's Linear layers are prepacked and hold no plain weights to copy."""
    import torch

    from pipeline.artifact import load_model

    assert tiny_pipeline.precision == "bf16"  # CI and these machines have native bf16
    classifier = bench.transformers_classifier(tiny_pipeline)
    baseline = classifier.model.bert.state_dict()
    for key, weight in load_model(tiny_model_dir).net.encoder.state_dict().items():
        assert torch.equal(baseline[key], weight.float()), key
    assert classifier("My card was charged twice. Please refund one charge.")[0]["label"]
