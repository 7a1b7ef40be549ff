"""The decision log and agents' feedback, in SQLite by default or any SQLAlchemy database.

Every routed message is recorded (id, time, model version, sha256 of the text, tier, queue,
product, intent, confidence, review flag, and the masked text only when configured) so that a
routing can be audited later and an agent's correction can be matched to the exact model decision it
corrects. Those corrections are the training signal for the next model.

Written with SQLAlchemy Core, not an ORM: a handful of tables, plain inserts, and the same code runs
on SQLite (one file, created on first use, in WAL mode so readers never block the writer) and on
PostgreSQL. The schema is versioned: ``hearken_schema_version`` records each applied step and
``migrate`` applies the missing ones in order, each in its own transaction, when the log opens.
A database written by a newer Hearken is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from pipeline.errors import ConfigError
from pipeline.schema import Message, TriageResult
from pipeline.service.contract import FeedbackIn
from pipeline.service.masking import Masker

log = logging.getLogger("pipeline.service")

VERSION_TABLE = "hearken_schema_version"

# ----------------------------------------------------------------------------- the current schema
metadata = MetaData()

schema_version = Table(
    VERSION_TABLE,
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(256), nullable=False),
    Column("routed_at", DateTime(timezone=True), nullable=False),
    Column("model_version", String(200), nullable=False),
    Column("text_sha256", String(64), nullable=False),
    Column("tier", String(16)),
    Column("queue", String(200)),
    Column("product", String(200)),
    Column("confidence", Float),
    Column("text", Text),
    # added in schema version 2
    Column("intent", String(200)),
    Column("needs_human_review", Boolean),
)

feedback = Table(
    "feedback",
    metadata,
    Column("feedback_id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", Integer, ForeignKey("decisions.decision_id"), nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("tier", String(16)),
    Column("queue", String(200)),
    Column("product", String(200)),
    Column("asks", Text, doc="JSON list of {text, start, end}; [] means nothing to act on."),
    Column("agent", String(200)),
    Column("comment", Text),
)


# ----------------------------------------------------------------------------- migrations
def _create_v1(conn: Connection) -> None:
    """Version 1: decisions and feedback, as first shipped (no intent, no review flag)."""
    v1 = MetaData()
    Table(
        "decisions",
        v1,
        Column("decision_id", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(256), nullable=False),
        Column("routed_at", DateTime(timezone=True), nullable=False),
        Column("model_version", String(200), nullable=False),
        Column("text_sha256", String(64), nullable=False),
        Column("tier", String(16)),
        Column("queue", String(200)),
        Column("product", String(200)),
        Column("confidence", Float),
        Column("text", Text),
    )
    Table(
        "feedback",
        v1,
        Column("feedback_id", Integer, primary_key=True, autoincrement=True),
        Column("decision_id", Integer, ForeignKey("decisions.decision_id"), nullable=False),
        Column("message_id", String(256), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Column("tier", String(16)),
        Column("queue", String(200)),
        Column("product", String(200)),
        Column("asks", Text),
        Column("agent", String(200)),
        Column("comment", Text),
    )
    v1.create_all(conn)


def _add_intent_and_review(conn: Connection) -> None:
    """Version 2: intent and needs_human_review per decision; feedback looks decisions up by message id."""
    for name in ("intent", "needs_human_review"):
        column = decisions.c[name]
        column_type = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE decisions ADD COLUMN {name} {column_type}"))
    Index("ix_decisions_message_id", decisions.c.message_id).create(conn)
    Index("ix_feedback_decision_id", feedback.c.decision_id).create(conn)


@dataclass(frozen=True)
class Migration:
    """One ordered schema step; ``apply`` runs inside a transaction with its version row."""

    version: int
    description: str
    apply: Callable[[Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "decisions and feedback tables", _create_v1),
    Migration(2, "decision intent and review flag; lookup indexes", _add_intent_and_review),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def current_schema_version(conn: Connection) -> int:
    """0 for an empty database, else the highest applied step."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return 0
    return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Apply missing steps up to ``target``, each atomically; return the resulting version."""
    with engine.begin() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            schema_version.create(conn)
        version = current_schema_version(conn)
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"The decision log {engine.url.render_as_string(hide_password=True)} has schema version "
            f"{version}, "
            f"newer than this Hearken understands ({SCHEMA_VERSION}).",
            fix="upgrade Hearken to the release that wrote it, or point --database-url at another database",
        )
    for step in MIGRATIONS:
        if version < step.version <= target:
            with engine.begin() as conn:
                step.apply(conn)
                conn.execute(
                    insert(schema_version).values(
                        version=step.version, description=step.description, applied_at=datetime.now(UTC)
                    )
                )
            log.info("decision log migrated to schema version %d (%s)", step.version, step.description)
            version = step.version
    return version


# ----------------------------------------------------------------------------- engine
def _prepare_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout, and transactions that SQLAlchemy (not pysqlite) controls.

    pysqlite does not open a transaction before DDL, which would make a failed migration step
    half-applied; taking over BEGIN (SQLAlchemy's documented recipe) makes every step atomic.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def open_engine(url: str) -> Engine:
    """An engine for ``url``; an SQLite file's folder is created so the first start just works."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        _prepare_sqlite(engine)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def text_sha256(text_value: str) -> str:
    """Hash of the text as received, so a decision can be matched to a ticket without storing it."""
    return hashlib.sha256(text_value.encode("utf-8", "surrogatepass")).hexdigest()


