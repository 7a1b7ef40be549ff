"""Routing end to end through the pipeline: signals, tiers, queues, review, a second policy, calibration.

The tiny random model decides nothing reliably about asks, so these tests use what does not
depend on its weights (signals, catalogue mentions, language, policy rules) and assert the
mechanism; accuracy is measured by ``scripts/bench_routing.py`` on the hand-labelled set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.artifact import load_model
from pipeline.cli import app
from pipeline.contract import check_result
from pipeline.errors import ModelLoadError
from pipeline.route_calibration import CALIBRATION_FILE
from pipeline.routing_evaluation import calibrate_model, evaluate_routing, signal_metrics, tier_metrics
from pipeline.routing_goldset import load_routing_goldset
from pipeline.schema import Message
from pipeline.triage import Pipeline

ELECTRONICS = Path(__file__).parent / "policies" / "electronics" / "policy.yaml"

ESCALATION = (
    "I have called five times and nobody ever called me back. My Visa card was charged twice for one "
    "dinner. If this is not fixed by Friday I will contact my lawyer."
)


def _route(pipeline: Pipeline, text: str):
    result = pipeline.route(text)
    check_result(Message(id=result.id, text=text), result)
    return result


def test_escalating_signals_force_tier3_with_evidence_and_product_queue(tiny_pipeline: Pipeline) -> None:
    result = _route(tiny_pipeline, ESCALATION)
    names = {s.name for s in result.signals}
    assert {"legal_threat", "unanswered_contact"} <= names
    assert all(s.escalating for s in result.signals if s.name in {"legal_threat", "unanswered_contact"})
    assert result.route.tier == "tier3"
    assert any("legal_threat" in reason or "unanswered_contact" in reason for reason in result.route.reasons)
    assert result.product.label == "credit_card" and result.route.queue == "cards"
    assert [m.text for m in result.product.mentions] == ["Visa card"]


def test_negated_threat_does_not_escalate(tiny_pipeline: Pipeline) -> None:
    result = _route(
        tiny_pipeline, "I have not contacted a lawyer. I just want to know my savings account rate."
    )
    assert "legal_threat" not in {s.name for s in result.signals}
    assert result.route.tier != "tier3"


def test_signal_in_quoted_history_is_marked_and_escalates(tiny_pipeline: Pipeline) -> None:
    text = (
        "Thanks for getting back to me.\n\n"
        "On Mon, 3 Mar 2025 at 10:00, Dana <dana@example.com> wrote:\n"
        "> This is the third replacement card that has failed. I want to speak to a manager."
    )
    result = _route(tiny_pipeline, text)
    quoted = [s for s in result.signals if s.in_quoted_history]
    assert quoted and all(text.index("> This") <= s.start for s in quoted)
    assert result.route.tier == "tier3" and "quoted earlier mail" in result.route.reasons[0]


def test_foreign_language_goes_to_review_with_its_language(tiny_pipeline: Pipeline) -> None:
    result = _route(
        tiny_pipeline,
        "Hola, me cobraron dos veces la misma compra con mi tarjeta. ¿Pueden devolverme el dinero?",
    )
    assert result.language == "es"
    assert result.route.needs_human_review and result.route.tier is not None
    assert any("'es'" in reason for reason in result.route.reasons)
    assert (
        _route(tiny_pipeline, "Where is my replacement debit card? I ordered it two weeks ago.").language
        == "en"
    )


def test_unreadable_body_goes_to_review(tiny_pipeline: Pipeline) -> None:
    result = _route(tiny_pipeline, "?!?! ... :-( !!! 123 456 ###")
    assert result.route.needs_human_review and any("could not be read" in r for r in result.route.reasons)


def test_a_second_policy_routes_with_its_own_names(tiny_model_dir: Path) -> None:
    pipeline = Pipeline.from_folder(tiny_model_dir, policy=ELECTRONICS)
    result = _route(pipeline, "My new laptop stopped charging. The store refused my warranty claim.")
    assert [s.name for s in result.signals] == ["warranty_refused"]
    assert result.route.tier == "supervisor" and result.route.queue == "computing"
    assert result.product.label == "laptops"
    default_words = _route(pipeline, "I want to speak to a manager, I will sue you and post on Twitter.")
    assert default_words.signals == [] and default_words.route.tier in {"ignore", "desk", "repairs"}
    assert default_words.route.queue == "shop_general"
    german = _route(pipeline, "Mein neues Handy ist kaputt und der Laden will es nicht reparieren.")
    assert german.language == "de" and not any("language" in r for r in german.route.reasons)


def test_cli_route_takes_a_policy(tiny_model_dir: Path) -> None:
    outcome = CliRunner().invoke(
        app,
        [
            "route",
            "--model",
            str(tiny_model_dir),
            "--policy",
            str(ELECTRONICS),
            "--compact",
            "The shop refused my warranty repair for my iphone.",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout)
    assert result["route"]["tier"] == "supervisor" and result["route"]["queue"] == "mobile"
    broken = CliRunner().invoke(
        app, ["route", "--model", str(tiny_model_dir), "--policy", "/nope.yaml", "hi"]
    )
    assert broken.exit_code == 5 and "Cannot read routing policy" in broken.output


def test_calibration_is_fitted_on_dev_saved_verified_and_tied_to_its_policy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    calibration = calibrate_model(folder)
    assert calibration.examples == len(load_routing_goldset("dev"))
    assert 0.0 <= calibration.threshold <= 1.0 and calibration.curve
    loaded = load_model(folder)  # manifest hashes cover the attached files
    assert {"policy.yaml", "signals.yaml", "catalogue.yaml", CALIBRATION_FILE} <= set(loaded.extra_files)
    pipeline = Pipeline.from_folder(folder)
    assert pipeline.calibrated and pipeline.review_threshold == calibration.threshold
    assert not Pipeline.from_folder(folder, policy=ELECTRONICS).calibrated  # fitted for another policy
    with pytest.raises(ValueError, match="test split"):
        calibrate_model(folder, split="test")
    (folder / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(ModelLoadError, match=CALIBRATION_FILE):
        Pipeline.from_folder(folder)


def test_routing_metrics_on_hand_computed_cases() -> None:
    tiers = tier_metrics(["tier3", "tier3", "tier1", "none"], ["tier3", "tier2", "tier1", "tier3"], "tier3")
    assert tiers["accuracy"] == 0.5
    assert tiers["escalation_recall"] == 0.5 and tiers["escalation_precision"] == 0.5
    signals = signal_metrics([{"a", "b"}, set(), {"a"}], [{"a"}, {"b"}, {"a"}])
    assert signals["micro"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert signals["per_signal"]["b"]["precision"] == 0.0


def test_evaluate_routing_reports_every_measure_and_baseline(tiny_pipeline: Pipeline) -> None:
    gold = load_routing_goldset("dev")[:12]
    report = evaluate_routing(tiny_pipeline, gold)
    assert report["messages"] == 12
    assert {"accuracy", "escalation_recall", "escalation_precision"} <= set(report["tier"])
    assert {"micro", "per_signal", "span_recall"} <= set(report["signals"])
    assert {"keyword_signals", "first_sentence_tier"} == set(report["baselines"])
    assert 0.0 <= report["review"]["share"] <= 1.0
