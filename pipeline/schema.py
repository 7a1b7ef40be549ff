"""The typed contract: a ``Message`` goes in, a ``TriageResult`` comes out.

``TriageResult`` is the v1 result document of ROUTING_POLICY §6. Field names are a public
contract with helpdesk integrations: new fields may be added, existing ones are never
renamed. Every character span indexes the original message text *as received*, so an
integration can highlight the evidence in the ticket it already has.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION: Literal["1"] = "1"

#: A tier name. The default policy's tiers are none, tier1, tier2 and tier3 (ROUTING_POLICY §3);
#: another company's policy names its own, so the type is a string checked against the policy.
Tier = str


class Message(BaseModel):
    """One incoming customer message (email body, web form, social post or chat)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Caller's id, echoed back.")
    text: str = Field(description="The message body exactly as received; spans in the result index it.")
    subject: str | None = Field(default=None, description="Optional subject line or title.")


class Span(BaseModel):
    """A piece of the original text, by character offsets (start inclusive, end exclusive)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end < self.start:
            raise ValueError(f"span end {self.end} is before start {self.start}")
        return self


class Ask(Span):
    """A sentence in which the customer asks a question or requests an action."""

    score: float = Field(ge=0.0, le=1.0, description="Probability that this sentence is an ask.")


class Mention(Span):
    """A product named in the text (catalogue match)."""

    product_id: str | None = Field(default=None, description="Catalogue product id the mention matched.")


class ProductResult(BaseModel):
    """Which product the message concerns. ``label`` is null when it cannot be told."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    mentions: list[Mention] = Field(default_factory=list)
    reason: str | None = Field(default=None, description="Why the label is null, when it is.")


class IntentResult(BaseModel):
    """What the customer wants done, read from the asks. ``label`` is null when it cannot be told."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    reason: str | None = Field(default=None, description="Why the label is null, when it is.")
    out_of_scope: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=(
            "How unlike every known intent the asks are: the share of held-out in-scope utterances "
            "that lie nearer to an intent (0.99: farther than 99% of them). Null when the model has "
            "no out-of-scope detector."
        ),
    )


class Signal(Span):
    """An escalation or context signal with its evidence (ROUTING_POLICY §4)."""

    name: str
    evidence: str = Field(description="The evidence text (equal to ``text``; kept under the v1 name).")
    score: float = Field(ge=0.0, le=1.0)
    escalating: bool = Field(default=False, description="Whether this signal forces the top tier.")
    in_quoted_history: bool = Field(default=False, description="Stated in quoted earlier mail.")


class RouteResult(BaseModel):
    """Where the message goes, how sure the router is, and why."""

    model_config = ConfigDict(extra="forbid")

    tier: Tier | None = Field(
        default=None,
        description="One of the routing policy's tiers (default: none, tier1, tier2, tier3); the best guess "
        "also when `needs_human_review` is true.",
    )
    queue: str | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    needs_human_review: bool = False
    reasons: list[str] = Field(default_factory=list)


class Section(BaseModel):
    """A region the normaliser set aside (quoted history, signature, header), by original offsets."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["quoted_history", "signature", "header"]
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class TriageResult(BaseModel):
    """The v1 result of routing one message (ROUTING_POLICY §6), plus extra fields."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1"] = SCHEMA_VERSION
    id: str
    language: str | None = Field(description="ISO 639-1 code of the message language, when known.")
    asks: list[Ask] = Field(description="Asks ordered by score, best first; empty when nothing to act on.")
    product: ProductResult
    intent: IntentResult
    signals: list[Signal] = Field(default_factory=list)
    route: RouteResult
    model_version: str
    sections: list[Section] = Field(
        default_factory=list, description="Quoted history, signatures and headers set aside before reading."
    )
    warnings: list[str] = Field(default_factory=list, description="Things the caller should know.")
