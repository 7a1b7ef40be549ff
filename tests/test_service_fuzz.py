"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis, in-process ASGI).

Bounded on purpose (a few examples per operation and mode): whatever a generator makes of the
contract, valid (positive) or deliberately invalid (negative), the service answers with a documented
status and body, never a 5xx. The operations are driven with hypothesis directly rather than through
``schemathesis.pytest.from_fixture``, whose lazy loader does not work with the installed pytest 9.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline.service.app import create_app
from pipeline.service.auth import API_KEYS_ENV
from pipeline.service.settings import ServiceSettings

KEY = "fuzz-key-3e9b07c5d1a2f846"
AUTH = {"Authorization": f"Bearer {KEY}"}
OPERATIONS = [
    "POST /v1/route",
    "POST /v1/route/batch",
    "POST /v1/feedback",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
]
STRICT_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(tmp_path: Path, tiny_pipeline, monkeypatch: pytest.MonkeyPatch) -> schemathesis.BaseSchema:
    monkeypatch.setenv(API_KEYS_ENV, KEY)
    settings_ = ServiceSettings(
        database_url=f"sqlite:///{tmp_path}/decisions.db", max_wait_ms=1.0, max_message_chars=2000
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings_, tiny_pipeline))


def _operation(schema: schemathesis.BaseSchema, label: str) -> schemathesis.APIOperation:
    for result in schema.get_all_operations():
        operation = result.ok()
        if f"{operation.method.upper()} {operation.path}" == label:
            return operation
    raise AssertionError(f"{label} is missing from the OpenAPI document")


def test_the_document_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    labels = {f"{r.ok().method.upper()} {r.ok().path}" for r in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_valid_requests_keep_the_contract_and_never_5xx(
    api_schema: schemathesis.BaseSchema, label: str
) -> None:
    operation = _operation(api_schema, label)

    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        case.validate_response(response, checks=STRICT_CHECKS)
        if label.startswith("POST /v1/route"):
            assert response.status_code in (200, 422), response.text  # valid shape: routed, or refused text

    check()


@pytest.mark.parametrize("label", [op for op in OPERATIONS if op.startswith("POST")])
def test_invalid_requests_are_refused_never_5xx(api_schema: schemathesis.BaseSchema, label: str) -> None:
    operation = _operation(api_schema, label)

    @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
    @settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        # (a negative case may only break a header schemathesis made up, and then be routed: 200 is fine)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    check()


@pytest.mark.parametrize("label", OPERATIONS)
def test_requests_without_a_key_are_refused_never_5xx(
    api_schema: schemathesis.BaseSchema, label: str
) -> None:
    operation = _operation(api_schema, label)

    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call()
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
        # schemathesis makes up a bearer token from the security scheme, so a missing or a wrong key
        assert (response.status_code in (401, 403)) == label.startswith("POST /v1/")

    check()
