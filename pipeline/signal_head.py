"""A learned signal head: escalation signals the rule lexicon has no phrase for.

The rule lexicon (``pipeline.signals``) is precise on the phrasings it knows and blind to the
rest: on 2,000 team-written messages it had never seen it found 56% of the signals (precision
0.77), against 0.9+ on the development sets it was written from. Customers say "this is the
fourth card and it's dead like the others" in more ways than a lexicon can list. This head
reads every sentence's meaning instead: one logistic regression per signal over the sentence's
pooled middle-layer states of the shared encoder, taken from the same forward pass that scores
asks, intents and products (no second encoder pass; a [sentences, 768] x [768, signals] product).

Why middle layers, and why frozen: the last layer is fine-tuned towards asks, intents and
products, and in a grouped cross-validation on the development sets it separated signals worst
(message-level micro-F1 0.41 at layer 6 against 0.60 at layers 3-4, base weights no better).
Fitting a regression on frozen states takes seconds and never moves the other heads' numbers.

The head adds to the rules, it does not replace them: a signal the rules found keeps the rules'
evidence; the head adds a signal only when the rules found none of that name in the message, with
the most likely sentence as evidence. Its one threshold is chosen by cross-validation on the
fitting data for the best micro-F1 of rules and head together (``pipeline.signal_head_fitting``).

Measured (stop 17), and why the committed default model carries no head. Cross-validated on the
fitting messages, rules and head together reach micro-F1 0.77 against 0.68 for the rules alone.
On the routing test split, though, signal micro-F1 went 0.713 -> 0.701 (precision 0.75 -> 0.64,
recall 0.68 -> 0.77), tier-3 recall 0.820 -> 0.852, tier accuracy 0.752 -> 0.709, and the share sent
to review 12% -> 40%. About half of what the head adds beside the rules is wrong. So it is a tool
for teams whose own tickets the rules do not fit (``hearken fit-signals MODEL``), not a default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from pipeline.errors import DataError, ModelLoadError
from pipeline.schema import Signal
from pipeline.segment import Sentence
from pipeline.textmap import MappedText

#: The head's file in a model folder (listed and hashed in the manifest like every file).
SIGNAL_HEAD_FILE = "signal_head.safetensors"
#: Encoder layers (1-based) whose pooled outputs the head reads, side by side.
DEFAULT_LAYERS = (3, 4)
_KIND = "hearken-signal-head-logistic"


def layers_for(num_layers: int) -> tuple[int, ...]:
    """The default layers an encoder of ``num_layers`` has; its middle layer when it has fewer."""
    return tuple(layer for layer in DEFAULT_LAYERS if layer <= num_layers) or (max(1, num_layers // 2),)


@dataclass(frozen=True, eq=False)  # arrays: identity, not element-wise, equality
class SignalHead:
    """Per-signal logistic regressions over L2-normalised, pooled middle-layer sentence states.

    ``weights`` [signals, features] and ``bias`` [signals]; ``layers`` are the encoder layers
    whose per-sentence means are concatenated into the features; a sentence shows a signal when
    its probability exceeds ``threshold``. ``precisions`` [signals] is how often, in
    cross-validation, a signal the head added beside the rules was right: the score it reports,
    since the route confidence of an escalation is its signal's score, and a raw probability of
    0.99 from a head that is right three times in four would send wrong escalations past review.
    """

    labels: tuple[str, ...]
    layers: tuple[int, ...]
    weights: np.ndarray
    bias: np.ndarray
    threshold: float
    precisions: np.ndarray

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct and at least one")
        if not self.layers or any(layer < 1 for layer in self.layers):
            raise ValueError("layers must be 1-based layer numbers, at least one")
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.labels):
            raise ValueError(f"weights must be [{len(self.labels)}, features], got {self.weights.shape}")
        if self.weights.shape[1] % len(self.layers):
            raise ValueError(
                f"weights' width {self.weights.shape[1]} is not a multiple of {len(self.layers)} layers"
            )
        if self.bias.shape != (len(self.labels),):
            raise ValueError(f"bias must be [{len(self.labels)}], got {self.bias.shape}")
        if not (np.isfinite(self.weights).all() and np.isfinite(self.bias).all()):
            raise ValueError("weights or bias hold NaN or infinite values")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be within (0, 1), got {self.threshold}")
        if self.precisions.shape != (len(self.labels),) or not (
            np.isfinite(self.precisions).all() and ((self.precisions >= 0) & (self.precisions <= 1)).all()
        ):
            raise ValueError(f"precisions must be [{len(self.labels)}] values within [0, 1]")
        # In torch, not numpy: numpy's BLAS threads fight torch's for the cores (see pipeline.ood).
        object.__setattr__(
            self, "_weights_t", torch.from_numpy(np.ascontiguousarray(self.weights.T, dtype=np.float32))
        )
        object.__setattr__(
            self, "_bias_t", torch.from_numpy(np.ascontiguousarray(self.bias, dtype=np.float32))
        )

    @property
    def width(self) -> int:
        """Features per sentence: the hidden size times the number of tapped layers."""
        return int(self.weights.shape[1])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Probability of each signal for each sentence: [sentences, features] -> [sentences, signals]."""
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32).reshape(-1, self.width))
        with torch.inference_mode():
            x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-9)
            return torch.sigmoid(x @ self._weights_t + self._bias_t).double().numpy()

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        targets: np.ndarray,
        labels: Sequence[str],
        layers: Sequence[int],
        *,
        threshold: float,
        precisions: np.ndarray | None = None,
        regularisation: float = 16.0,
    ) -> SignalHead:
        """One class-balanced logistic regression per signal on sentence features and 0/1 targets.

        ``regularisation`` is scikit-learn's ``C`` (larger fits harder). Balanced class weights,
        because a signal shows in about one sentence in thirty. A signal with fewer than three
        positive sentences cannot be learned: its regression is left at zero weights and a bias
        that never fires, so the rules alone decide it. ``precisions`` default to one half each
        (unknown) until measured.
        """
        from sklearn.linear_model import LogisticRegression  # only fitting needs scikit-learn

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets)
        if x.ndim != 2 or y.shape != (len(x), len(labels)):
            raise DataError(
                f"features {x.shape} and targets {y.shape} do not fit {len(labels)} signals",
                fix="build both with pipeline.signal_head_fitting",
            )
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        weights = np.zeros((len(labels), x.shape[1]))
        bias = np.full(len(labels), -30.0)
        for k in range(len(labels)):
            if y[:, k].sum() < 3 or y[:, k].sum() == len(y):
                continue
            model = LogisticRegression(C=regularisation, max_iter=3000, class_weight="balanced")
            model.fit(x, y[:, k])
            weights[k], bias[k] = model.coef_[0], model.intercept_[0]
        measured = (
            np.full(len(labels), 0.5) if precisions is None else np.asarray(precisions, dtype=np.float64)
        )
        return cls(
            tuple(labels),
            tuple(layers),
            weights.astype(np.float32),
            bias.astype(np.float32),
            threshold,
            measured,
        )

    def save(self, path: Path) -> None:
        meta = {"labels": list(self.labels), "layers": list(self.layers), "threshold": self.threshold}
        save_file(
            {"weights": self.weights, "bias": self.bias, "precisions": self.precisions.astype(np.float64)},
            str(path),
            metadata={"kind": _KIND, "version": "1", "head": json.dumps(meta)},
        )

    @classmethod
    def load(cls, path: Path, hidden_size: int, num_layers: int) -> SignalHead:
        """Read and check a head file against the encoder it must read (width and layer count)."""
        fix = "rebuild it with `hearken fit-signals MODEL`, or restore the model folder"
        try:
            with safe_open(str(path), framework="np") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not iterable
            meta = json.loads(metadata["head"])
            if metadata.get("kind") != _KIND:
                raise ValueError(f"kind is {metadata.get('kind')!r}, not {_KIND!r}")
            head = cls(
                tuple(str(label) for label in meta["labels"]),
                tuple(int(layer) for layer in meta["layers"]),
                tensors["weights"],
                tensors["bias"],
                float(meta["threshold"]),
                tensors["precisions"],
            )
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}).", fix=fix) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a valid signal head: {exc}.", fix=fix) from exc
        if max(head.layers) > num_layers or head.width != hidden_size * len(head.layers):
            raise ModelLoadError(
                f"{path} reads layers {list(head.layers)} at width {head.width}; this encoder has "
                f"{num_layers} layers of width {hidden_size}.",
                fix=fix,
            )
        return head


