"""Service configuration: one validated object that the CLI, the app factory and the tests share.

Every limit the service enforces lives here with its reason, so an operator can read one place to
learn what a helpdesk may send and how the service protects itself. Unknown keys are rejected so a
typo in a deployment file fails at start-up instead of silently keeping a default.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pipeline.service.masking import ALL_PII_KINDS, PiiKind

DATABASE_URL_ENV = "HEARKEN_DATABASE_URL"
DEFAULT_DATABASE_FILE = "hearken-decisions.db"


def default_database_url() -> str:
    """``$HEARKEN_DATABASE_URL``, else an SQLite file in the working directory (created on first use)."""
    return os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{DEFAULT_DATABASE_FILE}"


class ServiceSettings(BaseModel):
    """Everything ``create_app`` needs besides the pipeline itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: Path | None = Field(
        default=None,
        description="Model folder to serve; None means $HEARKEN_MODEL or the committed default model.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Interface to bind; loopback by default so nothing is exposed until an operator says so.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port to bind (0 picks a free one).")
    api_keys_file: Path | None = Field(
        default=None,
        description="File with one API key per line, or `sha256:HEX` lines so the file need not hold "
        "secrets.",
    )
    insecure_no_auth: bool = Field(
        default=False,
        description="Serve without API keys. Only for a laptop or a sealed test network; logged loudly.",
    )
    protect_metrics: bool = Field(
        default=False,
        description="Require an API key for /metrics too (it holds counts only, never message text).",
    )
    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy URL of the decision log; an SQLite file by default, PostgreSQL for a "
        "shared server.",
    )
    store_text: bool = Field(
        default=False,
        description="Keep message text in the decision log (masked unless masking is off); off by default "
        "because a hash is enough to match feedback to a decision.",
    )
    mask: tuple[PiiKind, ...] = Field(
        default=ALL_PII_KINDS,
        description="Kinds of personal data masked in logs and stored text; empty turns masking off.",
    )
    max_request_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body accepted (413 beyond), checked before any parsing.",
    )
    max_message_chars: int = Field(
        default=32_000,
        ge=1,
        description="Longest message text accepted (422 beyond): a ticket body, not a mailbox export.",
    )
    max_batch_items: int = Field(
        default=64, ge=1, description="Most messages one /v1/route/batch request may carry (422 beyond)."
    )
    max_batch: int = Field(
        default=16,
        ge=1,
        description="Most messages the micro-batcher puts into one pipeline call, whichever requests they "
        "came from.",
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="How long the micro-batcher waits for company after the first message of a batch "
        "arrives. 0 (the default) sends whatever is waiting as soon as the inference thread is free: "
        "under load, messages that arrive during a pass form the next batch anyway, and a wait would only "
        "be added to every request's latency when traffic is light.",
    )
    max_queue: int = Field(
        default=1024,
        ge=1,
        description="Most messages waiting to be routed; beyond it requests get 503 with Retry-After "
        "instead of queueing into a timeout.",
    )
    route_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        description="Longest a request waits for its results (queueing plus inference) before 504.",
    )
    retry_after_s: int = Field(
        default=2, ge=1, description="Seconds suggested in Retry-After on 503 and 504 responses."
    )
    trim_memory_interval_s: float = Field(
        default=30.0,
        ge=0.0,
        description="Give memory the encoder has freed back to the operating system at most this often "
        "(glibc malloc_trim, about 5 ms on the inference thread); 0 never does. Keeps resident memory near "
        "what is in use, which is what container limits see.",
    )
    inference_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads for the inference worker; None keeps the pipeline's setting.",
    )

    @field_validator("database_url")
    @classmethod
    def _parseable_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(
                f"{value!r} is not a database URL; use e.g. sqlite:///path/to/decisions.db or "
                "postgresql+psycopg://user@host/db"
            ) from exc
        return value

    @field_validator("mask")
    @classmethod
    def _unique_kinds(cls, value: tuple[PiiKind, ...]) -> tuple[PiiKind, ...]:
        return tuple(kind for kind in ALL_PII_KINDS if kind in value)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> ServiceSettings:
        if self.max_batch_items > self.max_queue:
            raise ValueError(
                f"max_batch_items ({self.max_batch_items}) exceeds max_queue ({self.max_queue}), so a full "
                "batch request could never be accepted; raise max_queue or lower max_batch_items"
            )
        return self
