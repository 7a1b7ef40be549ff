"""Measure routing on the hand-labelled routing set, and fit the route calibration on its dev split.

Everything goes through ``Pipeline.route_batch``, the path that serves helpdesks, so the numbers
describe what users get. Signals are scored per message and name (did the router see a
``legal_threat`` in this message?), which is what decides the tier; evidence spans are scored
separately (a predicted span of the right name overlapping a labelled one).

Two baselines run on the same messages in the same run, as the issue asks: a keyword list for
the signals (what a helpdesk rule engine typically does), and "tier from the first sentence"
(the agent who reads the first line and assumes the rest: the same pipeline, shown only the
first sentence of the body).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.artifact import attach_files, load_model
from pipeline.basemodel import offline
from pipeline.evaluation import accuracy, per_class_metrics, route_in_batches
from pipeline.policy import PolicyBundle
from pipeline.route_calibration import CALIBRATION_FILE, RouteCalibration, fit_route_calibration
from pipeline.routing_goldset import RoutingGoldMessage, load_routing_goldset
from pipeline.schema import Message, TriageResult
from pipeline.triage import Pipeline, load_model_policy

#: The keyword baseline: one regex per signal, the kind of list a rule engine starts from.
KEYWORD_BASELINE: dict[str, str] = {
    "repeat_failure": r"\bagain\b|third time|second time|\bonce more\b|still not fixed",
    "unanswered_contact": r"no response|no reply|never (?:called|got back|responded)|"
    r"no one (?:called|answered)",
    "bounced_between_agents": r"another agent|different (?:agent|representative|answer)|transferred|"
    r"passed around",
    "public_threat": r"twitter|facebook|instagram|tiktok|social media|review|news|press|reporter|investor",
    "legal_threat": r"lawyer|attorney|lawsuit|\bsue\b|court|legal action",
    "regulator_threat": r"\bcfpb\b|consumer financial protection|attorney general|ombudsman|\bbbb\b|"
    r"better business bureau",
    "manager_request": r"manager|supervisor",
    "charged_not_delivered": r"never (?:received|delivered|arrived)|not delivered|did not receive",
    "long_wait": r"weeks|months",
    "hardship": r"lost my job|unemploy|medical|illness|cannot pay|can't pay|hardship",
    "vulnerable_customer": r"elderly|disabled|scam victim|\bsenior\b|dementia",
}


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float
    support: int

    @classmethod
    def of(cls, tp: int, fp: int, fn: int) -> PRF:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return cls(round(p, 4), round(r, 4), round(f, 4), tp + fn)


def messages_of(gold: Sequence[RoutingGoldMessage]) -> list[Message]:
    return [Message(id=g.id, text=g.text, subject=g.subject) for g in gold]


def route_all(
    pipeline: Pipeline, gold: Sequence[RoutingGoldMessage], batch_size: int = 16
) -> list[TriageResult]:
    """Route every gold message; a message the pipeline refuses is a bug in the set or the pipeline."""
    results: list[TriageResult] = []
    for outcome in route_in_batches(pipeline, messages_of(gold), batch_size):
        if not isinstance(outcome, TriageResult):
            raise RuntimeError(f"a labelled routing message was refused: {outcome}")
        results.append(outcome)
    return results


def tier_metrics(
    gold: Sequence[str], predicted: Sequence[str | None], escalation_tier: str
) -> dict[str, Any]:
    """Accuracy, escalation-tier recall and precision, per-tier scores and the confusion counts."""
    pairs = list(zip(gold, predicted, strict=True))
    per_tier = {
        tier: {
            "precision": round(m.precision, 4),
            "recall": round(m.recall, 4),
            "f1": round(m.f1, 4),
            "support": m.support,
        }
        for tier, m in per_class_metrics(gold, predicted).items()
    }
    escalation = per_tier.get(escalation_tier, PRF(0.0, 0.0, 0.0, 0).__dict__)
    return {
        "n": len(pairs),
        "accuracy": round(accuracy(gold, predicted), 4),
        "escalation_tier": escalation_tier,
        "escalation_recall": escalation["recall"],
        "escalation_precision": escalation["precision"],
        "per_tier": per_tier,
        "confusion": {f"{g} → {p}": n for (g, p), n in sorted(Counter(pairs).items(), key=str)},
    }


def signal_metrics(gold: Sequence[set[str]], predicted: Sequence[set[str]]) -> dict[str, Any]:
    """Micro precision/recall/F1 of (message, signal name) pairs, and the same per signal."""
    names = sorted(set().union(*gold, *predicted)) if gold else []
    per_signal = {}
    total_tp = total_fp = total_fn = 0
    for name in names:
        tp = sum(name in g and name in p for g, p in zip(gold, predicted, strict=True))
        fp = sum(name not in g and name in p for g, p in zip(gold, predicted, strict=True))
        fn = sum(name in g and name not in p for g, p in zip(gold, predicted, strict=True))
        per_signal[name] = PRF.of(tp, fp, fn).__dict__
        total_tp, total_fp, total_fn = total_tp + tp, total_fp + fp, total_fn + fn
    micro = PRF.of(total_tp, total_fp, total_fn)
    return {"micro": micro.__dict__, "per_signal": per_signal}


def span_recall(
    gold_spans: Sequence[Sequence[tuple[str, int, int]]], results: Sequence[TriageResult]
) -> float:
    """Share of labelled signal spans ``(name, start, end)`` overlapped by a predicted signal of the
    same name (per message, in original offsets)."""
    hit = total = 0
    for spans, r in zip(gold_spans, results, strict=True):
        for name, start, end in spans:
            total += 1
            hit += any(s.name == name and s.start < end and start < s.end for s in r.signals)
    return round(hit / total, 4) if total else 0.0


def keyword_signals(text: str) -> set[str]:
    lowered = text.lower()
    return {name for name, pattern in KEYWORD_BASELINE.items() if re.search(pattern, lowered)}


def first_sentence_messages(
    pipeline: Pipeline, gold: Sequence[RoutingGoldMessage]
) -> list[RoutingGoldMessage]:
    """Each message cut to the first sentence of its body (what a hurried agent reads)."""
    cut = []
    for g in gold:
        normalised = pipeline.normaliser.normalise(g.text)
        sentences = pipeline.segmenter.segment(normalised.body.text)
        first = sentences[0].text if sentences else g.text
        cut.append(
            RoutingGoldMessage(
                g.id, g.source, g.row_id, first, g.subject, g.tier, [], [], g.product, g.language, g.kind, ""
            )
        )
    return cut


def evaluate_routing(pipeline: Pipeline, gold: Sequence[RoutingGoldMessage]) -> dict[str, Any]:
    """Tier, signal, review and baseline measures on labelled messages, in one run."""
    policy = pipeline.policy.policy
    results = route_all(pipeline, gold)
    gold_tiers = [g.tier for g in gold]
    gold_signals = [{s.name for s in g.signals} for g in gold]
    tiers = [r.route.tier for r in results]
    automatic = [i for i, r in enumerate(results) if not r.route.needs_human_review]
    baseline_signals = [keyword_signals(g.text) for g in gold]
    first = route_all(pipeline, first_sentence_messages(pipeline, gold))
    languages = [(g.language, r.language) for g, r in zip(gold, results, strict=True)]
    foreign = [i for i, g in enumerate(gold) if g.language not in policy.review.supported_languages]
    return {
        "messages": len(gold),
        "model_version": pipeline.model_version,
        "policy": f"{policy.name} v{policy.version}",
        "calibrated": pipeline.calibrated,
        "review_threshold": pipeline.review_threshold,
        "tier": tier_metrics(gold_tiers, tiers, policy.escalation_tier),
        "signals": {
            **signal_metrics(gold_signals, [{s.name for s in r.signals} for r in results]),
            "span_recall": span_recall(
                [[(s.name, s.start, s.end) for s in g.signals] for g in gold], results
            ),
        },
        "review": {
            "share": round(1 - len(automatic) / max(len(results), 1), 4),
            "tier_accuracy_on_rest": round(
                sum(gold_tiers[i] == tiers[i] for i in automatic) / max(len(automatic), 1), 4
            ),
            "routed_automatically": len(automatic),
            "non_english_sent_to_review": sum(results[i].route.needs_human_review for i in foreign),
            "non_english": len(foreign),
        },
        "language_accuracy": round(sum(g == p for g, p in languages) / max(len(languages), 1), 4),
        "baselines": {
            "keyword_signals": signal_metrics(gold_signals, baseline_signals),
            "first_sentence_tier": tier_metrics(
                gold_tiers, [r.route.tier for r in first], policy.escalation_tier
            ),
        },
        "errors": [
            {
                "id": g.id,
                "kind": g.kind,
                "gold": g.tier,
                "predicted": r.route.tier,
                "gold_signals": sorted({s.name for s in g.signals}),
                "predicted_signals": sorted({s.name for s in r.signals}),
                "reasons": r.route.reasons,
            }
            for g, r in zip(gold, results, strict=True)
            if g.tier != r.route.tier or {s.name for s in g.signals} != {s.name for s in r.signals}
        ],
    }


def calibrate_model(
    folder: Path | str,
    *,
    policy: Path | str | None = None,
    split: str = "dev",
    data_dir: Path | str | None = None,
) -> RouteCalibration:
    """Fit the route calibration on the routing set's ``split`` and save policy + calibration in the model.

    The pipeline is built *without* a calibration, so the confidences it reports are the raw ones
    the calibration maps. Only the dev split may be used for this (the test split reports).
    """
    if split == "test":
        raise ValueError("the test split is for the final number only; calibrate on dev")
    offline()
    model = load_model(folder)
    bundle = load_model_policy(model, policy)
    raw_pipeline = Pipeline.from_model(model, policy=bundle, calibration=None)
    gold = load_routing_goldset(split, data_dir=data_dir)
    results = route_all(raw_pipeline, gold)
    raw = [r.route.confidence or 0.0 for r in results]
    correct = [g.tier == r.route.tier for g, r in zip(gold, results, strict=True)]
    calibration = fit_route_calibration(
        raw,
        correct,
        target_error_rate=bundle.policy.review.target_error_rate,
        policy_sha256=bundle.sha256,
        fitted_on=f"data/routing/{split}.jsonl ({len(gold)} messages)",
    )
    card = _card_with_routing(Path(folder) / "README.md", bundle, calibration)
    attach_files(
        folder,
        {**bundle.texts, CALIBRATION_FILE: calibration.model_dump_json(indent=2) + "\n", "README.md": card},
    )
    return calibration


_CARD_SECTION = "## Routing policy and review threshold"


def _card_with_routing(card_path: Path, bundle: PolicyBundle, calibration: RouteCalibration) -> str:
    """The model card with its routing section replaced (so re-calibrating never stacks sections)."""
    card = card_path.read_text() if card_path.is_file() else "# Hearken model\n"
    card = card.split(_CARD_SECTION)[0].rstrip() + "\n\n"
    policy = bundle.policy
    return card + "\n".join(
        [
            _CARD_SECTION,
            "",
            f"Policy `{policy.name}` version {policy.version} (files `policy.yaml`, `{policy.signals_file}`"
            + (f", `{policy.catalogue_file}`" if policy.catalogue_file else "")
            + f"; sha256 {bundle.sha256[:12]}).",
            f"Route confidence: Platt scaling fitted on {calibration.fitted_on}; tier accuracy there "
            f"{calibration.accuracy:.3f}, ECE {calibration.ece_raw:.3f} raw → "
            f"{calibration.ece_calibrated:.3f} calibrated.",
            f"Human review below confidence {calibration.threshold:.3f}, chosen for a tier error rate of at "
            f"most {calibration.target_error_rate:.0%} on the messages routed automatically: coverage "
            f"{calibration.coverage:.3f}, error {calibration.risk:.3f} on that split.",
            "Re-fit after changing the policy: `hearken calibrate MODEL [--policy FILE]`.",
            "",
        ]
    )
