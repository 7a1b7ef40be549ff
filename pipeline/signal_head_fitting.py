"""Fit a model folder's learned signal head on team-written and development messages, and attach it.

Kept apart from ``pipeline.signal_head`` (which the encoder imports) because fitting needs the
whole pipeline, the data readers and scikit-learn. The features come from the model's own
pipeline object (normalise, segment, one encoder pass), so what is fitted is what is served.

Data (all written by the team, never a public test split):

* ``data/signal_training/*.jsonl``, its ``tune`` half (``written_half``): messages written blind
  to the rule lexicon and to the routing test split, positives and hard negatives per signal
  (format in its README); the ``check`` half is left for ``scripts/bench_signals.py``;
* the routing set's development split ``dev2``. ``dev`` is left out because the route
  calibration is fitted on it (in-sample signals would make its confidences too sure), and
  ``dev3`` as a check.

The threshold is chosen by cross-validation over those messages (folds by message): for each
candidate, the micro-F1 of the rules and the head together on the held-out folds; the best wins,
the higher threshold on a tie.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifact import attach_files
from pipeline.errors import DataError
from pipeline.goldsets import read_jsonl_rows
from pipeline.routing_evaluation import signal_metrics
from pipeline.routing_goldset import load_routing_goldset
from pipeline.signal_head import DEFAULT_LAYERS, SIGNAL_HEAD_FILE, SignalHead
from pipeline.triage import Pipeline

log = logging.getLogger(__name__)

#: Provenance of the head beside it: data, hashes, the cross-validation table, the threshold.
SIGNAL_HEAD_SUMMARY = "signal_head.json"
#: The team-written training messages shipped with the project.
DEFAULT_TRAINING_DIR = Path(__file__).resolve().parent.parent / "data" / "signal_training"
DEFAULT_DEV_SPLITS = ("dev2",)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.5, 0.991, 0.025))
_KINDS = {"positive", "hard_negative"}
_STYLES = {"email", "chat", "social", "webform", "narrative"}
_BATCH = 64


#: The two halves of the written messages, fixed by a hash of each row's id: ``tune`` is what rules
#: are written from and heads are fitted on; ``check`` is read by neither and only scored
#: (``scripts/bench_signals.py``), so it measures how rules and heads carry to unseen phrasings.
WRITTEN_HALVES = ("tune", "check")


def written_half(row_id: str) -> str:
    """Which half of the written messages a row belongs to (stable: it depends on the id only)."""
    return WRITTEN_HALVES[int(hashlib.sha256(row_id.encode("utf-8")).hexdigest(), 16) % 2]


@dataclass(frozen=True)
class SignalExample:
    """One labelled message: its text and the signals in it, with spans of their evidence."""

    id: str
    text: str
    spans: tuple[tuple[str, int, int], ...]  # (signal, start, end) in ``text``
    names: frozenset[str]  # every signal of the message, also those stated in quoted history


def read_signal_training(
    folder: Path | str, known: Sequence[str], half: str | None = None
) -> tuple[list[SignalExample], dict[str, str]]:
    """Read every ``*.jsonl`` of ``folder``; return the examples (of one ``half``, or all) and each
    file's sha256. Every row is checked, whichever half is asked for.

    Raises ``DataError`` naming the file and line for a malformed row, an unknown signal or
    evidence that does not occur exactly once in its text.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(
            f"no *.jsonl files in {folder}",
            fix="point --training-dir at data/signal_training (restore it from git)",
        )
    fix = "correct the row; the format is in data/signal_training/README.md"
    examples: list[SignalExample] = []
    hashes: dict[str, str] = {}
    seen: set[str] = set()
    for path in files:
        hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        for where, row in read_jsonl_rows(path, path.name, fix):
            if not isinstance(row, dict) or set(row) != {"id", "text", "signals", "kind", "style"}:
                raise DataError(f"{where}: a row has exactly id, text, signals, kind, style", fix=fix)
            text, row_id = row["text"], row["id"]
            if not isinstance(text, str) or not text.strip() or not isinstance(row_id, str):
                raise DataError(f"{where}: id and text must be non-empty strings", fix=fix)
            if row_id in seen:
                raise DataError(f"{where}: id {row_id!r} is used twice", fix=fix)
            seen.add(row_id)
            if row["kind"] not in _KINDS or row["style"] not in _STYLES:
                raise DataError(
                    f"{where}: kind must be one of {sorted(_KINDS)}, style one of {sorted(_STYLES)}", fix=fix
                )
            if not isinstance(row["signals"], list):
                raise DataError(f"{where}: signals must be a list", fix=fix)
            spans = []
            for signal in row["signals"]:
                if not isinstance(signal, dict) or set(signal) != {"name", "evidence"}:
                    raise DataError(f"{where}: each signal has exactly name and evidence", fix=fix)
                if signal["name"] not in known:
                    raise DataError(
                        f"{where}: unknown signal {signal['name']!r} (known: {list(known)})", fix=fix
                    )
                evidence = signal["evidence"]
                if not isinstance(evidence, str) or not evidence or text.count(evidence) != 1:
                    raise DataError(
                        f"{where}: evidence {evidence!r} must occur exactly once in the text", fix=fix
                    )
                start = text.index(evidence)
                spans.append((signal["name"], start, start + len(evidence)))
            if row["kind"] == "positive" and not spans:
                raise DataError(f"{where}: a positive row names at least one signal", fix=fix)
            if half is None or written_half(row_id) == half:
                examples.append(SignalExample(row_id, text, tuple(spans), frozenset(n for n, _, _ in spans)))
    return examples, hashes