class UnknownDecisionError(LookupError):
    """Feedback names a message id that was never routed (or not logged in this database)."""


@dataclass(frozen=True)
class StoredFeedback:
    """What ``record_feedback`` returns: enough for the API's receipt."""

    feedback_id: int
    message_id: str
    decision_model_version: str
    received_at: datetime


class DecisionLog:
    """Writes decisions and feedback; synchronous, so the app calls it from a worker thread."""

    def __init__(self, url: str, *, masker: Masker, store_text: bool) -> None:
        self.url = url
        self.masker = masker
        self.store_text = store_text
        try:
            self.engine = open_engine(url)
            self.schema_version = migrate(self.engine)
        except (SQLAlchemyError, OSError, ImportError) as exc:
            detail = getattr(exc, "orig", None) or exc
            raise ConfigError(
                f"Cannot open the decision log at {make_url(url).render_as_string(hide_password=True)} "
                f"({type(exc).__name__}: {detail}).",
                fix="check --database-url, that its driver is installed (e.g. psycopg for PostgreSQL), that "
                "the server is reachable and that the folder is writable",
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def record(self, routed: Sequence[tuple[Message, TriageResult]]) -> None:
        """Log routed messages in one transaction (errors are not decisions and are not logged)."""
        if not routed:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "message_id": result.id,
                "routed_at": now,
                "model_version": result.model_version,
                "text_sha256": text_sha256(message.text),
                "tier": result.route.tier,
                "queue": result.route.queue,
                "product": result.product.label,
                "intent": result.intent.label,
                "confidence": result.route.confidence,
                "needs_human_review": result.route.needs_human_review,
                "text": self.masker.mask(message.text) if self.store_text else None,
            }
            for message, result in routed
        ]
        with self.engine.begin() as conn:
            conn.execute(insert(decisions), rows)

    def record_feedback(self, correction: FeedbackIn) -> StoredFeedback:
        """Store a correction against the latest decision for its message id."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            decision = conn.execute(
                select(decisions.c.decision_id, decisions.c.model_version)
                .where(decisions.c.message_id == correction.id)
                .order_by(decisions.c.decision_id.desc())
                .limit(1)
            ).first()
            if decision is None:
                raise UnknownDecisionError(correction.id)
            asks = None
            if correction.asks is not None:
                asks = json.dumps(
                    [{**ask.model_dump(), "text": self.masker.mask(ask.text)} for ask in correction.asks]
                )
            inserted = conn.execute(
                insert(feedback).values(
                    decision_id=decision.decision_id,
                    message_id=correction.id,
                    received_at=now,
                    tier=correction.tier,
                    queue=correction.queue,
                    product=correction.product,
                    asks=asks,
                    agent=correction.agent,
                    comment=self.masker.mask(correction.comment) if correction.comment is not None else None,
                )
            )
            feedback_id = int(inserted.inserted_primary_key[0])
        return StoredFeedback(feedback_id, correction.id, decision.model_version, now)

    def decisions_for(self, message_id: str) -> list[dict[str, Any]]:
        """Every logged decision for a message id, oldest first (for audits and tests)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(decisions)
                .where(decisions.c.message_id == message_id)
                .order_by(decisions.c.decision_id)
            )
            return [dict(row._mapping) for row in rows]

    def feedback_for(self, message_id: str) -> list[dict[str, Any]]:
        """Every stored correction for a message id, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(feedback).where(feedback.c.message_id == message_id).order_by(feedback.c.feedback_id)
            )
            return [dict(row._mapping) for row in rows]
