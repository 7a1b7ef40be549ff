"""`hearken serve` as a real server process on loopback: starts, becomes ready, routes, shuts down cleanly."""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from pipeline.cli import app as cli_app
from pipeline.service.auth import API_KEYS_ENV
from pipeline.service.cli import serve

KEY = "server-key-8a3f5c0e7b2d9146"
START_TIMEOUT_S = 180.0  # model load on a busy 2-core machine
TEXT = "Hi, my debit card was charged twice for one purchase. Could you refund the second charge?"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    database: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Server]:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    database = tmp_path / "state" / "decisions.db"
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != API_KEYS_ENV}
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--port",
        str(port),
        "--api-keys-file",
        str(keys),
        "--database-url",
        f"sqlite:///{database}",
        "--max-wait-ms",
        "2",
        "--threads",
        "1",
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    running = Server(process, f"http://127.0.0.1:{port}", log_path, database)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"hearken serve exited with {process.returncode} before it was ready:\n{running.log()}"
                )
            try:
                if httpx.get(f"{running.url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"hearken serve was not ready within {START_TIMEOUT_S:.0f} s:\n{running.log()}")
            time.sleep(0.25)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_real_server_routes_and_shuts_down_cleanly(server: Server, tiny_pipeline) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["model_version"] == tiny_pipeline.model_version

        routed = client.post("/v1/route", json={"id": "live-1", "text": TEXT}, headers=auth)
        assert routed.status_code == 200, routed.text
        assert (
            routed.json()["id"] == "live-1" and routed.json()["model_version"] == tiny_pipeline.model_version
        )

        batch = client.post(
            "/v1/route/batch", json={"messages": [{"text": TEXT}, {"text": ""}]}, headers=auth
        )
        assert [item["status"] for item in batch.json()["items"]] == ["ok", "error"]

        feedback = client.post("/v1/feedback", json={"id": "live-1", "queue": "card-disputes"}, headers=auth)
        assert feedback.status_code == 201

        assert client.post("/v1/route", json={"text": TEXT}).status_code == 401
        assert (
            client.post(
                "/v1/route", json={"text": TEXT}, headers={"Authorization": "Bearer nope"}
            ).status_code
            == 403
        )
        huge = client.post(
            "/v1/route", content=b"x" * 3_000_000, headers={**auth, "Content-Type": "application/json"}
        )
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics").text
        assert 'hearken_http_requests_total{endpoint="/v1/route",method="POST",status="200"} 1.0' in metrics

    assert server.database.is_file()  # created on first use, in a folder that did not exist
    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says "terminated".
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.log()
    assert "Application shutdown complete" in log and "stopped" in log
    assert "Traceback" not in log
    assert KEY not in log


def test_serve_defaults_are_the_settings_defaults() -> None:
    """The CLI repeats the defaults (so --help shows them); they must not drift from ServiceSettings."""
    from pipeline.service.settings import ServiceSettings

    renamed = {"route_timeout": "route_timeout_s", "threads": "inference_threads", "model": "model_dir"}
    fields = ServiceSettings.model_fields
    checked = 0
    for name, parameter in inspect.signature(serve).parameters.items():
        field = renamed.get(name, name)
        if field in fields and not fields[field].is_required() and fields[field].default_factory is None:
            assert parameter.default == fields[field].default, name
            checked += 1
    assert checked >= 12


def test_serve_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--database-url", f"sqlite:///{tmp_path}/d.db"])
    assert result.exit_code == 5
    assert "No API keys" in result.output and "--insecure-no-auth" in result.output


def test_serve_names_a_missing_model_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(API_KEYS_ENV, KEY)
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 4
    assert "No model folder" in result.output


def test_serve_rejects_inconsistent_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, KEY)
    result = CliRunner().invoke(cli_app, ["serve", "--max-batch-items", "500", "--max-queue", "10"])
    assert result.exit_code == 5
    assert "max_batch_items" in result.output