def development_examples(splits: Sequence[str], data_dir: Path | str | None) -> list[SignalExample]:
    """English messages of the routing set's development splits, with their body signals' spans."""
    examples = []
    for split in splits:
        for message in load_routing_goldset(split, data_dir):  # type: ignore[arg-type]
            if message.language != "en":
                continue
            body = tuple((s.name, s.start, s.end) for s in message.signals if not s.in_quoted_history)
            names = frozenset(s.name for s in message.signals)
            examples.append(SignalExample(f"{split}/{message.id}", message.text, body, names))
    return examples


@dataclass
class _Read:
    features: np.ndarray  # [sentences, width]
    targets: np.ndarray  # [sentences, signals]
    rules: frozenset[str]  # what the rule lexicon finds in the message
    names: frozenset[str]


def read_examples(
    pipeline: Pipeline, examples: Sequence[SignalExample], labels: Sequence[str], layers: Sequence[int]
) -> list[_Read]:
    """Each example through the pipeline's own stages: sentence features, targets, the rules' signals.

    One normalise-and-segment per example serves both the encoder pass and the rule detector (the
    stage ``Pipeline.route_batch`` runs, on the same readings). A sentence is a target for a signal
    when the labelled evidence overlaps it (in original offsets).
    """
    reads: list[_Read] = []
    for offset in range(0, len(examples), _BATCH):
        chunk = examples[offset : offset + _BATCH]
        normalised = [pipeline.normaliser.normalise(e.text) for e in chunk]
        sentences = pipeline.segmenter.segment_many([n.body.text for n in normalised])
        encoded = pipeline.encoder.encode(
            [n.body.text for n in normalised],
            [[(s.start, s.end) for s in sents] for sents in sentences],
            out_of_scope=False,
            signal_features=layers,
        )
        histories = iter(pipeline.segmenter.segment_many([h.text for n in normalised for h in n.history]))
        for example, norm, sents, output in zip(chunk, normalised, sentences, encoded, strict=True):
            assert output.sentence_signal_features is not None  # asked for
            targets = np.zeros((len(sents), len(labels)))
            for i, sentence in enumerate(sents):
                start, end = norm.body.to_original(sentence.start, sentence.end)
                for name, a, b in example.spans:
                    if name in labels and a < end and b > start:
                        targets[i, labels.index(name)] = 1.0
            history = [next(histories) for _ in norm.history]
            rules = frozenset(s.name for s in pipeline.signal_detector.detect(norm, sents, history))
            reads.append(_Read(output.sentence_signal_features, targets, rules, example.names))
    return reads


def _micro(reads: Sequence[_Read], predicted: Sequence[set[str]]) -> dict[str, Any]:
    return signal_metrics([set(r.names) for r in reads], predicted)["micro"]


def _head_names(probabilities: np.ndarray, labels: Sequence[str], threshold: float) -> set[str]:
    if not len(probabilities):
        return set()
    return {labels[k] for k in np.flatnonzero(probabilities.max(axis=0) > threshold)}


