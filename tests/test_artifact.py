"""Model folders: a save/load round trip, and every kind of damage refused with a fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.artifact import MANIFEST, WEIGHTS, load_model, read_manifest, sha256_file
from pipeline.errors import ModelLoadError
from tests.conftest import build_tiny_model


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def _rewrite_manifest_hash(folder: Path, name: str) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = sha256_file(folder / name)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_round_trip_keeps_weights_config_and_version(tiny_model_dir: Path):
    model = load_model(tiny_model_dir)
    assert model.manifest.model_version.startswith("hearken-tiny-test-")
    assert model.manifest.format_version == 1
    assert set(model.manifest.files) >= {"config.json", "heads.json", "model.safetensors", "tokenizer.json"}
    assert model.manifest.package_versions["torch"].startswith("2.")
    assert [h.name for h in model.heads] == ["ask"]
    assert not model.net.training
    again = load_model(tiny_model_dir)
    for (name, a), (_, b) in zip(model.net.state_dict().items(), again.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_loading_for_inference_keeps_stored_bf16_matmul_weights_and_reads_the_same(
    tiny_model_dir: Path, precision: str, monkeypatch: pytest.MonkeyPatch
):
    """A pipeline's network skips widening its matmul weights to fp32 when it will run in bf16; what
    it computes is exactly what the fp32 load, rounded for bf16 at start-up, computes."""
    from pipeline.runtime import PRECISION_ENV
    from pipeline.schema import Message, TriageResult
    from pipeline.triage import Pipeline

    monkeypatch.setenv(PRECISION_ENV, precision)
    trainable = load_model(tiny_model_dir)
    assert all(p.dtype == torch.float32 for p in trainable.net.parameters())
    served = load_model(tiny_model_dir, for_inference=True)
    linear = served.net.encoder.encoder.layer[0].intermediate.dense
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert linear.weight.dtype == linear.bias.dtype == expected
    assert served.net.encoder.embeddings.word_embeddings.weight.dtype == torch.float32
    assert served.net.encoder.embeddings.LayerNorm.weight.dtype == torch.float32
    for name, value in served.net.state_dict().items():
        assert torch.equal(value.float(), trainable.net.state_dict()[name].to(value.dtype).float()), name

    texts = [
        Message(text=t)
        for t in ("I was charged twice. Can you refund the second charge?", "Where's my card?")
    ]
    from_folder = Pipeline.from_folder(tiny_model_dir).route_batch(texts)
    by_hand = Pipeline.from_model(
        trainable, policy=Pipeline.from_folder(tiny_model_dir).policy, calibration=None
    )
    by_hand.encoder.store_weights_for_precision()
    for a, b in zip(from_folder, by_hand.route_batch(texts), strict=True):
        assert isinstance(a, TriageResult) and isinstance(b, TriageResult)
        assert [x.score for x in a.asks] == [x.score for x in b.asks]
        assert a.product == b.product and a.intent == b.intent


def test_missing_folder_names_the_fix(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="hearken train"):
        load_model(tmp_path / "nope")


def test_missing_manifest(model_copy: Path):
    (model_copy / MANIFEST).unlink()
    with pytest.raises(ModelLoadError, match=r"manifest\.json is missing"):
        load_model(model_copy)


def test_truncated_weights_are_detected_by_hash(model_copy: Path):
    data = (model_copy / WEIGHTS).read_bytes()
    (model_copy / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(model_copy)


def test_garbage_weights_with_matching_hash_are_refused(model_copy: Path):
    (model_copy / WEIGHTS).write_bytes(b"\x00" * 64)
    _rewrite_manifest_hash(model_copy, WEIGHTS)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(model_copy)


def test_weights_of_the_wrong_shape_are_refused(model_copy: Path):
    state = {k: v for k, v in load_model(model_copy).net.state_dict().items()}
    key = next(k for k in state if k.startswith("heads.ask"))
    state[key] = torch.zeros(3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(model_copy / WEIGHTS))
    _rewrite_manifest_hash(model_copy, WEIGHTS)
    with pytest.raises(ModelLoadError, match="shape"):
        load_model(model_copy)


@pytest.mark.parametrize(
    ("bad", "where", "dtype"),
    [
        (float("nan"), "all", torch.float32),
        (float("nan"), "one", torch.bfloat16),
        (float("inf"), "one", torch.float32),
        (float("-inf"), "one", torch.bfloat16),
    ],
)
def test_nan_weights_are_refused(model_copy: Path, bad: float, where: str, dtype: torch.dtype):
    state = {k: v.to(dtype) for k, v in load_model(model_copy).net.state_dict().items()}
    key = list(state)[len(state) // 2]
    if where == "all":
        state[key] = torch.full_like(state[key], bad)
    else:  # one bad value among ordinary weights, somewhere in the middle
        flat = state[key].clone().view(-1)
        flat[flat.numel() // 2] = bad
        state[key] = flat.view(state[key].shape)
    save_file({k: v.contiguous() for k, v in state.items()}, str(model_copy / WEIGHTS))
    _rewrite_manifest_hash(model_copy, WEIGHTS)
    with pytest.raises(ModelLoadError, match="NaN"):
        load_model(model_copy)


def test_unknown_config_key_is_refused(model_copy: Path):
    config = json.loads((model_copy / "config.json").read_text())
    config["asks"]["treshold"] = 0.3
    (model_copy / "config.json").write_text(json.dumps(config))
    _rewrite_manifest_hash(model_copy, "config.json")
    with pytest.raises(ModelLoadError, match="config or heads invalid"):
        load_model(model_copy)


def test_newer_format_version_is_refused(model_copy: Path):
    manifest = json.loads((model_copy / MANIFEST).read_text())
    manifest["format_version"] = 99
    (model_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="format version 99"):
        read_manifest(model_copy)


def test_no_pickle_files_are_written(tiny_model_dir: Path):
    suffixes = {p.suffix for p in tiny_model_dir.iterdir()}
    assert suffixes <= {".json", ".safetensors", ".md"}


def test_saving_over_an_existing_folder_replaces_it(tmp_path: Path):
    folder = build_tiny_model(tmp_path / "m")
    (folder / "stale.txt").write_text("old")
    build_tiny_model(folder)
    assert not (folder / "stale.txt").exists()
    load_model(folder)
