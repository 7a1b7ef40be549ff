"""The find-asks stage: turn per-sentence ask probabilities into the result's ``asks``.

Sentences are scored by the encoder in context; this stage only decides which to report
(threshold chosen on held-out data, best first) and maps them back to original offsets so a
helpdesk can highlight exactly what the customer asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import AskConfig
from pipeline.schema import Ask
from pipeline.segment import Sentence
from pipeline.textmap import MappedText


class AskFinder:
    """Select asks from scored sentences."""

    def __init__(self, config: AskConfig) -> None:
        self.config = config

    def find(
        self, original: str, body: MappedText, sentences: Sequence[Sentence], ask_probs: np.ndarray
    ) -> list[tuple[int, Ask]]:
        """(sentence index, ask) above threshold, best first, at most ``max_asks``, original offsets."""
        order = np.argsort(-ask_probs, kind="stable")
        asks: list[tuple[int, Ask]] = []
        for index in order[: self.config.max_asks]:
            score = float(ask_probs[index])
            if score < self.config.threshold:
                break
            sentence = sentences[int(index)]
            start, end = body.to_original(sentence.start, sentence.end)
            asks.append(
                (int(index), Ask(text=original[start:end], start=start, end=end, score=round(score, 4)))
            )
        return asks