def cross_validate(
    reads: Sequence[_Read],
    labels: Sequence[str],
    layers: Sequence[int],
    *,
    folds: int,
    seed: int,
    regularisation: float,
) -> tuple[float, list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Out-of-fold probabilities for every message; the threshold with the best union micro-F1.

    Also, at that threshold, per signal: how many signals the head added beside the rules, and
    the share of them that were right (smoothed by one success and one failure), which becomes
    the score the head reports.
    """
    fold_of = np.random.RandomState(seed).randint(0, folds, len(reads))
    held_out: list[np.ndarray] = [np.zeros((0, len(labels)))] * len(reads)
    for fold in range(folds):
        train = [r for r, f in zip(reads, fold_of, strict=True) if f != fold]
        head = SignalHead.fit(
            np.concatenate([r.features for r in train]),
            np.concatenate([r.targets for r in train]),
            labels,
            layers,
            threshold=0.5,
            regularisation=regularisation,
        )
        for index in np.flatnonzero(fold_of == fold):
            if len(reads[index].features):
                held_out[index] = head.probabilities(reads[index].features)
    table = []
    rules = _micro(reads, [set(r.rules) for r in reads])
    for threshold in THRESHOLDS:
        head_sets = [_head_names(p, labels, threshold) for p in held_out]
        table.append(
            {
                "threshold": threshold,
                "rules": rules,
                "head": _micro(reads, head_sets),
                "rules_and_head": _micro(reads, [h | r.rules for h, r in zip(head_sets, reads, strict=True)]),
            }
        )
    best = max(table, key=lambda row: (row["rules_and_head"]["f1"], row["threshold"]))
    threshold = float(best["threshold"])
    head_sets = [_head_names(p, labels, threshold) for p in held_out]
    added: dict[str, dict[str, float]] = {}
    for name in labels:
        right = wrong = 0
        for read, found in zip(reads, head_sets, strict=True):
            if name in read.rules or name not in found:
                continue
            right, wrong = right + (name in read.names), wrong + (name not in read.names)
        added[name] = {
            "added": right + wrong,
            "right": right,
            "precision": round((right + 1) / (right + wrong + 2), 4),
        }
    return threshold, table, added


def fit_signal_head(
    folder: Path | str,
    data_dir: Path | str | None = None,
    *,
    training_dir: Path | str = DEFAULT_TRAINING_DIR,
    dev_splits: Sequence[str] = DEFAULT_DEV_SPLITS,
    layers: Sequence[int] = DEFAULT_LAYERS,
    regularisation: float = 16.0,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the head for a model folder and attach it (with its summary); returns the summary.

    Refit the route calibration afterwards (``hearken calibrate``): the route confidences it
    calibrates depend on the signals found.
    """
    folder = Path(folder)
    # Verifies the folder once; its features are the served ones. Without its current head (if any):
    # the rules alone, as the new head will be added to them, and a broken old head must not stop a refit.
    pipeline = Pipeline.from_folder(folder, signal_head=False)
    labels = [spec.name for spec in pipeline.signal_lexicon.signals]
    written, hashes = read_signal_training(training_dir, labels, half="tune")
    development = development_examples(dev_splits, data_dir) if dev_splits else []
    examples = written + development
    log.info("reading %d written and %d development messages", len(written), len(development))
    reads = read_examples(pipeline, examples, labels, layers)
    threshold, table, added = cross_validate(
        reads, labels, layers, folds=folds, seed=seed, regularisation=regularisation
    )
    head = SignalHead.fit(
        np.concatenate([r.features for r in reads]),
        np.concatenate([r.targets for r in reads]),
        labels,
        layers,
        threshold=threshold,
        precisions=np.array([added[name]["precision"] for name in labels]),
        regularisation=regularisation,
    )
    chosen = next(row for row in table if row["threshold"] == threshold)
    summary = {
        "method": "one class-balanced logistic regression per signal over L2-normalised pooled sentence "
        "states of encoder layers " + ", ".join(map(str, layers)),
        "added_to": "the rule lexicon: the head reports a signal only when the rules found none of that name",
        "training_files": hashes,
        "written_half": "tune (the check half is held out for scripts/bench_signals.py)",
        "development_splits": list(dev_splits),
        "messages": {"written": len(written), "development": len(development)},
        "sentences": int(sum(len(r.features) for r in reads)),
        "positive_sentences": {
            name: int(sum(r.targets[:, k].sum() for r in reads)) for k, name in enumerate(labels)
        },
        "regularisation": regularisation,
        "precision": pipeline.precision,
        "threshold": threshold,
        "added_beside_the_rules": added,
        "cross_validation": {"folds": folds, "seed": seed, "chosen": chosen, "table": table},
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / SIGNAL_HEAD_FILE
        head.save(path)
        attach_files(
            folder,
            {SIGNAL_HEAD_FILE: path.read_bytes(), SIGNAL_HEAD_SUMMARY: json.dumps(summary, indent=2) + "\n"},
        )
    return summary
