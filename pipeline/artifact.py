"""Model folders: what a trained Hearken model is on disk, and how it is checked on load.

A model folder holds a manifest (format version, model version, base model, package versions,
training-data hashes, a sha256 of every file), the head labels, metrics, the resolved pipeline
config, and weights as safetensors (bf16 on disk: half the size, same predictions). Loading
verifies all of it and fails with a message that names the fix. It never pickles, never
falls back to an untrained model and never touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.bert import BertSettings, describe_state_mismatch, skipped_parameter_init
from pipeline.config import PipelineConfig
from pipeline.encoder import HeadSpec, HearkenNet
from pipeline.errors import ModelLoadError
from pipeline.runtime import resolve_precision

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_ENV = "HEARKEN_MODEL"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "hearken-default"

MANIFEST = "manifest.json"
CONFIG = "config.json"
HEADS = "heads.json"
ENCODER_CONFIG = "encoder_config.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
CARD = "README.md"
REQUIRED_FILES = (CONFIG, HEADS, ENCODER_CONFIG, TOKENIZER, WEIGHTS, METRICS)
TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "spacy", "safetensors", "numpy", "pydantic")
RESTORE_FIX = (
    "restore the folder (e.g. `git checkout -- {folder}`) or retrain it with "
    "`hearken train --config CONFIG --output {folder}`"
)


class DataFingerprint(BaseModel):
    """One training input: which file, its hash, how many rows were used, under which licence."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(description="Path relative to the data directory.")
    sha256: str
    rows_used: int
    licence: str


class BaseModelInfo(BaseModel):
    """Where the pretrained encoder came from."""

    model_config = ConfigDict(extra="forbid")

    name: str
    package: str
    package_version: str
    weights_sha256: str


class Manifest(BaseModel):
    """The first file read from a model folder; everything else is checked against it."""

    model_config = ConfigDict(extra="forbid")

    format_version: int
    model_name: str
    model_version: str
    created: str
    base_model: BaseModelInfo
    package_versions: dict[str, str]
    python_version: str
    training_data: list[DataFingerprint]
    weights_dtype: str
    files: dict[str, str] = Field(description="sha256 of every file in the folder except the manifest.")


@dataclass
class LoadedModel:
    """Everything a pipeline needs from a verified model folder."""

    folder: Path
    manifest: Manifest
    config: PipelineConfig
    heads: list[HeadSpec]
    net: HearkenNet
    tokenizer_path: Path
    metrics: dict[str, Any]
    extra_files: dict[str, Path]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the weights depend on."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def default_model_dir() -> Path:
    """The model used when none is named: ``$HEARKEN_MODEL`` or the committed default."""
    return Path(os.environ[MODEL_ENV]) if os.environ.get(MODEL_ENV) else DEFAULT_MODEL_DIR


def save_model(
    folder: Path,
    *,
    net: HearkenNet,
    heads: list[HeadSpec],
    config: PipelineConfig,
    tokenizer_file: Path,
    model_name: str,
    base_model: BaseModelInfo,
    training_data: list[DataFingerprint],
    metrics: Mapping[str, Any],
    card: str,
    extra_files: Mapping[str, str] | None = None,
    weights_dtype: torch.dtype = torch.bfloat16,
) -> Manifest:
    """Write a complete model folder atomically (temp folder, then rename over the target)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {k: v.detach().to(weights_dtype).contiguous() for k, v in net.state_dict().items()}
        save_file(
            state, str(staging / WEIGHTS), metadata={"format": "pt", "hearken_format": str(FORMAT_VERSION)}
        )
        (staging / CONFIG).write_text(config.model_dump_json(indent=2) + "\n")
        (staging / HEADS).write_text(json.dumps([h.model_dump() for h in heads], indent=2) + "\n")
        (staging / ENCODER_CONFIG).write_text(json.dumps(net.encoder.settings.to_dict(), indent=2))
        shutil.copyfile(tokenizer_file, staging / TOKENIZER)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (staging / CARD).write_text(card)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        created = datetime.now(UTC)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_name=model_name,
            model_version=f"{model_name}-{created:%Y%m%d}-{files[WEIGHTS][:8]}",
            created=created.isoformat(timespec="seconds"),
            base_model=base_model,
            package_versions=package_versions(),
            python_version=platform.python_version(),
            training_data=training_data,
            weights_dtype=str(weights_dtype).removeprefix("torch."),
            files=files,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("saved model %s to %s", manifest.model_version, folder)
    return manifest


def _fail(folder: Path, problem: str) -> ModelLoadError:
    return ModelLoadError(
        f"Model folder {folder} is not usable: {problem}.", fix=RESTORE_FIX.format(folder=folder)
    )


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(folder, f"{name} cannot be read as JSON ({exc})") from exc


def read_manifest(folder: Path) -> Manifest:
    """Read and validate just the manifest (cheap: used by health checks and listings)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(
            f"No model folder at {folder}.",
            fix=f"pass an existing model folder, set {MODEL_ENV}, or train one with `hearken train`",
        )
    if not (folder / MANIFEST).is_file():
        raise _fail(folder, f"{MANIFEST} is missing (is this a Hearken model folder?)")
    try:
        manifest = Manifest.model_validate(_read_json(folder, MANIFEST))
    except ValidationError as exc:
        raise _fail(folder, f"{MANIFEST} is invalid: {exc.errors()[0]['msg']}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ModelLoadError(
            f"Model folder {folder} has format version {manifest.format_version}; this Hearken reads "
            f"version {FORMAT_VERSION}.",
            fix="install the Hearken release that wrote the model, or retrain it with this one",
        )
    return manifest


