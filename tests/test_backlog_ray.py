"""``--engine ray`` against a local Ray instance: same results and rejects as the local engine, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.backlog import Checkpoint, RetriageOptions, checkpoint_path, run_retriage

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

from tests.test_backlog_run import CrashingPipeline, write_backlog  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_engine_matches_local_engine_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, tiny_pipeline, local_ray
) -> None:
    backlog = tmp_path / "in.jsonl"
    ids = write_backlog(backlog, 46)  # 46 good rows and 4 bad ones
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    base = RetriageOptions(
        input=backlog, output=local_out, model=tiny_model_dir, batch_size=8, progress=False
    )
    run_retriage(base, tiny_pipeline)
    summary = run_retriage(base.model_copy(update={"output": ray_out, "engine": "ray", "ray_actors": 2}))
    assert summary.routed == 46 and summary.rejected == 4
    assert [json.loads(line)["id"] for line in ray_out.read_text().splitlines()] == ids
    assert ray_out.read_text() == local_out.read_text()
    rejects = tmp_path / "ray.jsonl.rejects.jsonl"
    assert rejects.read_text() == (tmp_path / "local.jsonl.rejects.jsonl").read_text()
    assert "engine: ray" in (tmp_path / "ray.jsonl.report.md").read_text()

    # A run that died locally can be finished on Ray: same checkpoint, same sink.
    resumed_out = tmp_path / "resumed.jsonl"
    crashing = base.model_copy(update={"output": resumed_out})
    with pytest.raises(KeyboardInterrupt):
        run_retriage(crashing, CrashingPipeline(tiny_pipeline, crash_on=3))
    assert Checkpoint.model_validate_json(checkpoint_path(resumed_out).read_text()).rows_consumed == 16
    finished = run_retriage(crashing.model_copy(update={"resume": True, "engine": "ray", "ray_actors": 1}))
    assert finished.resumed_at == 16 and finished.routed == 46
    assert resumed_out.read_text() == local_out.read_text()
