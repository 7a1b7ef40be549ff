"""The HTTP contract: request and response bodies, as typed models with examples.

The v1 result itself is ``pipeline.schema.TriageResult``; this module adds only what HTTP needs
around it (a request body with limits, batch items that are a result *or* an error, feedback, health
and the one error shape every non-2xx response uses). These models generate the OpenAPI document, so
helpdesk integrators and the schemathesis fuzz tests read the same contract.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline.schema import Message, Tier, TriageResult

ErrorCode = Literal[
    "unauthorized",
    "forbidden",
    "request_too_large",
    "invalid_request",
    "message_too_long",
    "unreadable_message",
    "batch_too_large",
    "not_found",
    "method_not_allowed",
    "not_ready",
    "overloaded",
    "timeout",
    "decision_log_unavailable",
    "internal_error",
]

_SURROGATE = re.compile(r"[\ud800-\udfff]")
EXAMPLE_TEXT = (
    "Hi, I was charged twice for the same purchase on my credit card last week. I called on Monday and "
    "was told it would be fixed, but it is still there. Can you refund the duplicate charge?"
)


def _valid_unicode(value: str | None, field: str) -> str | None:
    """JSON allows lone surrogates ("\\ud800"); no tokenizer, database or log can store them."""
    if value is not None and (match := _SURROGATE.search(value)):
        raise ValueError(
            f"{field} contains an unpaired UTF-16 surrogate at offset {match.start()}, which is not text; "
            "send the message decoded as UTF-8"
        )
    return value


def _printable_id(value: str | None) -> str | None:
    if value is not None and any(unicodedata.category(c).startswith("C") for c in value):
        raise ValueError(
            "id contains control or unassigned characters; use printable ids such as ticket numbers"
        )
    return value


class MessageIn(BaseModel):
    """One message to route, as the helpdesk sends it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"id": "ticket-48213", "text": EXAMPLE_TEXT, "subject": "Double charge"}]
        },
    )

    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Your id for the message (e.g. the ticket number), echoed in the result and used for "
        "feedback; generated when absent.",
    )
    text: str = Field(description="The message body exactly as received; result spans index this text.")
    subject: str | None = Field(default=None, max_length=2000, description="Subject line or title, if any.")

    @field_validator("text", "subject")
    @classmethod
    def _text_is_unicode(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _valid_unicode(value, info.field_name or "text")

    @field_validator("id")
    @classmethod
    def _id_is_printable(cls, value: str | None) -> str | None:
        return _printable_id(_valid_unicode(value, "id"))

    def to_message(self) -> Message:
        """The pipeline's own input type (an id is generated when the caller sent none)."""
        extra = {"id": self.id} if self.id is not None else {}
        return Message(text=self.text, subject=self.subject, **extra)


class BatchRequest(BaseModel):
    """Many messages routed in one request; each gets its own result or error, in order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"id": "ticket-1", "text": EXAMPLE_TEXT},
                        {"id": "ticket-2", "text": "How do I change the PIN on my debit card?"},
                    ]
                }
            ]
        },
    )

    messages: list[MessageIn] = Field(
        min_length=1, description="The messages; at most the server's max_batch_items (default 64)."
    )


class ErrorDetail(BaseModel):
    """What went wrong, a stable machine-readable code, and what to do about it."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode = Field(description="Stable identifier of the error; safe to branch on.")
    message: str = Field(description="What went wrong, in plain words.")
    fix: str | None = Field(default=None, description="What to do about it.")
    details: list[dict[str, object]] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Per-field problems of an invalid request (location, message); absent otherwise.",
    )


class ErrorResponse(BaseModel):
    """The body of every non-2xx response."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "message_too_long",
                        "message": "The message has 40,000 characters, more than this service's limit "
                        "of 32,000.",
                        "fix": "send only the message body, without attachments or long quoted history",
                    }
                }
            ]
        },
    )

    error: ErrorDetail


class RoutedItem(BaseModel):
    """A batch item that was routed."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = "ok"
    id: str = Field(description="The message id (yours, or the generated one).")
    result: TriageResult


