"""The route stage: tier, queue, confidence and human review, decided by a policy file (YAML).

Routing rules change far more often than models (a new queue, a product moved to another team,
a signal that should now escalate), and the people who change them are operations leads, not ML
engineers. So every name and rule lives in a :class:`RoutingPolicy` read from YAML, and this
module only knows the *shape* of a decision (ROUTING_POLICY §3):

1. an escalating signal forces the escalation tier, whatever the ask;
2. otherwise each ask needs a tier (a phrase rule on the ask, else the ask's intent through the
   policy's intent map, else the default ask tier) and the highest wins;
3. a message without asks is matched against the policy's no-ask rules (a closing thank-you or
   an auto-reply; a problem reported without an explicit request); if none matches it gets the
   no-action tier.

The queue comes from the product through the policy's map. Confidence is a raw estimate of how
sure the deciding evidence is, mapped through a calibration fitted on held-out, hand-labelled
messages (:mod:`pipeline.route_calibration`); below the calibrated threshold, and for
unsupported languages, the message goes to human review with its best-guess tier.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.schema import RouteResult, Signal
from pipeline.yamlfile import parse_yaml

POLICY_DIR = Path(__file__).resolve().parent / "policies"
DEFAULT_POLICY = POLICY_DIR / "consumer_finance" / "policy.yaml"
POLICY_FILE = "policy.yaml"


class TierSpec(BaseModel):
    """One tier, in the policy's own words."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Tier name returned in `route.tier`.")
    description: str = Field(default="", description="What kind of message belongs here (for reasons/docs).")


class PhraseRule(BaseModel):
    """A tier that an ask needs when its text contains one of these phrases."""

    model_config = ConfigDict(extra="forbid")

    tier: str = Field(description="Tier the matching ask needs.")
    description: str = Field(description="Plain words used in `reasons` (e.g. 'a fee to refund').")
    phrases: list[str] = Field(
        min_length=1,
        description="Lower-case phrases matched on word boundaries; a trailing * matches any word ending "
        "('investigat*' matches 'investigate', 'investigation').",
    )


class QueueMap(BaseModel):
    """Where each product's messages go."""

    model_config = ConfigDict(extra="forbid")

    by_product: dict[str, str] = Field(description="Product label → queue.")
    unknown_product: str = Field(description="Queue when no product can be told.")
    by_tier: dict[str, str] = Field(
        default_factory=dict,
        description="Tier → queue that overrides the product queue (e.g. the no-action tier to an archive).",
    )


class ReviewPolicy(BaseModel):
    """When a person must look before the route is acted on (ROUTING_POLICY §5)."""

    model_config = ConfigDict(extra="forbid")

    target_error_rate: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Highest tier error rate accepted on automatically routed messages; the calibrated "
        "threshold is chosen on held-out data to meet it.",
    )
    uncalibrated_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Review threshold on the raw confidence when the model folder has no calibration "
        "fitted for this policy.",
    )
    supported_languages: list[str] = Field(
        default_factory=lambda: ["en"], description="ISO 639-1 codes the model reads; others go to review."
    )


