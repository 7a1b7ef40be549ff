"""``hearken train`` end to end on real data: a few steps of a tiny encoder, then save → load → route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.artifact import load_model
from pipeline.cli import app
from pipeline.contract import assert_model_contract
from pipeline.errors import ConfigError
from pipeline.training import TrainConfig, load_train_config, reproduce_config_file
from pipeline.triage import Pipeline

TINY = {
    "model_name": "hearken-it",
    "encoder_init": {"kind": "random"},
    "max_steps": 4,
    "batch_windows": 16,
    "progress": False,
    "data": {
        "parakweet_limit": 120,
        "background_limit": 60,
        "multidogo_conversations": 30,
        "buried": 30,
        "buried_dev": 10,
        "intent_limit": 150,
        "product": True,
        "product_limit": 30,
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "output": str(folder / "model")}))
    result = CliRunner().invoke(app, ["train", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(folder / "model")
    return folder / "model"


def test_trained_folder_has_every_part_and_verifies(trained: Path):
    model = load_model(trained)
    assert [h.name for h in model.heads] == ["ask", "intent", "product"]
    assert len(model.heads[1].labels) == 77 and len(model.heads[2].labels) == 11
    names = {d.path for d in model.manifest.training_data}
    assert "email_intent_parakweet/Ask0729-fixed.txt" in names and "banking77/train.csv" in names
    assert not any("test" in n.split("/")[-1] for n in names), "test splits are never training data"
    assert all(len(d.sha256) == 64 for d in model.manifest.training_data)
    assert not {d.name for d in model.manifest.training_data} & {
        "twacs_airline_support",
        "itsm_ticket_assignment",
    }
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 < metrics["ask_threshold"] < 1.0
    assert set(metrics["calibration"]) == {"ask", "intent", "product"}
    saved = json.loads((trained / "train_config.json").read_text())
    assert TrainConfig.model_validate(saved).max_steps == 4


def test_model_card_names_the_config_it_was_trained_with(trained: Path):
    config_path = (trained.parent / "config.yaml").resolve()
    assert f"hearken train --config {config_path} --output {trained}" in (trained / "README.md").read_text()


def test_reproduce_line_names_the_config_file(tmp_path: Path):
    assert reproduce_config_file(load_train_config(None)) == "pipeline/configs/default.yaml"
    path = tmp_path / "mine.yaml"
    path.write_text("seed: 5\n")
    copied = load_train_config(path).model_copy(update={"output": tmp_path / "out"})
    assert reproduce_config_file(copied) == str(path.resolve())
    in_code = TrainConfig(output=tmp_path / "m")
    assert reproduce_config_file(in_code) == str(tmp_path / "m" / "train_config.json")


def test_trained_model_routes_and_passes_the_contract(trained: Path):
    pipeline = Pipeline.from_folder(trained)
    assert_model_contract(pipeline)
    result = pipeline.route("I was charged twice for one coffee. Can you refund one of the charges?")
    assert result.product.label in load_model(trained).heads[2].labels
    assert result.intent.label is None or result.intent.label in load_model(trained).heads[1].labels


def test_unknown_config_key_names_the_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_train_config(path)


def test_default_training_config_is_valid():
    config = load_train_config(None)
    assert config.output == Path("models/hearken-default")
    assert config.encoder_init.kind == "pretrained"
