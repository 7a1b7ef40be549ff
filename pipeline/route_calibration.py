"""Calibrated route confidence and the human-review threshold (ROUTING_POLICY §5).

The router's raw confidence (how sure the deciding evidence is) is a useful *ordering* of
messages but not a probability: a regex rule saying 0.9 is not right 90% of the time. So we fit
Platt scaling, ``p = sigmoid(a * raw + b)``, on held-out hand-labelled messages (the dev split of
``data/routing``), where "correct" means the predicted tier equals the labelled one. Two
parameters are all a hundred-odd messages can support; anything richer would fit noise.

The review threshold is then the lowest calibrated confidence at which the messages routed
automatically (confidence at or above it) still meet the policy's target error rate on that same
held-out data; the whole risk-coverage curve is kept so that people can choose another point.
A calibration is valid only for the policy (and lexicons) it was fitted with: its sha256 is
stored, and a pipeline run with another policy falls back to the raw confidence and says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ModelLoadError
from pipeline.evaluation import expected_calibration_error as binned_ece
from pipeline.evaluation import reliability_bins
from pipeline.policy import CalibrationFn

CALIBRATION_FILE = "route_calibration.json"


class CurvePoint(BaseModel):
    """One point of the risk-coverage curve: route automatically at or above ``threshold``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float
    coverage: float = Field(description="Share of messages routed without review.")
    risk: float = Field(description="Tier error rate among the messages routed without review.")


class RouteCalibration(BaseModel):
    """Platt parameters, the chosen review threshold and the evidence they were chosen on."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(default="platt", description="Calibration method.")
    a: float = Field(description="Platt slope.")
    b: float = Field(description="Platt intercept.")
    threshold: float = Field(ge=0, le=1, description="Review below this calibrated confidence.")
    target_error_rate: float = Field(description="Error rate the threshold was chosen to meet.")
    policy_sha256: str = Field(description="Policy fingerprint the calibration is valid for.")
    fitted_on: str = Field(description="Which held-out data the calibration was fitted on.")
    examples: int = Field(description="Number of held-out messages.")
    accuracy: float = Field(description="Tier accuracy on those messages (all routed).")
    coverage: float = Field(description="Share routed automatically at the threshold.")
    risk: float = Field(description="Tier error rate among automatically routed messages at the threshold.")
    ece_raw: float = Field(description="Expected calibration error of the raw confidence.")
    ece_calibrated: float = Field(description="Expected calibration error after Platt scaling.")
    curve: list[CurvePoint] = Field(default_factory=list, description="Risk-coverage curve.")

    def function(self) -> CalibrationFn:
        return CalibrationFn(self.a, self.b, identity=False)


def fit_platt(raw: Sequence[float], correct: Sequence[bool], iterations: int = 100) -> tuple[float, float]:
    """Logistic regression of correctness on the raw confidence (Newton's method, light L2).

    The small ridge keeps the slope finite when the held-out set happens to be separable.
    """
    x = np.asarray(raw, dtype=float)
    y = np.asarray(correct, dtype=float)
    # Platt's target smoothing: never fit hard 0/1 on small samples.
    positives, negatives = y.sum(), len(y) - y.sum()
    target = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = 1.0, 0.0
    ridge = 1e-3
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(a * x + b)))
        w = np.maximum(p * (1 - p), 1e-9)
        grad = np.array([((p - target) * x).sum() + ridge * a, (p - target).sum()])
        hess = np.array([[(w * x * x).sum() + ridge, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-9]])
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Weighted mean gap between confidence and accuracy over equal-width bins (as in evaluation)."""
    return binned_ece(reliability_bins(confidence, correct, bins))


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> list[CurvePoint]:
    """Risk and coverage when routing automatically at or above each observed confidence."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=bool)
    points = []
    for threshold in sorted(set(np.round(conf, 4).tolist()) | {0.0}):
        kept = conf >= threshold - 1e-12
        if not kept.any():
            continue
        points.append(
            CurvePoint(
                threshold=float(threshold),
                coverage=round(float(kept.mean()), 4),
                risk=round(float(1 - hit[kept].mean()), 4),
            )
        )
    return points


def choose_threshold(curve: Sequence[CurvePoint], target_error_rate: float) -> CurvePoint:
    """The lowest threshold (most coverage) whose risk meets the target; the strictest otherwise."""
    meeting = [p for p in curve if p.risk <= target_error_rate]
    if meeting:
        return min(meeting, key=lambda p: p.threshold)
    return max(curve, key=lambda p: p.threshold)


def fit_route_calibration(
    raw: Sequence[float],
    correct: Sequence[bool],
    *,
    target_error_rate: float,
    policy_sha256: str,
    fitted_on: str,
) -> RouteCalibration:
    """Fit Platt scaling and choose the review threshold on held-out routed messages."""
    if len(raw) < 20:
        raise ValueError(f"need at least 20 held-out messages to calibrate, got {len(raw)}")
    a, b = fit_platt(raw, correct)
    function = CalibrationFn(a, b, identity=False)
    calibrated = [round(function(r), 4) for r in raw]
    curve = risk_coverage(calibrated, correct)
    chosen = choose_threshold(curve, target_error_rate)
    return RouteCalibration(
        a=a,
        b=b,
        threshold=chosen.threshold,
        target_error_rate=target_error_rate,
        policy_sha256=policy_sha256,
        fitted_on=fitted_on,
        examples=len(raw),
        accuracy=round(float(np.mean(correct)), 4),
        coverage=chosen.coverage,
        risk=chosen.risk,
        ece_raw=round(expected_calibration_error(raw, correct), 4),
        ece_calibrated=round(expected_calibration_error(calibrated, correct), 4),
        curve=curve,
    )


def read_route_calibration(path: Path) -> RouteCalibration:
    """Read a saved calibration; a broken file is a broken model folder, never silently ignored."""
    try:
        calibration = RouteCalibration.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise ModelLoadError(
            f"{path} is not a valid route calibration ({exc}).",
            fix="re-run `hearken calibrate MODEL` or restore the model folder",
        ) from exc
    if not (math.isfinite(calibration.a) and math.isfinite(calibration.b)):
        raise ModelLoadError(
            f"{path} has non-finite Platt parameters.", fix="re-run `hearken calibrate MODEL`"
        )
    return calibration
