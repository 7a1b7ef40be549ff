"""``hearken train`` end to end on real data: a few steps of a tiny encoder, then save → load → route."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import corpora
from pipeline.artifact import load_model
from pipeline.cli import app
from pipeline.config import PipelineConfig
from pipeline.contract import assert_model_contract
from pipeline.errors import ConfigError
from pipeline.training import (
    TrainConfig,
    balanced_accuracy,
    class_weights,
    load_train_config,
    reproduce_config_file,
    selection_score,
    train,
    training_labels,
)
from pipeline.trainset import (
    IGNORE,
    TrainingData,
    TrainingMessage,
    build_training_data,
    gold_row_ids,
    split_of,
    text_key,
)
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
    weighted = {
        "class_weighting": {"product": "inverse_sqrt"},
        "data": {**TINY["data"], "intent_repeats": 2},
        "fit_signal_head": True,
    }
    config_path.write_text(yaml.safe_dump({**TINY, **weighted, "output": str(folder / "model")}))
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
    saved = TrainConfig.model_validate(json.loads((trained / "train_config.json").read_text()))
    assert saved.max_steps == 4 and saved.class_weighting == {"product": "inverse_sqrt"}
    assert "cfpb_dev_product_balanced_accuracy" in metrics["dev"], "the weighted head is selected balanced"
    card = (trained / "README.md").read_text()
    assert "product loss weighs each class by 1/sqrt" in card and "read 2 times per epoch" in card
    # The intent head gets its out-of-scope detector, fitted on the same (limited) intent data.
    assert "out_of_scope.safetensors" in model.manifest.files
    summary = json.loads((trained / "out_of_scope.json").read_text())
    assert summary["intent_dataset"] == "banking77" and summary["fitted_on"] == 150
    assert summary["held_out"] > 0 and summary["intents"] == 77
    # Asked for, the learned signal head is fitted (on the layers this small encoder has) before the
    # route calibration, and the pipeline loads it.
    assert "signal_head.safetensors" in model.manifest.files and "signal_head.json" in model.manifest.files
    head = Pipeline.from_folder(trained).encoder.signal_head
    assert head is not None and max(head.layers) <= model.net.encoder.settings.num_hidden_layers


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
    assert result.intent.out_of_scope is not None and 0.0 <= result.intent.out_of_scope <= 1.0


def test_unknown_config_key_names_the_key(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_train_config(path)


def test_default_training_config_is_valid():
    config = load_train_config(None)
    assert config.output == Path("models/hearken-default")
    assert config.encoder_init.kind == "pretrained"


# --- class weighting, checkpoint selection and the CFPB narratives read once --------------------


def small_training_data(**changes: Any) -> TrainingData:
    """``build_training_data`` on small slices of the real data sets (defaults: no product, no weak asks)."""
    config = PipelineConfig()
    settings: dict[str, Any] = {
        "parakweet_limit": 30,
        "background_limit": 40,
        "weak_cfpb": 0,
        "weak_cfpb_max_chars": 1500,
        "multidogo_conversations": 5,
        "buried": 5,
        "buried_dev": 5,
        "dev_fraction": 0.1,
        "intent": True,
        "intent_limit": 40,
        "product": False,
        "product_limit": None,
        "product_max_chars": 2000,
        "normaliser_config": config.normaliser,
        "segmenter_config": config.segmenter,
    }
    return build_training_data(None, random.Random(13), **{**settings, **changes})


def test_class_weights_are_inverse_sqrt_with_mean_one_per_example():
    labels = {"a": 0, "b": 1, "c": 2}
    gold = ["a"] * 100 + ["b"] * 4 + [None] * 7
    weights = class_weights(gold, labels, "inverse_sqrt")
    assert weights is not None
    assert weights[1] / weights[0] == pytest.approx(5.0)  # sqrt(100 / 4)
    assert (100 * weights[0] + 4 * weights[1]) / 104 == pytest.approx(1.0)
    assert weights[2] == pytest.approx(weights[1]), "an absent class gets the largest weight"
    assert class_weights(gold, labels, "none") is None
    assert class_weights([None, None], labels, "inverse_sqrt") is None


def test_training_labels_are_per_message_for_product_and_per_sentence_for_intent():
    message = TrainingMessage("A. B.", [(0, 2), (3, 5)], [0, 1], "t", intent=[None, "x"], product="p")
    assert training_labels([message], "product") == ["p"]
    assert training_labels([message], "intent") == [None, "x"]


def test_selection_counts_balanced_accuracy_instead_of_plain_for_weighted_heads():
    metrics = {
        "cfpb_dev_product_accuracy": 0.9,
        "cfpb_dev_product_balanced_accuracy": 0.5,
        "banking77_dev_intent_accuracy": 0.8,
    }
    assert selection_score(metrics, {"product"}) == pytest.approx((0.5 + 0.8) / 2)
    assert selection_score(metrics) == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == 0.75
    assert balanced_accuracy(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1])) == 0.5


def test_class_weighting_of_a_head_that_is_not_trained_names_the_fix(tmp_path: Path):
    config = TrainConfig.model_validate(
        {
            **TINY,
            "output": str(tmp_path / "m"),
            "class_weighting": {"product": "inverse_sqrt"},
            "data": {**TINY["data"], "product": False},
        }
    )
    with pytest.raises(ConfigError, match="weight only"):
        train(config)


def test_each_cfpb_training_narrative_gives_its_product_once_with_its_ask_labels():
    """The weakly ask-labelled narratives carry their product; none is read again for it."""
    data = small_training_data(background_limit=120, weak_cfpb=80, product=True, intent_repeats=3)
    weak = [m for m in data.train if m.source == "cfpb_weak"]
    alone = [m for m in data.train if m.source == "cfpb_train"]
    assert len(weak) == 80 and sum(m.product is not None for m in weak) >= 75
    assert all(m.product is not None and set(m.ask) == {IGNORE} for m in alone)
    read_weakly = [m.text for m in weak if m.product is not None]
    # The same narrative: equal, or (cut at 1,500 characters for the ask labels) a long prefix.
    twice = [m for m in alone for w in read_weakly if m.text == w or (len(w) > 1000 and m.text.startswith(w))]
    assert not twice, "a narrative is read for its product once per epoch"
    excluded = gold_row_ids("cfpb_complaints")
    train_texts = {
        text_key(c.text)
        for c in corpora.read_cfpb(None)
        if c.product is not None and split_of(c.text) == "train" and c.complaint_id not in excluded
    }
    assert len(read_weakly) + len(alone) == len(train_texts), "every narrative still gives its product"
    utterances = [m for m in data.train if m.source == "banking77"]
    assert len(utterances) == 3 * 40
    assert sum(m.ask != [IGNORE] for m in utterances) == 40, "the extra copies train the intent head only"