def head_signals(
    head: SignalHead,
    probabilities: np.ndarray,
    sentences: Sequence[Sentence],
    body: MappedText,
    *,
    already_found: set[str],
    allowed: set[str],
) -> list[Signal]:
    """The head's signals for one message body, as results: one per signal name, at most.

    A name the rules ``already_found`` (in the body or quoted history) keeps the rules' evidence;
    a name the policy does not define (not in ``allowed``) is never reported, so a head fitted
    for one policy cannot invent signals for another. The evidence is the sentence the head is
    surest of, with its span in the original text; the score is the head's measured precision
    for that signal (``SignalHead.precisions``), not the sentence's raw probability.
    """
    found: list[Signal] = []
    if not len(sentences) or probabilities.shape != (len(sentences), len(head.labels)):
        return found
    original = body.original
    for k, name in enumerate(head.labels):
        if name in already_found or name not in allowed:
            continue
        best = int(np.argmax(probabilities[:, k]))
        if float(probabilities[best, k]) <= head.threshold:
            continue
        start, end = body.to_original(sentences[best].start, sentences[best].end)
        text = original[start:end]
        found.append(
            Signal(
                name=name,
                start=start,
                end=end,
                text=text,
                evidence=text,
                score=round(float(head.precisions[k]), 4),
            )
        )
    return found
