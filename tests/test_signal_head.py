"""The learned signal head: logistic regressions over pooled middle-layer states, beside the rules.

Unit tests on synthetic features (fitting, the file format and its checks), the layer taps of
the encoder, how head findings join the rules' in a result, reading the team-written data, a
fit on the tiny model folder end to end, and the committed default model on messages written
for this test (not in its training data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.artifact import attach_files, load_model
from pipeline.bert import BertEncoder, BertSettings
from pipeline.cli import app
from pipeline.errors import DataError, ModelLoadError
from pipeline.normalise import Normaliser
from pipeline.segment import Segmenter
from pipeline.signal_head import SIGNAL_HEAD_FILE, SignalHead, head_signals
from pipeline.signal_head_fitting import (
    DEFAULT_TRAINING_DIR,
    SIGNAL_HEAD_SUMMARY,
    fit_signal_head,
    read_signal_training,
    written_half,
)
from pipeline.signals import DEFAULT_LEXICON_PATH, load_signal_lexicon
from pipeline.triage import Pipeline
from tests.conftest import build_tiny_model
from tests.test_encoder import tiny_encoder

NAMES = [spec.name for spec in load_signal_lexicon(DEFAULT_LEXICON_PATH).signals]


def synthetic(rng: np.random.Generator, n: int = 300, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Features where signal 0 lives along axis 0 and signal 1 along axis 1; signal 2 never occurs."""
    x = rng.normal(size=(n, dim))
    y = np.zeros((n, 3))
    y[: n // 4, 0] = 1
    x[: n // 4, 0] += 6.0
    y[n // 4 : n // 2, 1] = 1
    x[n // 4 : n // 2, 1] += 6.0
    return x, y


@pytest.fixture(scope="module")
def head() -> SignalHead:
    x, y = synthetic(np.random.default_rng(0))
    return SignalHead.fit(x, y, ["a", "b", "c"], (1, 2), threshold=0.8)


def test_fitted_regressions_separate_their_signals_and_an_unlearnable_one_never_fires(head: SignalHead):
    x, y = synthetic(np.random.default_rng(1))
    probs = head.probabilities(x)
    assert probs.shape == (len(x), 3)
    predicted = probs > head.threshold
    assert (predicted[:, :2] == y[:, :2].astype(bool)).mean() > 0.95
    assert not predicted[:, 2].any()  # no positive sentence to learn from: the rules alone decide it
    # Features are L2-normalised: only the direction of a sentence's states counts.
    np.testing.assert_allclose(head.probabilities(x * 7.0), probs, rtol=1e-5)


def test_save_load_round_trip_and_every_check(tmp_path: Path, head: SignalHead):
    head.save(tmp_path / "h.safetensors")
    loaded = SignalHead.load(tmp_path / "h.safetensors", hidden_size=8, num_layers=2)
    assert (
        loaded.labels == head.labels and loaded.layers == head.layers and loaded.threshold == head.threshold
    )
    np.testing.assert_array_equal(loaded.precisions, head.precisions)
    x = np.random.default_rng(2).normal(size=(5, 16))
    np.testing.assert_array_equal(loaded.probabilities(x), head.probabilities(x))
    with pytest.raises(ModelLoadError, match="width 16"):
        SignalHead.load(tmp_path / "h.safetensors", hidden_size=32, num_layers=2)
    with pytest.raises(ModelLoadError, match="layers"):
        SignalHead.load(tmp_path / "h.safetensors", hidden_size=8, num_layers=1)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ModelLoadError, match="fit-signals"):
        SignalHead.load(tmp_path / "bad.safetensors", hidden_size=8, num_layers=2)
    with pytest.raises(ValueError, match="threshold"):
        SignalHead(("a",), (1,), np.zeros((1, 4), np.float32), np.zeros(1, np.float32), 1.0, np.ones(1))
    with pytest.raises(ValueError, match="NaN"):
        SignalHead(
            ("a",), (1,), np.full((1, 4), np.nan, np.float32), np.zeros(1, np.float32), 0.5, np.ones(1)
        )
    with pytest.raises(ValueError, match="multiple"):
        SignalHead(("a",), (1, 2), np.zeros((1, 5), np.float32), np.zeros(1, np.float32), 0.5, np.ones(1))
    with pytest.raises(ValueError, match="precisions"):
        SignalHead(("a",), (1,), np.zeros((1, 4), np.float32), np.zeros(1, np.float32), 0.5, np.array([1.5]))


def test_hidden_states_tap_the_layers_of_the_same_pass():
    torch.manual_seed(0)
    settings = BertSettings(
        vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
    )
    encoder = BertEncoder(settings).eval()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    last, tapped = encoder.hidden_states(ids, mask, (1, 3))
    assert len(tapped) == 2
    torch.testing.assert_close(tapped[1], last)
    torch.testing.assert_close(encoder(ids, mask), last)
    assert not torch.allclose(tapped[0], last)
    with pytest.raises(ValueError, match="does not exist"):
        encoder.hidden_states(ids, mask, (4,))


def test_encoder_returns_features_and_scores_sentences_with_the_head():
    encoder = tiny_encoder()
    text = "My card failed again. Please send another one. Thanks."
    spans = [(0, 21), (22, 46), (47, 54)]
    plain = encoder.encode([text], [spans], signal_features=(1, 2))[0]
    assert plain.sentence_signal_features is not None and plain.sentence_signal_features.shape == (3, 64)
    assert plain.sentence_signal_probs is None
    rng = np.random.default_rng(3)
    fitted = SignalHead.fit(
        rng.normal(size=(40, 64)),
        (rng.random((40, 2)) > 0.7).astype(float),
        ["a", "b"],
        (1, 2),
        threshold=0.5,
    )
    encoder.signal_head = fitted
    scored = encoder.encode([text], [spans])[0]
    assert scored.sentence_signal_features is None
    np.testing.assert_allclose(
        scored.sentence_signal_probs, fitted.probabilities(plain.sentence_signal_features), rtol=1e-5
    )
    assert encoder.encode([text], [spans], signals=False)[0].sentence_signal_probs is None
    # The heads' outputs do not change when the middle layers are tapped too.
    np.testing.assert_array_equal(scored.sentence_probs["ask"], plain.sentence_probs["ask"])


def test_head_signals_join_the_rules_with_spans_in_the_original_text():
    original = "<p>My  card   was replaced twice.</p><p>It still does not work!</p>"
    normalised = Normaliser().normalise(original)
    sentences = Segmenter().segment(normalised.body.text)
    assert len(sentences) == 2
    head = SignalHead(
        ("repeat_failure", "legal_threat", "made_up"),
        (1,),
        np.zeros((3, 4), np.float32),
        np.zeros(3, np.float32),
        0.6,
        np.array([0.7, 0.8, 0.9]),
    )
    probs = np.array([[0.70, 0.9, 0.99], [0.95, 0.1, 0.99]])
    found = head_signals(
        head,
        probs,
        sentences,
        normalised.body,
        already_found=set(),
        allowed={"repeat_failure", "legal_threat"},
    )
    assert [s.name for s in found] == ["repeat_failure", "legal_threat"]  # made_up is no signal of the policy
    repeat = found[0]
    assert original[repeat.start : repeat.end] == repeat.evidence == repeat.text
    assert "still does not work" in repeat.evidence and repeat.score == 0.7  # its measured precision
    again = head_signals(
        head, probs, sentences, normalised.body, already_found={"legal_threat"}, allowed=set(NAMES)
    )
    assert [s.name for s in again] == ["repeat_failure"]  # the rules' evidence is kept, not doubled
    low = head_signals(head, probs * 0.5, sentences, normalised.body, already_found=set(), allowed=set(NAMES))
    assert low == []


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(i: int, text: str, signals: list[tuple[str, str]], kind: str = "positive") -> dict:
    return {
        "id": f"t-{i}",
        "text": text,
        "signals": [{"name": n, "evidence": e} for n, e in signals],
        "kind": kind,
        "style": "email",
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"id": "x", "text": "hello there"}), "exactly id, text"),
        (json.dumps(row(9, "My lawyer will call.", [("lawsuit", "My lawyer")])), "unknown signal"),
        (json.dumps(row(9, "My lawyer will call.", [("legal_threat", "attorney")])), "exactly once"),
        (json.dumps(row(9, "Nothing to report here.", [])), "at least one signal"),
        (json.dumps(row(1, "A second row with id one.", [], kind="hard_negative")), "used twice"),
    ],
)
def test_malformed_training_rows_are_refused_with_file_and_line(tmp_path: Path, bad: str, message: str):
    good = json.dumps(row(1, "I will see you in court over this.", [("legal_threat", "see you in court")]))
    (tmp_path / "a.jsonl").write_text(good + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        read_signal_training(tmp_path, NAMES)
    assert "a.jsonl:2" in str(error.value)


def test_the_team_written_training_data_is_valid_and_covers_every_signal():
    examples, hashes = read_signal_training(DEFAULT_TRAINING_DIR, NAMES)
    assert len(hashes) >= 6 and len(examples) >= 1800
    counts = {name: sum(name in e.names for e in examples) for name in NAMES}
    assert min(counts.values()) >= 80, counts
    assert sum(not e.names for e in examples) >= 300  # hard negatives with no signal at all
    tune, _ = read_signal_training(DEFAULT_TRAINING_DIR, NAMES, half="tune")
    check, _ = read_signal_training(DEFAULT_TRAINING_DIR, NAMES, half="check")
    assert {e.id for e in tune}.isdisjoint(e.id for e in check) and len(tune) + len(check) == len(examples)
    assert 0.4 < len(tune) / len(examples) < 0.6
    for name in NAMES:  # both halves can measure every signal
        assert sum(name in e.names for e in check) >= 30, name


def fixture_training(folder: Path) -> Path:
    folder.mkdir()
    rows = []
    for i in range(24):
        rows.append(
            row(
                i,
                f"This is replacement number {i + 2} and it broke again like the others.",
                [("repeat_failure", "it broke again like the others")],
            )
        )
        rows.append(
            row(
                100 + i,
                f"My lawyer is filing suit on day {i + 1} unless you pay.",
                [("legal_threat", "My lawyer is filing suit")],
            )
        )
        rows.append(row(200 + i, f"Please tell me my balance for account {i}.", [], kind="hard_negative"))
    write_rows(folder / "fixture.jsonl", rows)
    return folder


def test_fitting_attaches_a_verified_head_that_the_pipeline_uses(tmp_path: Path):
    folder = build_tiny_model(tmp_path / "tiny")
    summary = fit_signal_head(
        folder, training_dir=fixture_training(tmp_path / "data"), dev_splits=(), layers=(1, 2)
    )
    tune = [e for e in read_signal_training(tmp_path / "data", NAMES)[0] if written_half(e.id) == "tune"]
    assert summary["messages"] == {"written": len(tune), "development": 0}  # the check half is held out
    assert summary["positive_sentences"]["repeat_failure"] == sum("repeat_failure" in e.names for e in tune)
    assert 0.5 <= summary["threshold"] < 1.0
    table = summary["cross_validation"]["table"]
    assert {"rules", "head", "rules_and_head"} <= set(table[0])
    added = summary["added_beside_the_rules"]["repeat_failure"]
    assert added["precision"] == round((added["right"] + 1) / (added["added"] + 2), 4)
    model = load_model(folder)
    assert SIGNAL_HEAD_FILE in model.manifest.files and SIGNAL_HEAD_SUMMARY in model.manifest.files
    pipeline = Pipeline.from_folder(folder)
    assert pipeline.encoder.signal_head is not None and pipeline.encoder.signal_head.layers == (1, 2)
    assert pipeline.with_asks(threshold=0.5, max_asks=2).encoder.signal_head is pipeline.encoder.signal_head
    result = pipeline.route("This is replacement number 9 and it broke again like the others.")
    assert all(result_signal.name in NAMES for result_signal in result.signals)
    # A broken head file stops loading with the fix named; it never routes without it.
    (tmp_path / "junk").write_bytes(b"junk" * 10)
    attach_files(folder, {SIGNAL_HEAD_FILE: (tmp_path / "junk").read_bytes()})
    with pytest.raises(ModelLoadError, match="fit-signals"):
        Pipeline.from_folder(folder)
    # ... and the fix it names works on that very folder.
    fit_signal_head(folder, training_dir=tmp_path / "data", dev_splits=(), layers=(1, 2))
    assert Pipeline.from_folder(folder).encoder.signal_head is not None


def test_fit_signals_command_names_the_fix_for_missing_data(tmp_path: Path, tiny_model_dir: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["fit-signals", str(tiny_model_dir), "--training-dir", str(empty)])
    assert result.exit_code != 0
    assert "no *.jsonl files" in result.output and "data/signal_training" in result.output


def test_signals_benchmark_scores_the_check_half_with_and_without_the_head(tmp_path: Path):
    import subprocess
    import sys

    folder = build_tiny_model(tmp_path / "tiny")
    fit_signal_head(folder, training_dir=fixture_training(tmp_path / "data"), dev_splits=(), layers=(1, 2))
    out = tmp_path / "signals.json"
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_signals.py"
    done = subprocess.run(
        [sys.executable, str(script), "--model", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    check, _ = read_signal_training(DEFAULT_TRAINING_DIR, NAMES, half="check")
    assert report["half"] == "check" and report["messages"] == len(check) and report["signal_head"]
    assert report["signals"] == sum(len(e.names) for e in check)
    for key in ("pipeline", "rules_only"):
        assert 0.0 <= report[key]["micro"]["f1"] <= 1.0 and 0.0 <= report[key]["span_recall"] <= 1.0
    # The rules alone are the committed lexicon, whatever the tiny head adds to them.
    assert report["pipeline"]["micro"]["recall"] >= report["rules_only"]["micro"]["recall"]
    assert report["baselines"]["keyword_signals"]["micro"]["precision"] > 0.0
    assert "| micro-F1 (P / R) |" in done.stdout