class RoutingPolicy(BaseModel):
    """A complete routing policy; validated so that a typo fails at load, not in production."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Policy name, shown in reasons and reports.")
    version: str = Field(description="Policy version; bump it when rules change.")
    description: str = Field(default="", description="Who this policy is for.")
    tiers: list[TierSpec] = Field(min_length=2, description="Tiers from lowest to highest.")
    no_action_tier: str = Field(description="Tier for messages with nothing to act on.")
    default_ask_tier: str = Field(description="Tier an ask needs when no rule or intent says more.")
    escalation_tier: str = Field(description="Tier forced by any escalating signal.")
    escalating_signals: list[str] = Field(description="Signal names that force the escalation tier.")
    quoted_history_escalates: bool = Field(
        default=True,
        description="Whether an escalating signal found only in quoted earlier mail escalates "
        "(an earlier 'this is my third letter' is still true of the case).",
    )
    signals_file: str = Field(default="signals.yaml", description="Signal lexicon, next to this file.")
    catalogue_file: str | None = Field(
        default="catalogue.yaml", description="Product catalogue, next to this file (None: no mentions)."
    )
    products: list[str] = Field(min_length=1, description="Product labels this policy routes.")
    min_product_confidence: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Below this, a catalogue mention may settle the product instead of the classifier.",
    )
    min_intent_confidence: float = Field(
        default=0.5, ge=0, le=1, description="An ask's intent sets its tier only at or above this confidence."
    )
    ask_rules: list[PhraseRule] = Field(
        default_factory=list, description="Phrase rules on an ask's text; the highest matching tier wins."
    )
    intent_tiers: dict[str, list[str]] = Field(
        default_factory=dict, description="Tier → intent labels whose asks need that tier."
    )
    override_rules: list[PhraseRule] = Field(
        default_factory=list,
        description="Phrase rules on the whole body checked before the asks (after escalating signals): "
        "machine text such as auto-replies, whose polite imperatives are not customers' asks.",
    )
    floor_rules: list[PhraseRule] = Field(
        default_factory=list,
        description="Phrase rules on the whole body that set the lowest tier the message can get: a "
        "message that reports a problem needs at least the problem tier, however its ask is phrased.",
    )
    no_ask_rules: list[PhraseRule] = Field(
        default_factory=list,
        description="Phrase rules on the whole message body, used only when no ask was found; the first "
        "rule that matches decides (put closing and auto-reply rules before problem reports).",
    )
    no_ask_long_message_tier: str | None = Field(
        default=None,
        description="Without asks and without a matching no-ask rule, a message of at least "
        "`no_ask_long_message_words` words gets this tier (a long narrative is a complaint, not a "
        "thank-you).",
    )
    no_ask_long_message_words: int = Field(default=40, ge=1, description="See no_ask_long_message_tier.")
    queues: QueueMap
    review: ReviewPolicy = Field(default_factory=ReviewPolicy)

    @model_validator(mode="after")
    def _names_exist(self) -> RoutingPolicy:
        tiers = {t.name for t in self.tiers}
        if len(tiers) != len(self.tiers):
            raise ValueError("tier names must be unique")
        named = {
            "no_action_tier": self.no_action_tier,
            "default_ask_tier": self.default_ask_tier,
            "escalation_tier": self.escalation_tier,
        }
        named.update({f"ask_rules[{i}].tier": r.tier for i, r in enumerate(self.ask_rules)})
        named.update({f"no_ask_rules[{i}].tier": r.tier for i, r in enumerate(self.no_ask_rules)})
        if self.no_ask_long_message_tier is not None:
            named["no_ask_long_message_tier"] = self.no_ask_long_message_tier
        named.update({f"override_rules[{i}].tier": r.tier for i, r in enumerate(self.override_rules)})
        named.update({f"floor_rules[{i}].tier": r.tier for i, r in enumerate(self.floor_rules)})
        named.update({f"intent_tiers.{t}": t for t in self.intent_tiers})
        named.update({f"queues.by_tier.{t}": t for t in self.queues.by_tier})
        for key, tier in named.items():
            if tier not in tiers:
                raise ValueError(f"{key} names tier {tier!r}, which is not in tiers {sorted(tiers)}")
        unknown = sorted(set(self.queues.by_product) - set(self.products))
        if unknown:
            raise ValueError(f"queues.by_product names products not in `products`: {unknown}")
        seen: dict[str, str] = {}
        for tier, intents in self.intent_tiers.items():
            for intent in intents:
                if intent in seen:
                    raise ValueError(f"intent {intent!r} is mapped to both {seen[intent]!r} and {tier!r}")
                seen[intent] = tier
        return self

    def rank(self, tier: str) -> int:
        """Position of a tier from the lowest (0); higher tiers win."""
        return [t.name for t in self.tiers].index(tier)

    @cached_property
    def intent_tier(self) -> dict[str, str]:
        return {intent: tier for tier, intents in self.intent_tiers.items() for intent in intents}


@dataclass(frozen=True)
class PolicyBundle:
    """A policy with the text of the files it came from (saved into model folders, hashed)."""

    policy: RoutingPolicy
    folder: Path
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """Fingerprint of the policy and its lexicons: a calibration is valid only for this value."""
        digest = hashlib.sha256()
        for name in sorted(self.texts):
            digest.update(name.encode() + b"\0" + self.texts[name].encode() + b"\0")
        return digest.hexdigest()


def load_policy(path: Path | str | None = None) -> PolicyBundle:
    """Read a policy YAML and the lexicon files it names; errors name the file and the key."""
    path = Path(path) if path is not None else DEFAULT_POLICY
    if path.is_dir():
        path = path / POLICY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"Cannot read routing policy {path} ({exc.strerror or exc}).",
            fix=f"pass an existing policy YAML (the default is {DEFAULT_POLICY})",
        ) from exc
    try:
        raw = parse_yaml(text) or {}
        policy = RoutingPolicy.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"Routing policy {path} is not valid YAML ({exc}).", fix="fix the YAML syntax"
        ) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"Routing policy {path} is invalid at {where}: {first['msg']}.",
            fix="correct that key; every key is described in pipeline/policy.py",
        ) from exc
    texts = {POLICY_FILE: text}
    for name in (policy.signals_file, policy.catalogue_file):
        if name is None:
            continue
        try:
            texts[name] = (path.parent / name).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"Routing policy {path} names {name}, which cannot be read ({exc.strerror or exc}).",
                fix=f"put {name} next to {path.name}, or change the policy's file names",
            ) from exc
    return PolicyBundle(policy, path.parent, texts)


# =============================================================================== phrase rules


def compile_phrases(phrases: list[str]) -> re.Pattern[str]:
    """One case-insensitive regex for a phrase list; ``word*`` matches any ending of ``word``."""
    parts = []
    for phrase in sorted({p.strip().lower() for p in phrases if p.strip()}, key=len, reverse=True):
        prefix = phrase.endswith("*")
        body = r"\s+".join(re.escape(w) for w in phrase.rstrip("*").split())
        parts.append(body + (r"\w*" if prefix else r"\b"))
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + ")", re.IGNORECASE)


@dataclass(frozen=True)
class AskEvidence:
    """What the router needs to know of one ask (plain values: no tensors leave the encoder)."""

    text: str
    score: float
    intent: str | None = None
    intent_confidence: float | None = None


@dataclass(frozen=True)
class RouteEvidence:
    """Everything the route stage reads, gathered by the pipeline from the earlier stages."""

    asks: list[AskEvidence]
    signals: list[Signal]
    product: str | None
    body: str
    best_sentence_ask_score: float
    language: str | None
    readable: bool = True


@dataclass(frozen=True)
class Decision:
    """A tier with the raw confidence of the evidence that decided it and the reasons in words."""

    tier: str
    raw_confidence: float
    reasons: list[str]
    deciding: str = "nothing"  # which path decided: signal, ask, problem or nothing


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return f"“{text if len(text) <= limit else text[: limit - 1] + '…'}”"


class Router:
    """Applies one policy; holds compiled rules so routing a message costs microseconds."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle
        self.policy = bundle.policy
        self._ask_rules = [(rule, compile_phrases(rule.phrases)) for rule in self.policy.ask_rules]
        self._no_ask_rules = [(rule, compile_phrases(rule.phrases)) for rule in self.policy.no_ask_rules]
        self._override_rules = [(rule, compile_phrases(rule.phrases)) for rule in self.policy.override_rules]
        self._floor_rules = [(rule, compile_phrases(rule.phrases)) for rule in self.policy.floor_rules]
        self._escalating = set(self.policy.escalating_signals)

    def is_escalating(self, signal: Signal) -> bool:
        """Whether this signal forces the escalation tier under this policy."""
        if signal.name not in self._escalating:
            return False
        return self.policy.quoted_history_escalates or not signal.in_quoted_history

    def ask_tier(self, ask: AskEvidence) -> tuple[str, float, str]:
        """The tier one ask needs, how sure that is, and why (in words)."""
        policy = self.policy
        best: tuple[str, float, str] | None = None
        for rule, pattern in self._ask_rules:
            match = pattern.search(ask.text)
            if match and (best is None or policy.rank(rule.tier) > policy.rank(best[0])):
                best = (rule.tier, 0.9, f"{rule.description} (“{match.group(0)}”)")
        if ask.intent is not None and ask.intent_confidence is not None:
            tier = policy.intent_tier.get(ask.intent)
            confident = ask.intent_confidence >= policy.min_intent_confidence
            if tier is not None and confident and (best is None or policy.rank(tier) > policy.rank(best[0])):
                best = (tier, ask.intent_confidence, f"its intent is {ask.intent}")
        if best is None:
            return policy.default_ask_tier, 0.6, "no rule asks for more than the default"
        return best

    def decide(self, evidence: RouteEvidence) -> Decision:
        """The tier, its raw confidence and the reasons, before calibration and review."""
        policy = self.policy
        escalating = sorted((s for s in evidence.signals if self.is_escalating(s)), key=lambda s: -s.score)
        if escalating:
            names = list(dict.fromkeys(s.name for s in escalating))
            top = escalating[0]
            where = " (in quoted earlier mail)" if top.in_quoted_history else ""
            reasons = [
                f"escalating signal {', '.join(names)}: {_quote(top.evidence)}{where} forces "
                f"{policy.escalation_tier}"
            ]
            return Decision(policy.escalation_tier, top.score, reasons, "signal")
        for rule, pattern in self._override_rules:
            match = pattern.search(evidence.body)
            if match:
                reasons = [f"the message is {rule.description} ({_quote(match.group(0))}): {rule.tier}"]
                return Decision(rule.tier, 0.9, reasons, "override")
        decision = self._decide_by_asks(evidence)
        for rule, pattern in self._floor_rules:
            # A closing thank-you that mentions the fixed problem stays closed.
            if decision.tier == policy.no_action_tier or policy.rank(rule.tier) <= policy.rank(decision.tier):
                continue
            match = pattern.search(evidence.body)
            if match:
                reasons = [
                    f"the message reports {rule.description} ({_quote(match.group(0))}), which needs at "
                    f"least {rule.tier}",
                    *decision.reasons,
                ]
                return Decision(rule.tier, 0.75 * max(decision.raw_confidence, 0.5), reasons, "floor")
        return decision

    def _decide_by_asks(self, evidence: RouteEvidence) -> Decision:
        """The tier the asks need or, without asks, what the no-ask rules say."""
        policy = self.policy
        if evidence.asks:
            needs = [(ask, *self.ask_tier(ask)) for ask in evidence.asks]
            ask, tier, sureness, why = max(needs, key=lambda n: (policy.rank(n[1]), n[0].score))
            reasons = [f"the ask {_quote(ask.text)} needs {tier}: {why}"]
            if len(needs) > 1:
                reasons.append(f"highest of {len(needs)} asks decides")
            return Decision(tier, ask.score * sureness, reasons, "ask")
        not_ask = 1.0 - evidence.best_sentence_ask_score
        for rule, pattern in self._no_ask_rules:
            match = pattern.search(evidence.body)
            if match:
                found = _quote(match.group(0))
                reasons = [f"no explicit ask; the message is {rule.description} ({found}): {rule.tier}"]
                return Decision(rule.tier, 0.8 * not_ask, reasons, "no-ask rule")
        words = len(evidence.body.split())
        if policy.no_ask_long_message_tier is not None and words >= policy.no_ask_long_message_words:
            tier = policy.no_ask_long_message_tier
            reasons = [f"no explicit ask, but a {words}-word account of a case: {tier}"]
            return Decision(tier, 0.6 * not_ask, reasons, "long message")
        reasons = [f"no ask and no problem reported: {policy.no_action_tier}"]
        return Decision(policy.no_action_tier, 0.7 * not_ask, reasons, "nothing")

    def queue(self, tier: str, product: str | None) -> tuple[str, str]:
        """The queue for a tier and product, and the words that explain it."""
        queues = self.policy.queues
        if tier in queues.by_tier:
            return queues.by_tier[tier], f"queue {queues.by_tier[tier]} for every {tier} message"
        if product is not None and product in queues.by_product:
            return queues.by_product[product], f"queue {queues.by_product[product]} for product {product}"
        return queues.unknown_product, f"queue {queues.unknown_product}: no product could be told"


