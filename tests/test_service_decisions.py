"""Decision log and feedback storage: creation, WAL, migrations (including an upgrade from v1), masking."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from pipeline.errors import ConfigError
from pipeline.schema import IntentResult, Message, ProductResult, RouteResult, TriageResult
from pipeline.service import decisions as decisions_module
from pipeline.service.contract import AskCorrection, FeedbackIn
from pipeline.service.decisions import (
    SCHEMA_VERSION,
    DecisionLog,
    Migration,
    UnknownDecisionError,
    current_schema_version,
    migrate,
    open_engine,
)
from pipeline.service.masking import Masker

CARD_TEXT = "My card 4111 1111 1111 1111 was charged twice, write to jo@example.com. Can you refund it?"


def _result(message_id: str, tier: str | None = "tier2") -> TriageResult:
    return TriageResult(
        id=message_id,
        language="en",
        asks=[],
        product=ProductResult(label="credit_card", confidence=0.9),
        intent=IntentResult(label="dispute_charge", confidence=0.8),
        route=RouteResult(tier=tier, queue="card-disputes", confidence=0.7, needs_human_review=False),
        model_version="hearken-test-1",
    )


def _open(tmp_path: Path, *, store_text: bool = False, masker: Masker | None = None) -> DecisionLog:
    url = f"sqlite:///{tmp_path}/nested/folder/decisions.db"
    return DecisionLog(url, masker=masker or Masker(), store_text=store_text)


def test_sqlite_file_is_created_on_first_use_in_wal_mode(tmp_path: Path) -> None:
    log = _open(tmp_path)
    try:
        assert (tmp_path / "nested/folder/decisions.db").is_file()
        assert log.schema_version == SCHEMA_VERSION
        with log.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert current_schema_version(conn) == SCHEMA_VERSION
            versions = conn.exec_driver_sql(
                "SELECT version FROM hearken_schema_version ORDER BY version"
            ).all()
        assert [v for (v,) in versions] == [m.version for m in decisions_module.MIGRATIONS]
    finally:
        log.close()


def test_records_hash_and_fields_but_no_text_by_default(tmp_path: Path) -> None:
    log = _open(tmp_path)
    try:
        log.record([(Message(id="t-1", text=CARD_TEXT), _result("t-1"))])
        [row] = log.decisions_for("t-1")
    finally:
        log.close()
    assert row["text_sha256"] == hashlib.sha256(CARD_TEXT.encode()).hexdigest()
    assert row["model_version"] == "hearken-test-1"
    assert (row["tier"], row["queue"], row["product"], row["intent"]) == (
        "tier2",
        "card-disputes",
        "credit_card",
        "dispute_charge",
    )
    assert row["confidence"] == pytest.approx(0.7)
    assert row["needs_human_review"] is False
    assert row["text"] is None
    assert isinstance(row["routed_at"], datetime)


def test_stored_text_is_masked(tmp_path: Path) -> None:
    log = _open(tmp_path, store_text=True)
    try:
        log.record([(Message(id="t-2", text=CARD_TEXT), _result("t-2"))])
        [row] = log.decisions_for("t-2")
    finally:
        log.close()
    assert "4111" not in row["text"] and "jo@example.com" not in row["text"]
    assert "[card]" in row["text"] and "[email]" in row["text"] and "Can you refund it?" in row["text"]


def test_stored_text_unmasked_only_when_masking_is_off(tmp_path: Path) -> None:
    log = _open(tmp_path, store_text=True, masker=Masker(()))
    try:
        log.record([(Message(id="t-3", text=CARD_TEXT), _result("t-3"))])
        assert log.decisions_for("t-3")[0]["text"] == CARD_TEXT
    finally:
        log.close()


def test_feedback_attaches_to_the_latest_decision_and_is_masked(tmp_path: Path) -> None:
    log = _open(tmp_path)
    try:
        log.record([(Message(id="t-4", text="first"), _result("t-4", tier="tier1"))])
        log.record([(Message(id="t-4", text="second"), _result("t-4", tier="tier2"))])
        latest = log.decisions_for("t-4")[-1]["decision_id"]
        stored = log.record_feedback(
            FeedbackIn(
                id="t-4",
                tier="tier3",
                asks=[AskCorrection(text="refund 4111 1111 1111 1111", start=0, end=26)],
                agent="agent-7",
                comment="customer gave phone +44 20 7946 0958",
            )
        )
        [row] = log.feedback_for("t-4")
    finally:
        log.close()
    assert stored.decision_model_version == "hearken-test-1" and stored.message_id == "t-4"
    assert row["decision_id"] == latest and row["feedback_id"] == stored.feedback_id
    assert row["tier"] == "tier3" and row["queue"] is None and row["agent"] == "agent-7"
    assert json.loads(row["asks"]) == [{"text": "refund [card]", "start": 0, "end": 26}]
    assert row["comment"] == "customer gave phone [phone]"


def test_feedback_for_an_unknown_id_is_refused(tmp_path: Path) -> None:
    log = _open(tmp_path)
    try:
        with pytest.raises(UnknownDecisionError):
            log.record_feedback(FeedbackIn(id="never-routed", queue="general"))
        assert log.feedback_for("never-routed") == []
    finally:
        log.close()


def test_upgrade_from_schema_version_1_keeps_old_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = open_engine(url)
    assert migrate(engine, target=1) == 1
    with engine.begin() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("decisions")}
        assert "intent" not in columns and "needs_human_review" not in columns
        conn.execute(
            text(
                "INSERT INTO decisions (message_id, routed_at, model_version, text_sha256, tier, queue, "
                "product, confidence) "
                "VALUES ('old-1', :at, 'hearken-v0', :sha, 'tier1', 'general', NULL, 0.5)"
            ),
            {"at": datetime(2024, 1, 2, tzinfo=UTC), "sha": "0" * 64},
        )
    engine.dispose()

    log = DecisionLog(url, masker=Masker(), store_text=False)
    try:
        assert log.schema_version == SCHEMA_VERSION == 2
        [old] = log.decisions_for("old-1")
        assert old["model_version"] == "hearken-v0" and old["tier"] == "tier1"
        assert old["intent"] is None and old["needs_human_review"] is None
        with log.engine.connect() as conn:
            indexes = {i["name"] for i in inspect(conn).get_indexes("decisions")}
        assert "ix_decisions_message_id" in indexes
        stored = log.record_feedback(FeedbackIn(id="old-1", tier="tier2"))
        assert stored.decision_model_version == "hearken-v0"
        log.record([(Message(id="new-1", text="hello"), _result("new-1"))])
        assert log.decisions_for("new-1")[0]["intent"] == "dispute_charge"
    finally:
        log.close()


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    _open(tmp_path).close()
    log = _open(tmp_path)
    try:
        with log.engine.connect() as conn:
            assert (
                conn.exec_driver_sql("SELECT count(*) FROM hearken_schema_version").scalar() == SCHEMA_VERSION
            )
    finally:
        log.close()


def test_a_failing_migration_step_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn) -> None:  # type: ignore[no-untyped-def]
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("step failed")

    monkeypatch.setattr(
        decisions_module, "MIGRATIONS", (*decisions_module.MIGRATIONS, Migration(3, "broken step", broken))
    )
    monkeypatch.setattr(decisions_module, "SCHEMA_VERSION", 3)
    engine = open_engine(f"sqlite:///{tmp_path}/atomic.db")
    with pytest.raises(RuntimeError):
        migrate(engine, target=3)
    with engine.connect() as conn:
        assert current_schema_version(conn) == 2
        assert not inspect(conn).has_table("half_done")
    engine.dispose()


def test_a_database_from_a_newer_hearken_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/newer.db"
    _open_log = DecisionLog(url, masker=Masker(), store_text=False)
    with _open_log.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hearken_schema_version (version, description, applied_at) "
                "VALUES (99, 'future', :at)"
            ),
            {"at": datetime.now(UTC)},
        )
    _open_log.close()
    with pytest.raises(ConfigError, match="newer than this Hearken"):
        DecisionLog(url, masker=Masker(), store_text=False)


def test_an_unusable_database_url_names_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="database-url"):
        DecisionLog(f"sqlite:///{blocker}/decisions.db", masker=Masker(), store_text=False)
    with pytest.raises(ConfigError, match="driver"):
        DecisionLog("postgresql+nosuchdriver://user@127.0.0.1:1/db", masker=Masker(), store_text=False)
