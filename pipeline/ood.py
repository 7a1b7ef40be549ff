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

A second, better score is the Mahalanobis distance (Lee et al., 2018; Podolskiy et al., 2021) of
an ask's representation to the nearest intent: class means and one shared covariance of the
vectors the intent head reads, fitted on the intent training file (``OutOfScopeDetector``).
Softmax confidence only sees how the head's 77 or 150 boundaries cut the space, so a message far
from every intent can still land deep inside one region; the distance sees that it is far. On
CLINC150 validation data the distance separates out-of-scope queries better than the maximum
softmax probability of the same model (AUROC 0.984 against 0.952). A model folder carries the
detector as ``out_of_scope.safetensors`` and results report it as ``intent.out_of_scope``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from pipeline.errors import DataError, ModelLoadError
from pipeline.schema import TriageResult

#: The detector's file in a model folder (listed and hashed in the manifest like every file).
OUT_OF_SCOPE_FILE = "out_of_scope.safetensors"
#: Covariance shrinkage towards a scaled identity: with 50-150 utterances per intent in 384
#: dimensions the pooled covariance is poorly conditioned; 0.1 was chosen on CLINC150 validation
#: data (AUROC 0.9830 unshrunk, 0.9837 at 0.1).
DEFAULT_SHRINKAGE = 0.1
#: Points of the held-out in-scope distance distribution kept to turn a distance into a percentile.
N_QUANTILES = 201


@dataclass(frozen=True, eq=False)  # arrays: identity, not element-wise, equality
class OutOfScopeDetector:
    """Distance from a sentence vector to the nearest known intent, as a held-out percentile.

    ``means`` [intents, dim] are the class means of the intent head's input vectors over the
    intent training file; ``whitening`` [dim, dim] is a Cholesky factor of the inverse of their
    shared (shrunk) covariance, so the squared Mahalanobis distance to intent ``c`` is
    ``|(x - means[c]) @ whitening|²``. ``quantiles`` are that minimum distance over held-out
    in-scope utterances at evenly spaced ranks: a message's score is the share of held-out
    in-scope utterances that lie closer to an intent than it does (0.99: farther than 99% of
    them), so a threshold reads the same for every model.
    """

    means: np.ndarray
    whitening: np.ndarray
    quantiles: np.ndarray

    def __post_init__(self) -> None:
        n, dim = self.means.shape if self.means.ndim == 2 else (0, 0)
        if n < 1 or dim < 1:
            raise ValueError(f"means must be [intents, dim], got shape {self.means.shape}")
        if self.whitening.shape != (dim, dim):
            raise ValueError(f"whitening must be [{dim}, {dim}], got shape {self.whitening.shape}")
        if self.quantiles.ndim != 1 or len(self.quantiles) < 2 or np.any(np.diff(self.quantiles) < 0):
            raise ValueError("quantiles must be a non-decreasing 1-D array of at least two values")
        for name in ("means", "whitening", "quantiles"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} holds NaN or infinite values")
        # Whitened centres, once: routing then costs one [pieces, dim] x [dim, dim] product a batch.
        # In torch, not numpy: numpy's BLAS keeps its own spinning threads, which fight torch's for
        # the same two cores (measured: routing at half speed with the product done in numpy).
        whitening = torch.from_numpy(np.ascontiguousarray(self.whitening, dtype=np.float32))
        centres = torch.from_numpy(np.ascontiguousarray(self.means, dtype=np.float32)) @ whitening
        object.__setattr__(self, "_whitening_t", whitening)
        object.__setattr__(self, "_centres_t", centres)
        object.__setattr__(self, "_centre_norms_t", centres.double().pow(2).sum(1))

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        labels: Sequence[int],
        held_out: np.ndarray,
        shrinkage: float = DEFAULT_SHRINKAGE,
    ) -> OutOfScopeDetector:
        """Fit class means and a shared covariance on ``vectors``; rank distances of ``held_out``.

        The held-out vectors must be in scope and unseen by the Gaussian fit: their distances
        define what an ordinary in-scope message looks like.
        """
        x = np.asarray(vectors, dtype=np.float64)
        y = np.asarray(labels)
        if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
            raise DataError(
                f"need at least two labelled vectors to fit, got {x.shape} and {len(y)} labels",
                fix="fit on the intent training file of the model",
            )
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError("shrinkage must be within [0, 1]")
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        covariance = centred.T @ centred / len(x)
        scale = np.trace(covariance) / covariance.shape[0]
        covariance = (1.0 - shrinkage) * covariance + (shrinkage * scale + 1e-6) * np.eye(len(covariance))
        whitening = np.linalg.cholesky(np.linalg.inv(covariance))
        detector = cls(means, whitening, np.array([0.0, 1.0]))
        distances = detector.distances(np.asarray(held_out, dtype=np.float64))
        if len(distances) < 2:
            raise DataError(
                "need at least two held-out in-scope vectors to rank distances",
                fix="keep a dev share of the intent training file",
            )
        quantiles = np.quantile(distances, np.linspace(0.0, 1.0, N_QUANTILES))
        return cls(means.astype(np.float32), whitening.astype(np.float32), quantiles.astype(np.float64))

    def distances(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``vectors`` [n, dim] to its nearest intent."""
        if isinstance(vectors, torch.Tensor):
            x = vectors.detach().float().reshape(-1, self.dim)
        else:
            x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        with torch.inference_mode():
            projected = x @ self._whitening_t
            squared = (
                projected.double().pow(2).sum(1)[:, None]
                - 2.0 * (projected @ self._centres_t.T).double()
                + self._centre_norms_t[None, :]
            )
            return squared.min(dim=1).values.clamp(min=0.0).numpy()

    def scores(self, distances: np.ndarray) -> np.ndarray:
        """Share of held-out in-scope utterances nearer to an intent than each distance, in [0, 1]."""
        ranks = np.linspace(0.0, 1.0, len(self.quantiles))
        return np.interp(np.asarray(distances, dtype=np.float64), self.quantiles, ranks)

    def save(self, path: Path) -> None:
        save_file(
            {"means": self.means, "whitening": self.whitening, "quantiles": self.quantiles},
            str(path),
            metadata={"kind": "hearken-out-of-scope-mahalanobis", "version": "1"},
        )

    @classmethod
    def load(cls, path: Path, dim: int) -> OutOfScopeDetector:
        """Read and check a detector file; ``dim`` is the width of the encoder it must match."""
        fix = "rebuild it with `hearken fit-out-of-scope MODEL`, or restore the model folder"
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}).", fix=fix) from exc
        missing = {"means", "whitening", "quantiles"} - set(tensors)
        if missing:
            raise ModelLoadError(f"{path} lacks {sorted(missing)}.", fix=fix)
        try:
            detector = cls(tensors["means"], tensors["whitening"], tensors["quantiles"])
        except ValueError as exc:
            raise ModelLoadError(f"{path} is not a valid out-of-scope detector: {exc}.", fix=fix) from exc
        if detector.dim != dim:
            raise ModelLoadError(
                f"{path} was fitted on {detector.dim}-wide vectors; this encoder gives {dim}.", fix=fix
            )
        return detector


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


def distance_score(result: TriageResult) -> float:
    """The detector's ``intent.out_of_scope``; 1.0 when no intent could be read at all."""
    if result.intent.label is None or result.intent.out_of_scope is None:
        return 1.0
    return float(result.intent.out_of_scope)


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
