"""CLINC150 as the intent data set (issue 3, item 4): config, training messages, a tiny training run, AUROC.

The tiny run uses the random 2-layer encoder of ``tests/test_training.py`` for a few steps: it
checks the plumbing (labels saved with the model, data fingerprints, dev sets), not accuracy.
The real model is trained with ``pipeline/configs/clinc150.yaml`` and measured by
``scripts/bench_clinc.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import corpora
from pipeline.artifact import load_model
from pipeline.cli import app
from pipeline.errors import ConfigError, DataError
from pipeline.ood import auroc, max_softmax_scores, out_of_scope_score
from pipeline.schema import IntentResult, ProductResult, RouteResult, TriageResult
from pipeline.training import TrainConfig, load_train_config
from pipeline.trainset import (
    CLINC150_NOT_ASK,
    clinc150_intents,
    clinc150_labels,
    read_intent_source,
)
from pipeline.triage import Pipeline
from tests.test_training import TINY, small_training_data

CLINC_CONFIG = Path(__file__).resolve().parent.parent / "pipeline" / "configs" / "clinc150.yaml"


# --- config -------------------------------------------------------------------------------------


def test_intent_dataset_defaults_to_banking77_and_accepts_clinc150():
    assert TrainConfig().data.intent_dataset == "banking77"
    config = TrainConfig.model_validate({"data": {"intent_dataset": "clinc150"}})
    assert config.data.intent_dataset == "clinc150"


def test_unknown_intent_dataset_is_rejected_naming_the_field(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  intent_dataset: snips\n")
    with pytest.raises(ConfigError, match="intent_dataset"):
        load_train_config(path)


def test_unknown_intent_dataset_is_rejected_by_the_builder_too():
    with pytest.raises(ConfigError, match="snips"):
        read_intent_source("snips", None, random.Random(0), 0.1)


def test_clinc_config_is_valid_and_trains_the_clinc_intents_without_product():
    config = load_train_config(CLINC_CONFIG)
    assert config.data.intent_dataset == "clinc150"
    assert config.data.intent and not config.data.product
    assert not config.calibrate_route  # the consumer-finance routing calibration means nothing here
    assert config.encoder_init.kind == "pretrained" and config.max_steps is None
    default = load_train_config(None)
    for same in (
        "batch_windows",
        "batch_tokens",
        "learning_rate",
        "head_learning_rate",
        "train_window_tokens",
    ):
        assert getattr(config, same) == getattr(default, same), same


# --- training messages --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clinc_source():
    return clinc150_intents(None, random.Random(13))


def test_clinc_labels_are_the_150_in_scope_intents_in_published_order():
    labels = clinc150_labels()
    assert len(labels) == len(set(labels)) == 150
    assert "oos" not in labels
    assert labels[:2] == ["freeze_account", "routing"]  # domains.json: banking first
    assert set(labels) == {e.label for e in corpora.read_clinc150("train")}


def test_clinc_source_uses_train_for_training_and_val_for_dev_only(clinc_source):
    train_rows = corpora.read_clinc150("train")
    val_rows = corpora.read_clinc150("val")
    assert sorted((e.text, e.label) for e in clinc_source.train) == sorted(
        (e.text, e.label) for e in train_rows
    )
    assert clinc_source.dev == val_rows
    assert clinc_source.files == {corpora.CLINC150: len(train_rows) + len(val_rows)}
    used = {e.text for e in clinc_source.train + clinc_source.dev}
    test_only = {e.text for e in corpora.read_clinc150("test")} - {e.text for e in train_rows + val_rows}
    oos = {e.text for split in ("oos_train", "oos_val", "oos_test") for e in corpora.read_clinc150(split)}
    assert len(test_only) > 4000 and not used & test_only, "test rows are never training data"
    assert not used & oos and all(e.label != "oos" for e in clinc_source.train + clinc_source.dev)


def test_clinc_messages_carry_their_intent_and_true_ask_labels(clinc_source):
    messages = clinc_source.messages(clinc_source.train)
    assert len(messages) == 15000
    assert {m.intent[0] for m in messages} == set(clinc150_labels())
    assert all(len(m.sentences) == 1 and m.sentences[0] == (0, len(m.text)) for m in messages)
    assert {m.source for m in messages} == {"clinc150"}
    for message in messages:
        assert message.ask == [0 if message.intent[0] in CLINC150_NOT_ASK else 1]
    asks = clinc_source.asks(clinc_source.train, labelled=True)
    assert len(asks) == 15000 - 100 * len(CLINC150_NOT_ASK)  # 100 training utterances per intent
    assert not {intent for _, intent in asks} & CLINC150_NOT_ASK
    assert {intent for _, intent in clinc_source.asks(clinc_source.dev, labelled=False)} == {None}


def test_build_training_data_puts_clinc_where_banking77_goes():
    data = small_training_data(
        parakweet_limit=60,
        buried=40,
        buried_dev=10,
        multidogo_conversations=10,
        intent_limit=300,
        intent_dataset="clinc150",
    )
    assert data.intent_labels == clinc150_labels()
    assert corpora.CLINC150 in data.files and corpora.BANKING77_TRAIN not in data.files
    assert sum(m.source == "clinc150" for m in data.train) == 300
    assert len(data.dev["clinc150_dev"]) == 3000 and "banking77_dev" not in data.dev
    labelled = {i for m in data.train + data.dev["buried_dev"] for i in m.intent if i is not None}
    assert labelled <= set(clinc150_labels())
    assert any(i is not None for m in data.dev["buried_dev"] for i in m.intent), "dev asks are buried too"


# --- a tiny training run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clinc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clinc")
    raw = {
        **TINY,
        "model_name": "hearken-clinc-it",
        "output": str(folder / "model"),
        "calibrate_route": False,  # as in clinc150.yaml: the routing policy's intents are Banking77's
        "data": {**TINY["data"], "intent_dataset": "clinc150", "product": False},
    }
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["train", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    return folder / "model"


def test_tiny_clinc_training_saves_the_150_clinc_intents(clinc_model: Path):
    model = load_model(clinc_model)
    assert [h.name for h in model.heads] == ["ask", "intent"]
    assert model.heads[1].labels == clinc150_labels()
    names = {d.path for d in model.manifest.training_data}
    assert corpora.CLINC150 in names and corpora.BANKING77_TRAIN not in names
    clinc = next(d for d in model.manifest.training_data if d.path == corpora.CLINC150)
    assert clinc.rows_used == 18000 and clinc.licence == "CC-BY-3.0"
    metrics = json.loads((clinc_model / "metrics.json").read_text())
    assert "clinc150_dev_intent_accuracy" in metrics["dev"]
    assert metrics["calibration"]["intent"]["dev_examples"] >= 3000
    assert "150 in-scope CLINC150" in (clinc_model / "README.md").read_text()


def test_tiny_clinc_model_scores_a_single_query(clinc_model: Path):
    pipeline = Pipeline.from_folder(clinc_model)
    result = pipeline.route("how do i freeze my bank account")
    assert result.intent.label in clinc150_labels()
    assert out_of_scope_score(result) == pytest.approx(1.0 - result.intent.confidence)


# --- out-of-scope scoring -----------------------------------------------------------------------


def make_result(label: str | None, confidence: float | None) -> TriageResult:
    return TriageResult(
        id="t",
        language="en",
        asks=[],
        product=ProductResult(),
        intent=IntentResult(label=label, confidence=confidence, reason=None if label else "no sentence"),
        route=RouteResult(),
        model_version="test",
    )


def test_out_of_scope_score_is_one_minus_the_intent_confidence():
    assert out_of_scope_score(make_result("balance", 0.9)) == pytest.approx(0.1)
    assert out_of_scope_score(make_result("balance", 1.0)) == 0.0
    assert out_of_scope_score(make_result(None, None)) == 1.0


def test_max_softmax_scores():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]])
    assert max_softmax_scores(probs) == pytest.approx([0.3, 0.6])
    with pytest.raises(ValueError, match="shape"):
        max_softmax_scores(np.array([0.5, 0.5]))


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),  # every out-of-scope score above every in-scope one
        ([0.8, 0.9, 0.1, 0.2], [0, 0, 1, 1], 0.0),  # every one below
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>both
        ([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),  # the tie 0.5/0.5 counts one half: 3.5 of 4
        ([0.3, 0.3, 0.3], [1, 0, 0], 0.5),  # all tied
        ([0.6, 0.1, 0.4], [True, False, False], 1.0),  # booleans
    ],
)
def test_auroc_on_hand_computed_cases(scores: list[float], labels: list[int], expected: float):
    assert auroc(scores, labels) == pytest.approx(expected)


def test_auroc_does_not_depend_on_order_or_scale():
    rng = np.random.default_rng(3)
    scores, labels = rng.random(50), rng.integers(0, 2, 50)
    order = rng.permutation(50)
    assert auroc(scores[order], labels[order]) == pytest.approx(auroc(scores, labels))
    assert auroc(3 * scores + 1, labels) == pytest.approx(auroc(scores, labels))
    assert auroc(-scores, labels) == pytest.approx(1 - auroc(scores, labels))


def test_auroc_refuses_what_it_cannot_measure():
    with pytest.raises(DataError, match="both classes"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="equal length"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0, 2])
