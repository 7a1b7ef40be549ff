"""Every endpoint and every error of the HTTP service, through the test client with the tiny model."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from pipeline.errors import ConfigError, HearkenError
from pipeline.schema import Message, TriageResult
from pipeline.service.app import create_app
from pipeline.service.auth import API_KEYS_ENV
from pipeline.service.settings import ServiceSettings

KEY = "test-key-4f1c9a7e2b6d8053"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = (
    "Hello, I was charged twice for the same purchase on my credit card 4111 1111 1111 1111 last week. "
    "I called on Monday and nothing happened. Can you refund the duplicate charge?"
)


def _settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path}/decisions.db", "max_wait_ms": 1.0}
    return ServiceSettings(**(values | overrides))


@pytest.fixture
def keyed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, KEY)


@pytest.fixture
def client(tmp_path: Path, tiny_pipeline, keyed_env: None) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path), tiny_pipeline)) as test_client:
        yield test_client


def _decision_log(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.runtime.decision_log  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- POST /v1/route
def test_route_returns_the_v1_result_and_logs_the_decision(client: TestClient, tiny_pipeline) -> None:
    response = client.post(
        "/v1/route", json={"id": "ticket-1", "text": TEXT, "subject": "Double charge"}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result = TriageResult.model_validate(response.json())
    assert result.id == "ticket-1" and result.schema_version == "1"
    assert result.model_version == tiny_pipeline.model_version
    assert result == tiny_pipeline.route(Message(id="ticket-1", text=TEXT))  # the same path as in-process
    [row] = _decision_log(client).decisions_for("ticket-1")
    assert row["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert row["model_version"] == tiny_pipeline.model_version
    assert row["needs_human_review"] == result.route.needs_human_review
    assert row["text"] is None


def _server_timing(response) -> dict[str, float]:  # type: ignore[no-untyped-def]
    parts = {}
    for entry in response.headers["server-timing"].split(","):
        name, _, duration = entry.strip().partition(";dur=")
        parts[name] = float(duration)
    return parts


def test_route_and_batch_say_where_the_time_went_in_server_timing(client: TestClient) -> None:
    single = client.post("/v1/route", json={"text": TEXT}, headers=AUTH)
    batch = client.post("/v1/route/batch", json={"messages": [{"text": TEXT}, {"text": ""}]}, headers=AUTH)
    for response in (single, batch):
        assert response.status_code == 200, response.text
        parts = _server_timing(response)
        assert list(parts) == ["route", "log"]
        assert all(ms >= 0.0 for ms in parts.values())
    refused = client.post("/v1/route", json={"text": ""}, headers=AUTH)
    assert refused.status_code == 422 and "server-timing" not in refused.headers


def _bench_service_module() -> Any:
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_service.py"
    spec = importlib.util.spec_from_file_location("bench_service", script)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_reads_the_server_timing_header() -> None:
    parse_server_timing = _bench_service_module().parse_server_timing
    assert parse_server_timing("route;dur=25.10, log;dur=0.71") == {"route": 25.1, "log": 0.71}
    assert parse_server_timing('cache;desc="hit", db;dur=x, app;dur=3') == {"app": 3.0}
    assert parse_server_timing("") == {}


def test_bench_judges_memory_by_its_peak_under_load_within_each_phase() -> None:
    bench = _bench_service_module()

    def phase(concurrency: int, rss: list[float]) -> dict[str, Any]:
        samples = [(1000 * (i + 1), v) for i, v in enumerate(rss)]
        return {"concurrency": concurrency, "rss_samples_mb": samples}

    # A larger working set at concurrency 8 (a step between phases), and readings that dip after a
    # heap trim and come back, are not growth ...
    stepped = [phase(1, [742.4, 733.1, 742.6, 742.6]), phase(8, [755.4, 792.5, 807.4, 795.4])]
    assert bench.phase_drift_mb(stepped) == {1: 0.2, 8: 14.9}
    assert bench.memory_is_flat(stepped)
    # ... a peak that keeps climbing with the requests served is.
    leaking = [phase(1, [742.4, 733.1, 742.6, 742.6]), phase(8, [700.0, 720.0, 760.0, 790.0])]
    assert bench.phase_drift_mb(leaking)[8] == 70.0
    assert not bench.memory_is_flat(leaking)
    # A phase too short to be sampled twice shows nothing, so it cannot pass.
    short = [phase(1, [721.9])]
    assert bench.phase_drift_mb(short) == {}
    assert not bench.memory_is_flat(short)
    assert not bench.memory_is_flat([])


def test_route_generates_an_id_when_none_is_sent(client: TestClient) -> None:
    response = client.post("/v1/route", json={"text": "Please close my savings account."}, headers=AUTH)
    assert response.status_code == 200
    generated = response.json()["id"]
    assert len(generated) == 32 and _decision_log(client).decisions_for(generated)


def test_route_stores_masked_text_when_configured(tmp_path: Path, tiny_pipeline, keyed_env: None) -> None:
    with TestClient(create_app(_settings(tmp_path, store_text=True), tiny_pipeline)) as client:
        assert client.post("/v1/route", json={"id": "m-1", "text": TEXT}, headers=AUTH).status_code == 200
        stored = _decision_log(client).decisions_for("m-1")[0]["text"]
    assert "4111" not in stored and "[card]" in stored and "Can you refund" in stored


def test_unreadable_message_is_422_with_the_pipeline_fix(client: TestClient) -> None:
    response = client.post("/v1/route", json={"id": "e-1", "text": "  \n "}, headers=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unreadable_message" and "empty" in error["message"] and error["fix"]
    assert _decision_log(client).decisions_for("e-1") == []  # errors are not decisions


def test_too_long_message_is_422_naming_the_limit(tmp_path: Path, tiny_pipeline, keyed_env: None) -> None:
    with TestClient(create_app(_settings(tmp_path, max_message_chars=100), tiny_pipeline)) as client:
        response = client.post("/v1/route", json={"text": "x" * 101}, headers=AUTH)
        assert (
            client.post("/v1/route", json={"text": "Refund me please " * 5}, headers=AUTH).status_code == 200
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "message_too_long"
    assert "101 characters" in error["message"] and "limit of 100" in error["message"] and error["fix"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"id": "x"}, "body.text"),
        ({"text": "hi", "priority": "high"}, "body.priority"),
        ({"text": 42}, "body.text"),
        ({"text": "hi", "id": ""}, "body.id"),
        ({"text": "hi", "id": "a\x00b"}, "body.id"),
    ],
)
def test_invalid_bodies_are_422_with_details(client: TestClient, body: dict[str, Any], location: str) -> None:
    response = client.post("/v1/route", json=body, headers=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["fix"]
    assert location in [d["location"] for d in error["details"]]


def test_lone_surrogates_are_422_not_a_crash(client: TestClient) -> None:
    """JSON may escape a lone surrogate; no tokenizer or database can take it."""
    response = client.post(
        "/v1/route",
        content=b'{"text": "bad \\ud800 text"}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "surrogate" in response.json()["error"]["message"]


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/route", content=b'{"text": "unterminated', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_body_that_is_not_utf8_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/route", content=b'{"text": "\xff\xfe"}', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_request_over_the_byte_limit_is_413_before_parsing(
    tmp_path: Path, tiny_pipeline, keyed_env: None
) -> None:
    with TestClient(create_app(_settings(tmp_path, max_request_bytes=2048), tiny_pipeline)) as client:
        declared = client.post("/v1/route", json={"text": "a" * 3000}, headers=AUTH)
        # No Content-Length (chunked upload): counted while it arrives. Invalid JSON proves nothing parsed it.
        chunked = client.post("/v1/route", content=iter([b"{" * 1500, b"x" * 1500]), headers=AUTH)
        small = client.post("/v1/route", json={"text": "Refund the double charge please."}, headers=AUTH)
    assert declared.status_code == 413 and chunked.status_code == 413
    assert (
        declared.json()["error"]["code"] == "request_too_large"
        and "2,048 bytes" in declared.json()["error"]["message"]
    )
    assert small.status_code == 200


# ----------------------------------------------------------------------------- POST /v1/route/batch
def test_batch_returns_one_item_per_message_in_order(tmp_path: Path, tiny_pipeline, keyed_env: None) -> None:
    messages = [
        {"id": "b-1", "text": TEXT},
        {"id": "b-2", "text": "   "},
        {"id": "b-3", "text": "y" * 300},
        {"text": "How do I change my PIN?"},
    ]
    with TestClient(create_app(_settings(tmp_path, max_message_chars=200), tiny_pipeline)) as client:
        response = client.post("/v1/route/batch", json={"messages": messages}, headers=AUTH)
        log = _decision_log(client)
        assert response.status_code == 200, response.text
        body = response.json()
        assert log.decisions_for("b-1") and not log.decisions_for("b-2") and not log.decisions_for("b-3")
    assert body["model_version"] == tiny_pipeline.model_version
    items = body["items"]
    assert [i["status"] for i in items] == ["ok", "error", "error", "ok"]
    assert [i["id"] for i in items[:3]] == ["b-1", "b-2", "b-3"]
    assert TriageResult.model_validate(items[0]["result"]).id == "b-1"
    assert items[1]["error"]["code"] == "unreadable_message"
    assert items[2]["error"]["code"] == "message_too_long"
    assert items[3]["result"]["id"] == items[3]["id"]


def test_batch_over_the_item_limit_is_422(tmp_path: Path, tiny_pipeline, keyed_env: None) -> None:
    with TestClient(create_app(_settings(tmp_path, max_batch_items=3), tiny_pipeline)) as client:
        response = client.post("/v1/route/batch", json={"messages": [{"text": "hi"}] * 4}, headers=AUTH)
    assert response.status_code == 422
    assert (
        response.json()["error"]["code"] == "batch_too_large"
        and "limit of 3" in response.json()["error"]["message"]
    )


def test_empty_batch_is_422(client: TestClient) -> None:
    response = client.post("/v1/route/batch", json={"messages": []}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


# ----------------------------------------------------------------------------- POST /v1/feedback
def test_feedback_is_stored_against_the_routed_decision(client: TestClient) -> None:
    assert client.post("/v1/route", json={"id": "f-1", "text": TEXT}, headers=AUTH).status_code == 200
    correction = {
        "id": "f-1",
        "tier": "tier2",
        "queue": "card-disputes",
        "product": "credit_card",
        "asks": [{"text": "Can you refund the duplicate charge?", "start": 156, "end": 192}],
        "agent": "agent-17",
        "comment": "customer wrote from jo@example.com",
    }
    response = client.post("/v1/feedback", json=correction, headers=AUTH)
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["id"] == "f-1" and receipt["feedback_id"] >= 1 and receipt["decision_model_version"]
    [row] = _decision_log(client).feedback_for("f-1")
    assert (row["tier"], row["queue"], row["product"], row["agent"]) == (
        "tier2",
        "card-disputes",
        "credit_card",
        "agent-17",
    )
    assert row["comment"] == "customer wrote from [email]"


def test_feedback_for_an_unknown_id_is_404(client: TestClient) -> None:
    response = client.post("/v1/feedback", json={"id": "never-routed", "tier": "tier1"}, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found" and response.json()["error"]["fix"]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "f-2"},  # corrects nothing
        {"id": "f-2", "tier": "tier9"},
        {"id": "f-2", "asks": [{"text": "x", "start": 5}]},
        {"id": "f-2", "queue": "a\x00b"},
    ],
)
def test_invalid_feedback_is_422(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/feedback", json=body, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


# ----------------------------------------------------------------------------- operations endpoints
def test_health_and_readiness_are_open(client: TestClient, tiny_pipeline) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model_version": tiny_pipeline.model_version,
        "precision": tiny_pipeline.precision,
    }


def test_not_ready_before_start_up(tmp_path: Path, tiny_pipeline, keyed_env: None) -> None:
    client = TestClient(
        create_app(_settings(tmp_path, retry_after_s=7), tiny_pipeline)
    )  # lifespan not started
    ready = client.get("/readyz")
    routed = client.post("/v1/route", json={"text": "hi"}, headers=AUTH)
    assert (
        ready.status_code == 503
        and ready.json()["status"] == "not_ready"
        and ready.headers["Retry-After"] == "7"
    )
    assert routed.status_code == 503 and routed.json()["error"]["code"] == "not_ready"
    assert routed.headers["Retry-After"] == "7"
    assert client.get("/healthz").status_code == 200


def test_lifespan_loads_the_model_folder_when_no_pipeline_is_given(
    tmp_path: Path, tiny_model_dir: Path, tiny_pipeline, keyed_env: None
) -> None:
    with TestClient(create_app(_settings(tmp_path, model_dir=tiny_model_dir))) as client:
        assert client.get("/readyz").json()["model_version"] == tiny_pipeline.model_version
        assert client.post("/v1/route", json={"text": TEXT}, headers=AUTH).status_code == 200


def test_an_unusable_decision_log_stops_start_up_with_the_fix(
    tmp_path: Path, tiny_pipeline, keyed_env: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    app = create_app(_settings(tmp_path, database_url=f"sqlite:///{blocker}/decisions.db"), tiny_pipeline)
    with pytest.raises(ConfigError, match="database-url"), TestClient(app):
        pass


def test_metrics_count_requests_messages_batches_and_tiers(client: TestClient) -> None:
    client.post("/v1/route", json={"text": TEXT}, headers=AUTH)
    client.post("/v1/route/batch", json={"messages": [{"text": TEXT}, {"text": " "}]}, headers=AUTH)
    client.post("/v1/route", json={"text": TEXT})  # 401
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    metrics = response.text
    assert 'hearken_http_requests_total{endpoint="/v1/route",method="POST",status="200"} 1.0' in metrics
    assert 'hearken_http_requests_total{endpoint="/v1/route",method="POST",status="401"} 1.0' in metrics
    assert 'hearken_http_requests_total{endpoint="/v1/route/batch",method="POST",status="200"} 1.0' in metrics
    assert 'hearken_http_request_duration_seconds_count{endpoint="/v1/route",status="200"} 1.0' in metrics
    assert 'hearken_messages_routed_total{outcome="ok"} 2.0' in metrics
    assert 'hearken_messages_routed_total{outcome="error"} 1.0' in metrics
    assert (
        "hearken_request_batch_size_count 1.0" in metrics and "hearken_request_batch_size_sum 2.0" in metrics
    )
    assert "hearken_pipeline_batch_size_count" in metrics
    tiers = re.findall(r'hearken_routed_tier_total\{tier="([^"]+)"\} ([0-9.]+)', metrics)
    assert sum(float(count) for _, count in tiers) == 2.0 and all(
        t in {"none", "tier1", "tier2", "tier3"} for t, _ in tiers
    )
    assert "hearken_model_info{" in metrics


def test_unknown_paths_and_methods_use_the_error_shape(client: TestClient) -> None:
    missing = client.get("/v2/route")
    wrong_method = client.get("/v1/route", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]
    assert 'endpoint="unmatched"' in client.get("/metrics").text


def test_openapi_document_is_typed_with_examples_and_security(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    assert {"/v1/route", "/v1/route/batch", "/v1/feedback", "/healthz", "/readyz", "/metrics"} <= set(paths)
    route = paths["/v1/route"]["post"]
    assert route["security"] == [{"ApiKey": []}]
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/TriageResult"
    )
    for status in ("401", "403", "413", "422", "503", "504"):
        assert route["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse"
        )
    assert "404" in paths["/v1/feedback"]["post"]["responses"]
    schemas = document["components"]["schemas"]
    assert schemas["MessageIn"]["examples"] and schemas["FeedbackIn"]["examples"]
    assert "security" not in paths["/healthz"]["get"] and "security" not in paths["/metrics"]["get"]


# ----------------------------------------------------------------------------- timeouts and failures
class _SlowPipeline:
    """The tiny pipeline, made slow (or broken) on purpose."""

    def __init__(self, inner, delay_s: float = 0.0, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.delay_s = delay_s
        self.fail = fail
        self.model_version = inner.model_version
        self.precision = inner.precision

    def route_batch(self, messages: Sequence[Message]) -> list[TriageResult | HearkenError]:
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        return self.inner.route_batch(messages)


def test_routing_timeout_is_504_with_retry_after(tmp_path: Path, tiny_pipeline, keyed_env: None) -> None:
    settings = _settings(tmp_path, route_timeout_s=0.2, retry_after_s=3)
    with TestClient(create_app(settings, _SlowPipeline(tiny_pipeline, delay_s=1.0))) as client:  # type: ignore[arg-type]
        response = client.post("/v1/route", json={"text": TEXT}, headers=AUTH)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout" and response.headers["Retry-After"] == "3"


def test_a_pipeline_crash_is_a_500_error_object_not_a_traceback(
    tmp_path: Path, tiny_pipeline, keyed_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(_settings(tmp_path), _SlowPipeline(tiny_pipeline, fail=True))) as client:  # type: ignore[arg-type]
        response = client.post("/v1/route", json={"text": TEXT}, headers=AUTH)
        assert client.get("/healthz").status_code == 200
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "pipeline failed" in caplog.text


def test_decision_log_failure_is_503_and_returns_no_unlogged_result(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_routed: object) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(_decision_log(client), "record", broken)
    response = client.post("/v1/route", json={"text": TEXT}, headers=AUTH)
    assert response.status_code == 503 and response.json()["error"]["code"] == "decision_log_unavailable"
    assert "Retry-After" in response.headers


def test_model_is_loaded_on_the_thread_that_routes(
    tmp_path: Path, tiny_model_dir: Path, keyed_env: None
) -> None:
    """The service builds the pipeline on its inference thread and routes on that same thread.

    Routing on another thread than the loading one measured about 1.6x slower per message.
    """
    import threading

    from pipeline.triage import Pipeline

    threads: dict[str, str] = {}
    original_route_batch = Pipeline.route_batch

    def recording_route_batch(self, messages):  # type: ignore[no-untyped-def]
        threads["route"] = threading.current_thread().name
        return original_route_batch(self, messages)

    original_from_folder = Pipeline.from_folder.__func__  # type: ignore[attr-defined]

    def recording_from_folder(cls, folder=None, policy=None):  # type: ignore[no-untyped-def]
        threads["load"] = threading.current_thread().name
        return original_from_folder(cls, folder, policy)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pipeline, "route_batch", recording_route_batch)
        patch.setattr(Pipeline, "from_folder", classmethod(recording_from_folder))
        with TestClient(create_app(_settings(tmp_path, model_dir=tiny_model_dir))) as client:
            response = client.post("/v1/route", json={"text": "Please close my account."}, headers=AUTH)
    assert response.status_code == 200
    assert threads["load"] == threads["route"]
    assert threads["load"].startswith("hearken-inference")
