"""Benchmark CLINC150 intents and out-of-scope detection (issue 3, item 4), baseline in the same run.

    python scripts/bench_clinc.py --model /tmp/clinc [--out scripts/results/clinc.json]

The model folder must come from ``hearken train --config pipeline/configs/clinc150.yaml``: its
intent head has the 150 in-scope CLINC150 intents (trained on ``train``, selected and
temperature-scaled on ``val``). This script is the only place that reads ``test`` and
``oos_test``. Measured, through the one ``Pipeline.route_batch`` that serving and re-triage use:

1. In-scope accuracy on the 4,500 ``test`` utterances: ``result.intent.label`` against the gold
   intent; a null label (no intent could be read) or an unreadable message counts as wrong.
2. Out-of-scope AUROC, ``test`` (in scope) against the 1,000 ``oos_test`` utterances, of
   ``pipeline.ood.out_of_scope_score`` = 1 − the calibrated intent confidence (maximum softmax
   probability). The v1 result rounds confidences to 4 decimals; ties are counted one half,
   and the number of results at confidence 1.0 is reported so that their effect can be judged.
   When the model folder has an out-of-scope detector (``hearken fit-out-of-scope``), the AUROC
   of its ``intent.out_of_scope`` (Mahalanobis distance to the nearest intent, as a held-out
   percentile) is reported beside it, on the same rows.
3. Baseline, same run and same test rows: TF-IDF word 1-2-grams + char_wb 2-5-grams with
   multinomial logistic regression (C=10) fitted on the in-scope ``train`` split; accuracy and
   AUROC of 1 − its largest class probability.

``--split val`` scores ``val`` and ``oos_val`` instead: development checks (the detector's
shrinkage was chosen there), never the reported number.

Utterances that the segmenter splits into several sentences are counted, with their accuracy:
training reads each utterance as one sentence, while inference reads the intent from its asks.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import corpora  # noqa: E402
from pipeline.errors import ConfigError, HearkenError  # noqa: E402
from pipeline.evaluation import route_in_batches  # noqa: E402
from pipeline.ood import auroc, distance_score, max_softmax_scores, out_of_scope_score  # noqa: E402
from pipeline.schema import Message, TriageResult  # noqa: E402
from pipeline.trainset import CLINC150_OOS, clinc150_labels  # noqa: E402
from pipeline.triage import Pipeline  # noqa: E402

BATCH = 256


def check_model(pipeline: Pipeline) -> None:
    """Refuse a model whose intent head is not CLINC150's: its numbers would mean nothing."""
    heads = pipeline.encoder.head_specs
    if "intent" not in heads:
        raise ConfigError(
            f"Model {pipeline.model_version} has no intent head.",
            fix="train one with `hearken train --config pipeline/configs/clinc150.yaml --output DIR`",
        )
    labels, expected = set(heads["intent"].labels), set(clinc150_labels())
    if labels != expected:
        raise ConfigError(
            f"Model {pipeline.model_version}'s intent head has {len(labels)} labels, "
            f"{len(labels & expected)} of them CLINC150 intents.",
            fix="pass --model a folder trained with pipeline/configs/clinc150.yaml",
        )


def sample(rows: list[corpora.IntentExample], limit: int | None, seed: int) -> list[corpora.IntentExample]:
    """All rows, or (smoke runs only) a seeded random ``limit`` of them."""
    if limit is None or limit >= len(rows):
        return rows
    return random.Random(seed).sample(rows, limit)


def route_all(pipeline: Pipeline, texts: Sequence[str], prefix: str) -> list[TriageResult | HearkenError]:
    messages = [Message(id=f"{prefix}-{i}", text=t) for i, t in enumerate(texts)]
    return list(route_in_batches(pipeline, messages, BATCH))


