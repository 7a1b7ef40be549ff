"""Out-of-scope scoring: how unlike every intent the model knows a message is, and how well it separates.

A helpdesk model meets messages that fit none of its intents; routing them to the nearest intent
with high confidence is worse than handing them to a person. The score used here is the maximum
softmax probability baseline (Hendrycks & Gimpel, 2017): one minus the calibrated confidence of
the best intent, read from the v1 result exactly as a caller sees it. Temperature scaling on dev
data does not change the ranking within a model, so AUROC of this score measures the model and
not the calibration.

The benchmark (``scripts/bench_clinc.py``) reports AUROC: the chance that a random out-of-scope
message scores above a random in-scope one, which needs no threshold. It is computed here with
numpy (ties count one half, the Mann-Whitney convention), so the project needs no metrics
library for it and the tests pin it on hand-computed cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import DataError
from pipeline.schema import TriageResult


def out_of_scope_score(result: TriageResult) -> float:
    """1 − the intent's calibrated confidence; 1.0 when no intent could be read at all.

    A result without an intent label (no readable sentence) recognised nothing in scope, so it
    is scored as out of scope. Callers that benchmark a model must check that it has an intent
    head first: every result of a model without one would score 1.0 and mean nothing.
    """
    confidence = result.intent.confidence
    if result.intent.label is None or confidence is None:
        return 1.0
    return float(1.0 - confidence)


def max_softmax_scores(probs: np.ndarray) -> np.ndarray:
    """Out-of-scope scores from class probabilities ``[n, n_classes]``: 1 − the largest per row.

    The same score as :func:`out_of_scope_score`, for classifiers outside the pipeline (the
    TF-IDF baseline), so that both are compared on one definition.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"expected probabilities of shape [n, n_classes], got {probs.shape}")
    return 1.0 - probs.max(axis=1)


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int | bool] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (1/True = out of scope, the positive).

    Computed from average ranks (Mann-Whitney U): ``(R₊ − n₊(n₊+1)/2) / (n₊·n₋)``, where ``R₊``
    is the sum of the positives' ranks; tied scores share their average rank, so a tie between
    a positive and a negative counts one half. 1.0 means every out-of-scope message scores above
    every in-scope one, 0.5 a coin toss.
    """
    values = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(labels)
    if values.ndim != 1 or values.shape != gold.shape:
        raise ValueError(
            f"scores and labels must be 1-D and of equal length, got {values.shape} and {gold.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite numbers (found NaN or infinity)")
    if not np.isin(gold, (0, 1)).all():
        raise ValueError("labels must be 0/1 or booleans (1 = out of scope)")
    positive = gold.astype(bool)
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        raise DataError(
            f"AUROC needs both classes; got {n_positive} out-of-scope and {n_negative} in-scope examples.",
            fix="evaluate on a set with both in-scope and out-of-scope messages",
        )
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average rank per tie group
    u = ranks[positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u / (n_positive * n_negative))
