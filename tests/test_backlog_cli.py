"""``hearken retriage`` as a user runs it: help and exit codes, and a real SIGKILL followed by --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parent.parent
# Runs the CLI and says on stderr, even on exit, whether Ray was imported (it must not be for --engine local).
RUN_CLI = (
    "import sys\nfrom pipeline.cli import app\ntry:\n    app(sys.argv[1:])\n"
    "finally:\n    print('RAY_IMPORTED=' + str('ray' in sys.modules), file=sys.stderr)\n"
)


def test_help_documents_formats_resume_and_exit_codes() -> None:
    result = CliRunner().invoke(app, ["retriage", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for needle in (
        "--resume",
        "--rejects",
        "--report",
        "--engine",
        "--ray-address",
        "--output-format",
        "Exit codes",
    ):
        assert needle in result.output
    assert "7 done, but some rows were rejected" in " ".join(result.output.split())


def test_missing_input_is_exit_6(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["retriage", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl"), "-m", str(tiny_model_dir)],
    )
    assert result.exit_code == 6
    assert "not found" in result.output and "Fix:" in result.output


def _checkpoint(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_sigkill_then_resume_gives_every_row_once_in_order(tmp_path: Path, tiny_model_dir: Path) -> None:
    backlog, out = tmp_path / "backlog.jsonl", tmp_path / "out.jsonl"
    ids = []
    with backlog.open("w") as handle:
        for i in range(3000):
            if i % 500 == 7:
                handle.write(json.dumps({"id": f"bad-{i}", "text": ""}) + "\n")
                handle.write("{not json}\n")
            ids.append(f"t{i:05d}")
            handle.write(
                json.dumps({"id": ids[-1], "text": f"Order {i} never came. Can you send it again?"}) + "\n"
            )
    args = [str(backlog), str(out), "-m", str(tiny_model_dir), "--batch-size", "16", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pipeline.cli", "retriage", *args]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    checkpoint_file = out.with_name(out.name + ".checkpoint.json")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            state = _checkpoint(checkpoint_file)
            if state and state["rows_consumed"] >= 200 and out.stat().st_size > 0:
                break
            time.sleep(0.02)
        assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed_at = _checkpoint(checkpoint_file)
    assert killed_at is not None and not killed_at["complete"] and 0 < killed_at["rows_consumed"] < 3012

    resumed = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "retriage", *args, "--resume"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 7, resumed.stderr  # done, with rejects
    assert "RAY_IMPORTED=False" in resumed.stderr
    assert "resumed after row" in resumed.stderr
    got = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert got == ids  # row by row: nothing lost, nothing twice, input order
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 12 and len({r["line"] for r in rejects}) == 12
    final = _checkpoint(checkpoint_file)
    assert final is not None and final["complete"] and final["tally"]["routed"] == 3000