def load_model(folder: Path | str | None = None, *, for_inference: bool = False) -> LoadedModel:
    """Load and verify a model folder; raise ``ModelLoadError`` naming the fix on any problem.

    The network's parameters are fp32, ready for training or either precision. ``for_inference``:
    when the folder's config resolves to bf16 on this CPU (``runtime.resolve_precision``), the
    Linear layers keep the bf16 tensors as stored instead (the values bf16 inference rounds them
    to anyway); only a pipeline that owns the network may ask for that. Widening 22 M weights to
    fp32 and rounding them back took about 0.3 s of every cold start.
    """
    folder = Path(folder) if folder is not None else default_model_dir()
    manifest = read_manifest(folder)
    for name in REQUIRED_FILES:
        if name not in manifest.files:
            raise _fail(folder, f"the manifest does not list {name}")
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise _fail(folder, f"{name} is missing")
        if sha256_file(path) != expected:
            raise _fail(folder, f"{name} does not match its sha256 in the manifest (corrupted or edited)")
    _warn_on_version_drift(manifest)
    try:
        config = PipelineConfig.model_validate(_read_json(folder, CONFIG))
        heads = [HeadSpec.model_validate(h) for h in _read_json(folder, HEADS)]
    except ValidationError as exc:
        raise _fail(folder, f"config or heads invalid: {exc.errors()[0]['msg']}") from exc
    encoder_values = _read_json(folder, ENCODER_CONFIG)
    if not isinstance(encoder_values, dict):
        raise _fail(folder, f"{ENCODER_CONFIG} is not a JSON object")
    try:
        bert_settings = BertSettings.from_dict(encoder_values)
    except ModelLoadError as exc:
        raise _fail(folder, f"{ENCODER_CONFIG}: {exc.message.rstrip('.')}") from exc
    # Every parameter is about to be replaced by a saved tensor: skip all random initialisation.
    with skipped_parameter_init():
        net = HearkenNet(bert_settings, heads, initialise=False)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise _fail(folder, f"{WEIGHTS} is not a readable safetensors file ({exc})") from exc
    problem = describe_state_mismatch(net, state)
    if problem is not None:
        raise _fail(folder, f"weights do not match the heads/config: {problem}")
    keep_bf16: set[str] = set()
    if for_inference and resolve_precision(config.encoder.precision) == "bf16":
        keep_bf16 = {
            f"{name}.{parameter}"
            for name, module in net.named_modules()
            if isinstance(module, nn.Linear)
            for parameter in ("weight", "bias")
        }
    net.load_state_dict(
        {k: v.to(torch.bfloat16) if k in keep_bf16 else v.float() for k, v in state.items()}, assign=True
    )
    net.eval()
    metrics = _read_json(folder, METRICS)
    extra = {name: folder / name for name in manifest.files if name not in (*REQUIRED_FILES, CARD)}
    return LoadedModel(folder, manifest, config, heads, net, folder / TOKENIZER, metrics, extra)


def _warn_on_version_drift(manifest: Manifest) -> None:
    current = package_versions()
    for name, trained_with in manifest.package_versions.items():
        now = current.get(name)
        if now and trained_with != "absent" and now.split(".")[0] != trained_with.split(".")[0]:
            log.warning(
                "model was trained with %s %s but %s is installed; predictions may differ",
                name,
                trained_with,
                now,
            )


def attach_files(folder: Path | str, files: Mapping[str, str | bytes]) -> Manifest:
    """Add or replace small files (routing policy, lexicons, calibration, the out-of-scope detector).

    The weights and the model version stay as they are: a routing policy is data that operations
    teams change without retraining. The folder is verified first (never attach to a broken
    model), every file is written to a temporary name and renamed, and the manifest, which lists
    the sha256 of every file, is rewritten last, so a crash leaves either the old or the new state
    detectable by the next load.
    """
    folder = Path(folder)
    load_model(folder)
    manifest = read_manifest(folder)
    protected = {MANIFEST, *REQUIRED_FILES}
    for name, text in files.items():
        if name in protected or "/" in name or name.startswith("."):
            raise ValueError(f"cannot attach {name!r}: it is a core model file or not a plain file name")
        staging = folder / f".{name}.tmp"
        if isinstance(text, bytes):
            staging.write_bytes(text)
        else:
            staging.write_text(text)
        staging.replace(folder / name)
        manifest.files[name] = sha256_file(folder / name)
    staging = folder / f".{MANIFEST}.tmp"
    staging.write_text(manifest.model_dump_json(indent=2) + "\n")
    staging.replace(folder / MANIFEST)
    return manifest