class FailedItem(BaseModel):
    """A batch item that could not be routed (the rest of the batch is unaffected)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["error"] = "error"
    id: str = Field(description="The message id (yours, or the generated one).")
    error: ErrorDetail


BatchItem = Annotated[RoutedItem | FailedItem, Field(discriminator="status")]


class BatchResponse(BaseModel):
    """One item per request message, in the same order."""

    model_config = ConfigDict(extra="forbid")

    model_version: str = Field(description="Version of the model that routed the batch.")
    items: list[BatchItem]


class AskCorrection(BaseModel):
    """A sentence the agent says is the actual ask (offsets index the original message, if given)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=5000, description="The ask as the customer wrote it.")
    start: int | None = Field(default=None, ge=0, description="Start offset in the message text.")
    end: int | None = Field(default=None, ge=0, description="End offset (exclusive) in the message text.")

    @field_validator("text")
    @classmethod
    def _text_is_unicode(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("text contains a NUL character, which no database column can store")
        return _valid_unicode(value, "text") or value

    @model_validator(mode="after")
    def _ordered(self) -> AskCorrection:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end, or neither")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class FeedbackIn(BaseModel):
    """An agent's correction of a routed message: set only the fields that were wrong."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"id": "ticket-48213", "tier": "tier2", "queue": "card-disputes", "agent": "agent-117"},
                {"id": "ticket-48213", "asks": [{"text": "Can you refund the duplicate charge?"}]},
            ]
        },
    )

    id: str = Field(min_length=1, max_length=256, description="The id of a routed message.")
    tier: Tier | None = Field(default=None, description="The tier the message should have gone to.")
    queue: str | None = Field(default=None, min_length=1, max_length=200, description="The right queue.")
    product: str | None = Field(default=None, min_length=1, max_length=200, description="The right product.")
    asks: list[AskCorrection] | None = Field(
        default=None,
        max_length=50,
        description="The actual asks; an empty list means there is nothing to act on.",
    )
    agent: str | None = Field(default=None, max_length=200, description="Who corrected it (an agent id).")
    comment: str | None = Field(
        default=None, max_length=2000, description="Free text; masked like message text before it is stored."
    )

    @field_validator("id", "queue", "product", "agent", "comment")
    @classmethod
    def _fields_are_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError(
                f"{info.field_name} contains a NUL character, which no database column can store"
            )
        return _valid_unicode(value, info.field_name or "a field")

    @field_validator("id")
    @classmethod
    def _id_is_printable(cls, value: str) -> str:
        return _printable_id(value) or value

    @model_validator(mode="after")
    def _corrects_something(self) -> FeedbackIn:
        if self.tier is None and self.queue is None and self.product is None and self.asks is None:
            raise ValueError("feedback must correct at least one of tier, queue, product or asks")
        return self


class FeedbackReceipt(BaseModel):
    """Confirmation that a correction was stored against a routed decision."""

    model_config = ConfigDict(extra="forbid")

    feedback_id: int = Field(description="Id of the stored correction.")
    id: str = Field(description="The message id the correction applies to.")
    decision_model_version: str = Field(description="The model version that made the corrected decision.")
    received_at: datetime = Field(description="When the correction was stored (UTC).")


class Health(BaseModel):
    """Liveness: the process is up and its event loop answers."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: the model is loaded and the decision log is open."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"status": "ready", "model_version": "hearken-default-20250101-1a2b3c4d", "precision": "fp32"}
            ]
        },
    )

    status: Literal["ready", "not_ready"]
    model_version: str | None = Field(default=None, description="Version of the loaded model.")
    precision: str | None = Field(
        default=None, description="Numeric precision the encoder runs in (bf16/fp32)."
    )
