"""API keys: loading, hashing, 401 vs 403, open health endpoints, the insecure opt-in, and no key in logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.errors import ConfigError
from pipeline.service.app import create_app
from pipeline.service.auth import API_KEYS_ENV, ApiKeys, hash_key, load_access, read_key_env, read_key_file
from pipeline.service.settings import ServiceSettings

FILE_KEY = "file-key-7d2a9c41e8b05f36"
HASHED_KEY = "hashed-key-0b7e4d19a2c6f853"
ENV_KEY = "env-key-5c8f1e3a9d2b7046"
TEXT = "Hello, my card was charged twice. Can you refund it?"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"# helpdesk keys\n\n{FILE_KEY}\n  sha256:{hash_key(HASHED_KEY).upper()}  \n")
    return path


def _settings(tmp_path: Path, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(database_url=f"sqlite:///{tmp_path}/decisions.db", max_wait_ms=1.0, **overrides)


@pytest.fixture
def client(
    tmp_path: Path, key_file: Path, tiny_pipeline, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(API_KEYS_ENV, ENV_KEY)
    with TestClient(create_app(_settings(tmp_path, api_keys_file=key_file), tiny_pipeline)) as test_client:
        yield test_client


# ----------------------------------------------------------------------------- loading keys
def test_key_file_accepts_plain_keys_and_sha256_lines(key_file: Path) -> None:
    hashes = read_key_file(key_file)
    assert hashes == {hash_key(FILE_KEY), hash_key(HASHED_KEY)}


def test_env_and_file_keys_combine(key_file: Path) -> None:
    keys = ApiKeys.load(key_file, {API_KEYS_ENV: f" {ENV_KEY} , ,other-key-19f4b2c7a6e8d035"})
    assert len(keys) == 4
    assert keys.accepts(FILE_KEY) and keys.accepts(HASHED_KEY) and keys.accepts(ENV_KEY)
    assert not keys.accepts("wrong-key-0000000000000000") and not keys.accepts("")


def test_only_hashes_are_kept_in_memory(key_file: Path) -> None:
    keys = ApiKeys.load(key_file, {API_KEYS_ENV: ENV_KEY})
    held = repr(vars(keys))
    assert FILE_KEY not in held and ENV_KEY not in held
    assert hash_key(FILE_KEY) in held


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("sha256:abc123\n", "64 hex digits"),
        ("short-key\n", "shorter than 16"),
        ("two words-in-one-key-line\n", "whitespace"),
    ],
)
def test_bad_key_files_name_the_line_and_the_fix(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# comment\n" + content)
    with pytest.raises(ConfigError, match=problem) as caught:
        read_key_file(path)
    assert "line 2" in str(caught.value) and caught.value.fix
    assert "short-key" not in str(caught.value)  # the error never repeats a key


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the API key file"):
        read_key_file(tmp_path / "absent.txt")


def test_bad_env_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"{API_KEYS_ENV} entry 2"):
        read_key_env(f"{ENV_KEY},tiny")


def test_no_keys_without_the_opt_in_is_refused(
    tmp_path: Path, tiny_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    with pytest.raises(ConfigError, match="No API keys") as caught:
        create_app(_settings(tmp_path), tiny_pipeline)
    assert "--insecure-no-auth" in (caught.value.fix or "")


def test_keys_and_the_insecure_flag_together_are_refused(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="insecure-no-auth"):
        load_access(key_file, insecure_no_auth=True, environ={})


def test_insecure_mode_warns_loudly_and_serves_without_keys(
    tmp_path: Path, tiny_pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="pipeline.service"):
        app = create_app(_settings(tmp_path, insecure_no_auth=True), tiny_pipeline)
    assert "WITHOUT AUTHENTICATION" in caplog.text
    with TestClient(app) as client:
        assert client.post("/v1/route", json={"text": TEXT}).status_code == 200


# ----------------------------------------------------------------------------- requests
@pytest.mark.parametrize("key", [FILE_KEY, HASHED_KEY, ENV_KEY])
def test_every_configured_key_is_accepted(client: TestClient, key: str) -> None:
    assert (
        client.post("/v1/route", json={"text": TEXT}, headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )


def test_scheme_is_case_insensitive(client: TestClient) -> None:
    response = client.post("/v1/route", json={"text": TEXT}, headers={"Authorization": f"bearer {FILE_KEY}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": f"Basic {FILE_KEY}"},
        {"Authorization": FILE_KEY},
        {"Authorization": f"Bearer {FILE_KEY} extra"},
    ],
)
def test_missing_or_malformed_credentials_are_401_with_a_challenge(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.post("/v1/route", json={"text": TEXT}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and "Authorization: Bearer" in error["fix"]


@pytest.mark.parametrize("path", ["/v1/route", "/v1/route/batch", "/v1/feedback"])
def test_unknown_key_is_403_on_every_v1_endpoint(client: TestClient, path: str) -> None:
    response = client.post(path, json={}, headers={"Authorization": "Bearer not-a-real-key-123456"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "WWW-Authenticate" not in response.headers


def test_keys_are_checked_before_the_body_is_read(client: TestClient) -> None:
    """An anonymous caller learns nothing about size limits or the contract."""
    huge = client.post("/v1/route", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
    malformed = client.post("/v1/route", content=b"{", headers={"Content-Type": "application/json"})
    assert huge.status_code == 401 and malformed.status_code == 401


def test_health_and_metrics_are_open_by_default(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_metrics_can_require_a_key(
    tmp_path: Path, key_file: Path, tiny_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    settings = _settings(tmp_path, api_keys_file=key_file, protect_metrics=True)
    with TestClient(create_app(settings, tiny_pipeline)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {FILE_KEY}"}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").json()["paths"]["/metrics"]["get"]["security"] == [{"ApiKey": []}]


def test_no_key_appears_in_any_log_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/route", json={"text": TEXT}, headers={"Authorization": f"Bearer {FILE_KEY}"})
        client.post(
            "/v1/route", json={"text": TEXT}, headers={"Authorization": "Bearer guessed-key-1234567890"}
        )
        client.post("/v1/route", json={"text": TEXT}, headers={"Authorization": f"Basic {ENV_KEY}"})
        logging.getLogger("pipeline.service").warning("debugging header Authorization: Bearer %s", HASHED_KEY)
    assert caplog.records  # something was logged, so the check below means something
    for secret in (FILE_KEY, ENV_KEY, HASHED_KEY, "guessed-key-1234567890"):
        assert secret not in caplog.text
