"""The route stage on hand-built evidence: tiers, queues, reasons, review, calibration, policy errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.policy import (
    DEFAULT_POLICY,
    AskEvidence,
    CalibrationFn,
    RouteEvidence,
    Router,
    compile_phrases,
    load_policy,
    route_result,
)
from pipeline.route_calibration import (
    choose_threshold,
    expected_calibration_error,
    fit_platt,
    fit_route_calibration,
    risk_coverage,
)
from pipeline.schema import Signal


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(load_policy())


def _signal(name: str, text: str = "evidence", quoted: bool = False, score: float = 0.9) -> Signal:
    return Signal(
        name=name, text=text, evidence=text, start=0, end=len(text), score=score, in_quoted_history=quoted
    )


def _evidence(
    asks: list[AskEvidence] | None = None, signals: list[Signal] | None = None, **kw
) -> RouteEvidence:
    values = {
        "asks": asks or [],
        "signals": signals or [],
        "product": "credit_card",
        "body": "",
        "best_sentence_ask_score": 0.9 if asks else 0.05,
        "language": "en",
    }
    values.update(kw)
    return RouteEvidence(**values)


def test_compile_phrases_matches_words_and_prefixes() -> None:
    pattern = compile_phrases(["refund*", "charged twice", "bbb"])
    assert pattern.search("Please REFUNDED me")
    assert pattern.search("I was charged   twice")
    assert pattern.search("the BBB said") and not pattern.search("abbbc")
    assert not pattern.search("chargedtwice")


def test_escalating_signal_forces_top_tier_whatever_the_ask(router: Router) -> None:
    evidence = _evidence(
        [AskEvidence("When will my card arrive?", 0.95, "card_arrival", 0.99)],
        [_signal("legal_threat", "I will contact my lawyer")],
    )
    decision = router.decide(evidence)
    assert decision.tier == "tier3"
    assert "legal_threat" in decision.reasons[0] and "I will contact my lawyer" in decision.reasons[0]


def test_reported_signals_do_not_escalate(router: Router) -> None:
    evidence = _evidence(
        [AskEvidence("What is my balance?", 0.9)], [_signal("hardship"), _signal("long_wait")]
    )
    assert router.decide(evidence).tier == "tier1"


def test_quoted_history_escalation_follows_the_policy_switch() -> None:
    bundle = load_policy()
    strict = bundle.policy.model_copy(update={"quoted_history_escalates": False})
    quoted = _evidence([AskEvidence("What is my balance?", 0.9)], [_signal("repeat_failure", quoted=True)])
    assert Router(bundle).decide(quoted).tier == "tier3"
    assert Router(type(bundle)(strict, bundle.folder, bundle.texts)).decide(quoted).tier == "tier1"


def test_highest_ask_wins_and_reasons_name_it(router: Router) -> None:
    asks = [
        AskEvidence("Can you tell me your branch hours?", 0.97),
        AskEvidence("I need the duplicate charge refunded.", 0.8),
    ]
    decision = router.decide(_evidence(asks))
    assert decision.tier == "tier2"
    assert "duplicate charge refunded" in decision.reasons[0]
    assert any("highest of 2 asks" in r for r in decision.reasons)


def test_intent_sets_tier_only_when_confident(router: Router) -> None:
    confident = AskEvidence("it went through twice", 0.9, "transaction_charged_twice", 0.9)
    unsure = AskEvidence("it went through twice", 0.9, "transaction_charged_twice", 0.2)
    assert router.decide(_evidence([confident])).tier == "tier2"
    assert router.decide(_evidence([unsure])).tier == "tier1"


def test_no_ask_messages(router: Router) -> None:
    thanks = _evidence(body="Thanks so much, all sorted now!")
    assert router.decide(thanks).tier == "none"
    auto = _evidence(body="I am out of the office until Monday with limited access to email.")
    assert router.decide(auto).tier == "none"
    problem = _evidence(body="There is an unauthorized charge of $40 on my statement.")
    assert router.decide(problem).tier == "tier2"
    nothing = _evidence(body="Lovely weather today.")
    assert router.decide(nothing).tier == "none"


def test_queue_from_product_and_tier_override(router: Router) -> None:
    assert router.queue("tier2", "mortgage")[0] == "mortgages"
    assert router.queue("tier2", None)[0] == "general"
    assert router.queue("none", "mortgage")[0] == "no_action"


def test_review_for_foreign_language_unreadable_and_low_confidence(router: Router) -> None:
    ask = [AskEvidence("I need the fee refunded", 0.95)]
    sure = route_result(router, _evidence(ask), CalibrationFn(), threshold=0.5, calibrated=False)
    assert sure.tier == "tier2" and sure.queue == "cards" and not sure.needs_human_review
    spanish = route_result(router, _evidence(ask, language="es"), CalibrationFn(), 0.5, False)
    assert (
        spanish.needs_human_review and spanish.tier == "tier2" and any("'es'" in r for r in spanish.reasons)
    )
    unreadable = route_result(router, _evidence(readable=False), CalibrationFn(), 0.5, False)
    assert unreadable.needs_human_review and any("could not be read" in r for r in unreadable.reasons)
    unsure = route_result(router, _evidence(ask), CalibrationFn(), threshold=0.99, calibrated=True)
    assert unsure.needs_human_review and any(
        "below the calibrated review threshold" in r for r in unsure.reasons
    )


def test_anger_and_capitals_alone_do_not_escalate(router: Router) -> None:
    evidence = _evidence([AskEvidence("WHAT ARE YOUR OPENING HOURS?!?! I WAITED 2 HOURS ON HOLD", 0.9)])
    assert router.decide(evidence).tier == "tier1"


def _write_policy(folder: Path, **changes: object) -> Path:
    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    raw.update(changes)
    for name in ("signals.yaml", "catalogue.yaml"):
        (folder / name).write_text((DEFAULT_POLICY.parent / name).read_text())
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_policy_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="escalation_tier names tier 'tier9'"):
        load_policy(_write_policy(tmp_path, escalation_tier="tier9"))
    with pytest.raises(ConfigError, match="colour"):
        load_policy(_write_policy(tmp_path, colour="red"))
    with pytest.raises(ConfigError, match="Cannot read routing policy"):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("tiers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(tmp_path / "broken.yaml")


def test_policy_fingerprint_changes_with_any_file(tmp_path: Path) -> None:
    path = _write_policy(tmp_path)
    before = load_policy(path).sha256
    (tmp_path / "signals.yaml").write_text((tmp_path / "signals.yaml").read_text() + "\n# edited\n")
    assert load_policy(path).sha256 != before


def test_platt_fit_orders_and_calibrates() -> None:
    raw = [i / 100 for i in range(100)]
    correct = [i >= 30 for i in range(100)]
    slope, _ = fit_platt(raw, correct)
    assert slope > 0
    calibration = fit_route_calibration(
        raw, correct, target_error_rate=0.05, policy_sha256="x", fitted_on="synthetic"
    )
    assert calibration.ece_calibrated <= calibration.ece_raw + 1e-9
    assert calibration.risk <= 0.05 and 0.5 < calibration.coverage < 0.75
    assert calibration.function()(0.9) > calibration.function()(0.1)


def test_risk_coverage_and_threshold_choice() -> None:
    curve = risk_coverage([0.9, 0.8, 0.7, 0.6], [True, True, False, True])
    assert [(p.threshold, p.coverage, p.risk) for p in curve][-2:] == [(0.8, 0.5, 0.0), (0.9, 0.25, 0.0)]
    assert choose_threshold(curve, 0.1).threshold == 0.8
    assert choose_threshold(curve, 0.3).threshold == 0.0
    assert expected_calibration_error([1.0, 1.0], [True, False]) == pytest.approx(0.5)
