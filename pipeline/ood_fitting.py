"""Fit a model folder's out-of-scope detector on its own intent training file, and attach it.

Kept apart from ``pipeline.ood`` (which the encoder imports) because fitting needs the whole
pipeline and the data readers. The vectors come from the model's own pipeline object, on the
precision path it routes with, so the distances fitted are the distances served.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifact import attach_files
from pipeline.errors import ModelLoadError
from pipeline.ood import DEFAULT_SHRINKAGE, OUT_OF_SCOPE_FILE, OutOfScopeDetector
from pipeline.training import TRAIN_CONFIG_FILE
from pipeline.trainset import read_intent_source
from pipeline.triage import Pipeline

log = logging.getLogger(__name__)

#: Provenance of the detector beside it: data set, sizes, shrinkage.
OUT_OF_SCOPE_SUMMARY = "out_of_scope.json"
_BATCH = 512


def sentence_vectors(pipeline: Pipeline, texts: list[str]) -> np.ndarray:
    """Each text read alone as one sentence: the vector the intent head reads, [n, hidden]."""
    rows = []
    for offset in range(0, len(texts), _BATCH):
        chunk = texts[offset : offset + _BATCH]
        for output in pipeline.encoder.encode(chunk, [[(0, len(t))] for t in chunk], vectors=True):
            assert output.sentence_vectors is not None  # asked for: one row per text, never skipped
            rows.append(output.sentence_vectors[0])
    return np.stack(rows)


def fit_out_of_scope(
    folder: Path | str,
    data_dir: Path | str | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
    limit: int | None = None,
) -> dict[str, Any]:
    """Fit the detector on the intent data set the model was trained on and attach it to the folder.

    Class means and covariance come from the training file's utterances; the held-out percentiles
    from its dev share (CLINC150: its validation split; Banking77: a tenth carved from the training
    file with the model's seed, which the encoder may have seen in training, so the percentiles of
    unseen in-scope messages run a little higher). ``limit`` caps the training utterances read, as
    ``data.intent_limit`` does in training. Returns the summary also saved beside it.
    """
    folder = Path(folder)
    pipeline = Pipeline.from_folder(folder)  # verifies the folder once; its vectors are the served ones
    model = pipeline.loaded
    assert model is not None
    if "intent" not in model.net.head_specs:
        raise ModelLoadError(
            f"Model folder {folder} has no intent head, so nothing to be out of scope of.",
            fix="train a model with `data.intent: true` first",
        )
    if TRAIN_CONFIG_FILE not in model.extra_files:
        raise ModelLoadError(
            f"Model folder {folder} has no {TRAIN_CONFIG_FILE}, so its intent data set is unknown.",
            fix="fit the detector on a folder written by `hearken train`",
        )
    train_config = json.loads((folder / TRAIN_CONFIG_FILE).read_text())
    data = train_config.get("data", {})
    dataset = data.get("intent_dataset", "banking77")
    intents = read_intent_source(
        dataset, data_dir, random.Random(train_config.get("seed", 0)), data.get("dev_fraction", 0.1)
    )
    labels = model.net.head_specs["intent"].labels
    known = set(labels)
    train = [e for e in intents.train if e.label in known][:limit]
    held_out = [e for e in intents.dev if e.label in known]
    log.info("reading %d training and %d held-out utterances of %s", len(train), len(held_out), dataset)
    detector = OutOfScopeDetector.fit(
        sentence_vectors(pipeline, [e.text for e in train]),
        [labels.index(e.label) for e in train],
        sentence_vectors(pipeline, [e.text for e in held_out]),
        shrinkage,
    )
    summary = {
        "method": "Mahalanobis distance to the nearest intent mean, shared shrunk covariance",
        "vectors": "the intent head's input: each sentence's tokens pooled in context",
        "intent_dataset": dataset,
        "fitted_on": len(train),
        "held_out": len(held_out),
        "intents": len(labels),
        "shrinkage": shrinkage,
        "precision": pipeline.precision,
        "held_out_median_distance": float(np.median(detector.quantiles)),
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / OUT_OF_SCOPE_FILE
        detector.save(path)
        files = {
            OUT_OF_SCOPE_FILE: path.read_bytes(),
            OUT_OF_SCOPE_SUMMARY: json.dumps(summary, indent=2) + "\n",
        }
        attach_files(folder, files)
    return summary