def route_result(
    router: Router,
    evidence: RouteEvidence,
    calibrate: CalibrationFn,
    threshold: float,
    calibrated: bool,
) -> RouteResult:
    """Decide, calibrate, and apply the human-review rules of ROUTING_POLICY §5."""
    decision = router.decide(evidence)
    queue, queue_reason = router.queue(decision.tier, evidence.product)
    confidence = round(float(calibrate(decision.raw_confidence)), 4)
    reasons = [*decision.reasons, queue_reason]
    review = False
    supported = router.policy.review.supported_languages
    if not evidence.readable:
        review = True
        reasons.append("the message could not be read: a person should route it")
    if evidence.language is not None and evidence.language not in supported:
        review = True
        reasons.append(
            f"the message is in language {evidence.language!r}, which this model does not read "
            f"(it reads {', '.join(supported)}): a person should route it"
        )
    if confidence < threshold:
        review = True
        kind = "calibrated" if calibrated else "uncalibrated"
        reasons.append(f"confidence {confidence:.2f} is below the {kind} review threshold {threshold:.2f}")
    return RouteResult(
        tier=decision.tier, queue=queue, confidence=confidence, needs_human_review=review, reasons=reasons
    )


class CalibrationFn:
    """Maps a raw route confidence to a calibrated one (identity when none was fitted)."""

    def __init__(self, a: float = 1.0, b: float = 0.0, identity: bool = True) -> None:
        self.a, self.b, self.identity = a, b, identity

    def __call__(self, raw: float) -> float:
        if self.identity:
            return min(max(raw, 0.0), 1.0)
        z = self.a * raw + self.b
        return 1.0 / (1.0 + math.exp(-z)) if z > -30 else 0.0
