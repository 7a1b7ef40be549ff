"""The out-of-scope detector: Mahalanobis distance to the nearest intent, as a held-out percentile.

Unit tests on synthetic Gaussian clusters (distances checked against a direct computation), the
file format and its checks, the encoder and pipeline wiring on a tiny random model, and the
committed default model's detector on real text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.artifact import attach_files, load_model
from pipeline.cli import app
from pipeline.encoder import HeadSpec
from pipeline.errors import DataError, ModelLoadError
from pipeline.ood import OUT_OF_SCOPE_FILE, OutOfScopeDetector, auroc, distance_score
from pipeline.schema import IntentResult, ProductResult, RouteResult, TriageResult
from pipeline.triage import Pipeline
from tests.conftest import build_tiny_model
from tests.test_encoder import tiny_encoder


def clusters(rng: np.random.Generator, n_per: int = 60, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    centres = np.eye(3, dim) * 10.0
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.fixture(scope="module")
def detector() -> OutOfScopeDetector:
    rng = np.random.default_rng(0)
    vectors, labels = clusters(rng)
    held_out, _ = clusters(rng, n_per=40)
    return OutOfScopeDetector.fit(vectors, labels, held_out, shrinkage=0.1)


def test_distance_is_the_mahalanobis_distance_to_the_nearest_mean():
    rng = np.random.default_rng(1)
    vectors, labels = clusters(rng)
    fitted = OutOfScopeDetector.fit(vectors, labels, clusters(rng)[0], shrinkage=0.0)
    means = np.stack([vectors[labels == c].mean(0) for c in range(3)])
    centred = vectors - means[labels]
    precision = np.linalg.inv(centred.T @ centred / len(vectors) + 1e-6 * np.eye(8))
    probe = rng.normal(size=(5, 8)) * 4
    expected = [min(float((x - m) @ precision @ (x - m)) for m in means) for x in probe]
    np.testing.assert_allclose(fitted.distances(probe), expected, rtol=1e-4)


def test_scores_are_held_out_percentiles(detector: OutOfScopeDetector):
    near_a_mean = detector.means[1:2].astype(np.float64)
    far_away = np.full((1, 8), 50.0)
    assert detector.scores(detector.distances(near_a_mean))[0] == 0.0
    assert detector.scores(detector.distances(far_away))[0] == 1.0
    median = float(np.median(detector.quantiles))
    assert detector.scores(np.array([median]))[0] == pytest.approx(0.5, abs=0.01)


def test_far_points_are_told_from_in_scope_ones(detector: OutOfScopeDetector):
    rng = np.random.default_rng(2)
    in_scope, _ = clusters(rng, n_per=30)
    outside = rng.normal(size=(90, 8)) * 3 + np.r_[5.0, 5.0, 5.0, np.zeros(5)]
    scores = detector.scores(detector.distances(np.r_[in_scope, outside]))
    assert auroc(scores, np.r_[np.zeros(90), np.ones(90)]) > 0.95


def test_save_and_load_round_trip_and_checks(tmp_path: Path, detector: OutOfScopeDetector):
    path = tmp_path / OUT_OF_SCOPE_FILE
    detector.save(path)
    loaded = OutOfScopeDetector.load(path, dim=8)
    probe = np.random.default_rng(3).normal(size=(4, 8))
    np.testing.assert_allclose(loaded.distances(probe), detector.distances(probe))
    with pytest.raises(ModelLoadError, match="fitted on 8-wide vectors"):
        OutOfScopeDetector.load(path, dim=32)
    path.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="fit-out-of-scope"):
        OutOfScopeDetector.load(path, dim=8)


def test_invalid_arrays_are_refused():
    means, whitening, quantiles = np.zeros((2, 4)), np.eye(4), np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="whitening"):
        OutOfScopeDetector(means, np.eye(3), quantiles)
    with pytest.raises(ValueError, match="non-decreasing"):
        OutOfScopeDetector(means, whitening, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        OutOfScopeDetector(means, whitening * np.nan, quantiles)
    with pytest.raises(DataError, match="two held-out"):
        OutOfScopeDetector.fit(np.eye(4), [0, 0, 1, 1], np.zeros((1, 4)))


def test_encoder_scores_each_sentence_from_the_vectors_it_returns(detector: OutOfScopeDetector):
    encoder = tiny_encoder()
    text = "My card is lost. Please block it now. Thanks."
    spans = [(0, 16), (17, 37), (38, 45)]
    plain = encoder.encode([text], [spans], vectors=True)[0]
    assert plain.sentence_out_of_scope is None and plain.sentence_vectors is not None
    assert plain.sentence_vectors.shape == (3, 32)
    rng = np.random.default_rng(4)
    fitted = OutOfScopeDetector.fit(rng.normal(size=(60, 32)), np.arange(60) % 3, rng.normal(size=(20, 32)))
    encoder.out_of_scope = fitted
    scored = encoder.encode([text], [spans])[0]
    assert scored.sentence_vectors is None
    expected = fitted.scores(fitted.distances(plain.sentence_vectors))
    np.testing.assert_allclose(scored.sentence_out_of_scope, expected, rtol=1e-5)
    # Readings whose intent is all that is used (the asks read alone) skip the distances.
    skipped = encoder.encode([text], [spans], out_of_scope=False)[0]
    assert skipped.sentence_out_of_scope is None
    np.testing.assert_array_equal(skipped.sentence_probs["intent"], scored.sentence_probs["intent"])


def test_pipeline_reports_the_detector_and_a_broken_file_fails_loading(tmp_path: Path):
    heads = [
        HeadSpec(name="ask", level="sentence", kind="binary", labels=["not_ask", "ask"]),
        HeadSpec(name="intent", level="sentence", kind="multiclass", labels=["a", "b", "c"]),
    ]
    folder = build_tiny_model(tmp_path / "tiny", heads=heads)
    assert Pipeline.from_folder(folder).route("Where is my card?").intent.out_of_scope is None
    rng = np.random.default_rng(5)
    fitted = OutOfScopeDetector.fit(rng.normal(size=(60, 32)), np.arange(60) % 3, rng.normal(size=(20, 32)))
    fitted.save(tmp_path / "d.safetensors")
    attach_files(folder, {OUT_OF_SCOPE_FILE: (tmp_path / "d.safetensors").read_bytes()})
    assert load_model(folder).manifest.files[OUT_OF_SCOPE_FILE]
    pipeline = Pipeline.from_folder(folder)
    result = pipeline.route("Where is my card? It was due last week.")
    assert result.intent.out_of_scope is not None and 0.0 <= result.intent.out_of_scope <= 1.0
    assert pipeline.with_asks(threshold=0.0, max_asks=3).encoder.out_of_scope is pipeline.encoder.out_of_scope
    wrong_width = OutOfScopeDetector.fit(
        rng.normal(size=(60, 8)), np.arange(60) % 3, rng.normal(size=(20, 8))
    )
    wrong_width.save(tmp_path / "w.safetensors")
    attach_files(folder, {OUT_OF_SCOPE_FILE: (tmp_path / "w.safetensors").read_bytes()})
    with pytest.raises(ModelLoadError, match="8-wide"):
        Pipeline.from_folder(folder)


def test_fitting_needs_a_folder_written_by_training(tiny_model_dir: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["fit-out-of-scope", str(tiny_model_dir)])
    assert result.exit_code == 4
    assert "no intent head" in result.output
    heads = [HeadSpec(name="intent", level="sentence", kind="multiclass", labels=["a", "b"])]
    untrained = build_tiny_model(tmp_path / "untrained", heads=heads)
    result = CliRunner().invoke(app, ["fit-out-of-scope", str(untrained)])
    assert result.exit_code == 4
    assert "no train_config.json" in result.output and "hearken train" in result.output


def test_distance_score_falls_back_to_one_without_an_intent():
    def result(intent: IntentResult) -> TriageResult:
        return TriageResult(
            id="t-1",
            language="en",
            asks=[],
            product=ProductResult(),
            intent=intent,
            signals=[],
            route=RouteResult(tier="tier1", queue="general", confidence=0.5, needs_human_review=True),
            model_version="m",
        )

    assert distance_score(result(IntentResult(reason="nothing read"))) == 1.0
    assert distance_score(result(IntentResult(label="a", confidence=0.9, out_of_scope=0.25))) == 0.25


def test_default_model_detector_tells_banking_queries_from_other_topics(default_pipeline: Pipeline):
    summary = json.loads((Path(default_pipeline.loaded.folder) / "out_of_scope.json").read_text())
    assert summary["intent_dataset"] == "banking77" and summary["intents"] == 77
    banking = [
        "I still have not received my new card, when will it arrive?",
        "Why was I charged a fee for topping up by card?",
        "How do I change my PIN?",
    ]
    other = [
        "What is the weather going to be like in Paris tomorrow?",
        "Can you recommend a good recipe for lasagna?",
        "Play some jazz music in the living room.",
    ]
    scores = [default_pipeline.route(t).intent.out_of_scope for t in banking + other]
    assert max(scores[:3]) < min(scores[3:]), scores
