"""The ``hearken`` command: input forms, exit codes, and what goes to stdout vs stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def invoke(args: list[str], tiny_model_dir: Path, stdin: bytes | str | None = None):
    return runner.invoke(app, [*args], input=stdin, env={"HEARKEN_MODEL": str(tiny_model_dir)})


def test_route_text_prints_one_v1_result(tiny_model_dir: Path):
    result = invoke(["route", "Where is my new card?", "--id", "t-1"], tiny_model_dir)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema_version"] == "1" and document["id"] == "t-1"
    assert set(document) >= {"asks", "product", "intent", "signals", "route", "model_version", "language"}


def test_route_file_and_stdin_agree(tiny_model_dir: Path, tmp_path: Path):
    text = "I was charged twice. Please refund one charge."
    path = tmp_path / "m.txt"
    path.write_text(text, encoding="utf-8")
    from_file = json.loads(invoke(["route", "--file", str(path), "--id", "x"], tiny_model_dir).stdout)
    from_stdin = json.loads(invoke(["route", "-", "--id", "x"], tiny_model_dir, stdin=text).stdout)
    assert from_file["asks"] == from_stdin["asks"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "empty"),
        (b"   \n ", "empty"),
        (b"caf\xe9 \xfa\xfb not utf8 \xc3\x28", "UTF-8"),
        (b"abc\x00\x00\x00def", "NUL"),
        (b"a" * 1_000_001, "200,000"),
    ],
)
def test_unreadable_input_exits_3_with_a_fix(
    tiny_model_dir: Path, tmp_path: Path, payload: bytes, fragment: str
):
    path = tmp_path / "bad.txt"
    path.write_bytes(payload)
    result = invoke(["route", "--file", str(path)], tiny_model_dir)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert fragment.lower() in result.stderr.lower() and "fix:" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_missing_file_exits_3(tiny_model_dir: Path, tmp_path: Path):
    result = invoke(["route", "--file", str(tmp_path / "nope.txt")], tiny_model_dir)
    assert result.exit_code == 3 and "cannot read" in result.stderr


def test_corrupted_model_exits_4_naming_the_fix(tmp_path: Path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    result = runner.invoke(app, ["route", "hello", "--model", str(folder)])
    assert result.exit_code == 4
    assert "manifest.json" in result.stderr and "hearken train" in result.stderr


def test_retriage_writes_one_result_per_good_row_and_rejects_bad_rows(tiny_model_dir: Path, tmp_path: Path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "1", "text": "Can I raise my card limit?"}),
                "{broken json",
                json.dumps({"id": "2", "text": ""}),
                json.dumps({"text": "no id"}),
                json.dumps({"id": "3", "text": "Please close my savings account."}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = invoke(["retriage", str(source), str(out)], tiny_model_dir)
    assert result.exit_code == 7, result.output
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["1", "3"]
    rejects = [json.loads(line) for line in Path(str(out) + ".rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 3
    assert all(r["reason"] for r in rejects)


def test_real_process_routes_from_stdin(tiny_model_dir: Path):
    env = {**os.environ, "HEARKEN_MODEL": str(tiny_model_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "route", "-", "--compact"],
        input=b"My transfer has not arrived. Where is it?",
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["schema_version"] == "1"
    assert len(done.stdout.decode().strip().splitlines()) == 1
