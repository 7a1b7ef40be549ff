"""Shared fixtures: a tiny random-BERT model folder built in-process, and its pipeline.

The tiny model has the real tokenizer, config, artifact format and stages, only a 2-layer,
32-wide random encoder; tests of plumbing (artifact, CLI, service, backlog) use it so that
they run in seconds. Tests that need real predictions use the committed default model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.artifact import BaseModelInfo, save_model
from pipeline.basemodel import BASE_MODEL_NAME, BASE_MODEL_PACKAGE, base_model_dir
from pipeline.bert import BertSettings
from pipeline.config import PipelineConfig
from pipeline.encoder import HeadSpec, HearkenNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

TINY_HEADS = [HeadSpec(name="ask", level="sentence", kind="binary", labels=["not_ask", "ask"])]


def build_tiny_model(
    folder: Path, heads: list[HeadSpec] | None = None, config: PipelineConfig | None = None
) -> Path:
    """Write a complete, verifiable model folder with a random 2-layer encoder."""
    torch.manual_seed(0)
    bert = BertSettings(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    net = HearkenNet(bert, heads or TINY_HEADS)
    save_model(
        folder,
        net=net,
        heads=heads or TINY_HEADS,
        config=config or PipelineConfig(),
        tokenizer_file=base_model_dir() / "tokenizer.json",
        model_name="hearken-tiny-test",
        base_model=BaseModelInfo(
            name=BASE_MODEL_NAME,
            package=BASE_MODEL_PACKAGE,
            package_version="test",
            weights_sha256="random-init",
        ),
        training_data=[],
        metrics={"note": "random weights for plumbing tests"},
        card="# tiny test model\n",
    )
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir: Path):
    from pipeline.triage import Pipeline

    return Pipeline.from_folder(tiny_model_dir)


@pytest.fixture(scope="session")
def default_pipeline():
    """The committed default model (real predictions)."""
    from pipeline.triage import Pipeline

    return Pipeline.from_folder()