def hearken(
    pipeline: Pipeline, test: list[corpora.IntentExample], oos: list[corpora.IntentExample]
) -> dict[str, object]:
    started = time.perf_counter()
    test_results = route_all(pipeline, [e.text for e in test], "test")
    oos_results = route_all(pipeline, [e.text for e in oos], "oos")
    seconds = time.perf_counter() - started
    predicted = [r.intent.label if isinstance(r, TriageResult) else None for r in test_results]
    correct = np.array([p == e.label for p, e in zip(predicted, test, strict=True)])
    scores = np.array(
        [out_of_scope_score(r) if isinstance(r, TriageResult) else 1.0 for r in test_results + oos_results]
    )
    labels = np.r_[np.zeros(len(test), dtype=int), np.ones(len(oos), dtype=int)]
    split = np.array(
        [len(pipeline.segmenter.segment(pipeline.normaliser.normalise(e.text).body.text)) > 1 for e in test]
    )
    results = [r for r in test_results + oos_results if isinstance(r, TriageResult)]
    has_detector = any(r.intent.out_of_scope is not None for r in results)
    distances = np.array(
        [distance_score(r) if isinstance(r, TriageResult) else 1.0 for r in test_results + oos_results]
    )
    return {
        "in_scope_accuracy": float(correct.mean()),
        "oos_auroc": auroc(scores, labels),
        "oos_auroc_distance": auroc(distances, labels) if has_detector else None,
        "in_scope_null_intent": sum(p is None for p in predicted),
        "errors": sum(isinstance(r, HearkenError) for r in test_results + oos_results),
        "confidence_1.0": {
            "in_scope": int((scores[: len(test)] == 0.0).sum()),
            "out_of_scope": int((scores[len(test) :] == 0.0).sum()),
        },
        "mean_out_of_scope_score": {
            "in_scope": float(scores[: len(test)].mean()),
            "out_of_scope": float(scores[len(test) :].mean()),
        },
        "segmented_into_several_sentences": {
            "in_scope": int(split.sum()),
            "their_accuracy": float(correct[split].mean()) if split.any() else None,
            "others_accuracy": float(correct[~split].mean()) if (~split).any() else None,
        },
        "seconds": round(seconds, 1),
        "messages_per_second": round((len(test) + len(oos)) / seconds, 1),
    }


def baseline(
    train: list[corpora.IntentExample], test: list[corpora.IntentExample], oos: list[corpora.IntentExample]
) -> dict[str, object]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    started = time.perf_counter()
    model = make_pipeline(
        FeatureUnion(
            [
                ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
            ]
        ),
        LogisticRegression(C=10.0, max_iter=1000),
    )
    model.fit([e.text for e in train], [e.label for e in train])
    probs = model.predict_proba([e.text for e in test + oos])
    classes = model.classes_
    predicted = classes[probs[: len(test)].argmax(1)]
    labels = np.r_[np.zeros(len(test), dtype=int), np.ones(len(oos), dtype=int)]
    return {
        "name": "TF-IDF word 1-2 + char_wb 2-5, logistic regression C=10, fitted on CLINC150 train",
        "in_scope_accuracy": float(np.mean(predicted == np.array([e.label for e in test]))),
        "oos_auroc": auroc(max_softmax_scores(probs), labels),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="folder trained with clinc150.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "clinc.json")
    parser.add_argument(
        "--limit", type=int, default=None, help="smoke runs only: sample this many per test split"
    )
    parser.add_argument("--no-baseline", action="store_true", help="smoke runs only: skip the baseline")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--split", choices=["test", "val"], default="test", help="val: development checks only"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipeline = Pipeline.from_folder(args.model)
    try:
        check_model(pipeline)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    train = [e for e in corpora.read_clinc150("train") if e.label != CLINC150_OOS]
    test = sample(corpora.read_clinc150(args.split), args.limit, args.seed)
    oos = sample(corpora.read_clinc150(f"oos_{args.split}"), args.limit, args.seed)
    started = time.time()
    report: dict[str, object] = {
        "command": "python " + " ".join(sys.argv),
        "model_version": pipeline.model_version,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "precision": pipeline.precision,
        },
        "data": {
            "split": args.split,
            "in_scope_test": len(test),
            "oos_test": len(oos),
            "train_for_baseline": len(train),
        },
        "goals": {"in_scope_accuracy": 0.965, "oos_auroc": 0.97},
        "hearken": hearken(pipeline, test, oos),
        "baseline": None if args.no_baseline else baseline(train, test, oos),
    }
    report["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
