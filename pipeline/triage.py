"""The pipeline object: ``Message`` in, ``TriageResult`` out, through stages with one job each.

normalise → segment → encode (one transformer pass per window, shared by every head) →
find asks → find products → classify → detect signals → route.

The HTTP service, batch re-triage and evaluation all call ``Pipeline.route_batch``; there is no
second inference path, so what is evaluated is exactly what is served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from pipeline.artifact import LoadedModel, load_model
from pipeline.asks import AskFinder
from pipeline.basemodel import offline
from pipeline.config import PipelineConfig
from pipeline.encoder import EncoderOutput, HearkenNet, TextEncoder, load_tokenizer
from pipeline.errors import HearkenError, InputError
from pipeline.normalise import NormalisedMessage, Normaliser, check_text
from pipeline.schema import (
    Ask,
    IntentResult,
    Message,
    ProductResult,
    RouteResult,
    Section,
    TriageResult,
)
from pipeline.segment import Segmenter, Sentence

log = logging.getLogger(__name__)


@dataclass
class Reading:
    """What the stages know about one message; internal, never returned to callers."""

    message: Message
    normalised: NormalisedMessage
    sentences: list[Sentence]
    encoded: EncoderOutput | None = None


class Pipeline:
    """A loaded, verified model and the stages that use it. Thread-compatible for inference."""

    def __init__(
        self, config: PipelineConfig, net: HearkenNet, tokenizer: Tokenizer, model_version: str
    ) -> None:
        self.config = config
        self.model_version = model_version
        self.normaliser = Normaliser(config.normaliser)
        self.segmenter = Segmenter(config.segmenter)
        self.encoder = TextEncoder(net, tokenizer, config.encoder)
        self.ask_finder = AskFinder(config.asks)
        self.head_names = set(net.head_specs)
        self.loaded: LoadedModel | None = None

    @classmethod
    def from_folder(cls, folder: Path | str | None = None) -> Pipeline:
        """Load and verify a model folder (the committed default when ``folder`` is None)."""
        offline()
        model = load_model(folder)
        pipeline = cls(
            model.config, model.net, load_tokenizer(model.tokenizer_path), model.manifest.model_version
        )
        pipeline.loaded = model
        return pipeline

    @property
    def precision(self) -> str:
        return self.encoder.precision

    def with_asks(self, *, threshold: float, max_asks: int) -> Pipeline:
        """The same model and stages with other ask reporting settings (threshold selection, probes).

        Shares the network and tokenizer, so it costs nothing to make and never diverges from
        the pipeline it came from.
        """
        config = self.config.model_copy(deep=True)
        config.asks = config.asks.model_copy(update={"threshold": threshold, "max_asks": max_asks})
        other = Pipeline(config, self.encoder.net, self.encoder.tokenizer, self.model_version)
        other.loaded = self.loaded
        return other

    def score_sentences(self, sentences: Sequence[str]) -> list[float]:
        """Ask probability of each text read as a one-sentence message (sentence-level benchmarks)."""
        outputs = self.encoder.encode(list(sentences), [[(0, len(s))] for s in sentences])
        return [float(o.sentence_probs["ask"][0]) if len(o.sentence_probs["ask"]) else 0.0 for o in outputs]

    def route(self, message: Message | str) -> TriageResult:
        """Route one message; raise ``InputError`` when it cannot be read."""
        if isinstance(message, str):
            message = Message(text=message)
        outcome = self.route_batch([message])[0]
        if isinstance(outcome, HearkenError):
            raise outcome
        return outcome

    def route_batch(self, messages: Sequence[Message]) -> list[TriageResult | HearkenError]:
        """Route many messages in one pass; a message that cannot be read gets its error in place."""
        outcomes: list[TriageResult | HearkenError | None] = [None] * len(messages)
        readings: list[tuple[int, Reading]] = []
        normalised: list[tuple[int, Message, NormalisedMessage]] = []
        for index, message in enumerate(messages):
            try:
                check_text(message.text, self.config.normaliser.max_chars)
                normalised.append((index, message, self.normaliser.normalise(message.text)))
            except InputError as error:
                outcomes[index] = error
        sentence_lists = self.segmenter.segment_many([n.body.text for _, _, n in normalised])
        for (index, message, norm), sentences in zip(normalised, sentence_lists, strict=True):
            readings.append((index, Reading(message, norm, sentences)))
        encoded = self.encoder.encode(
            [r.normalised.body.text for _, r in readings],
            [[(s.start, s.end) for s in r.sentences] for _, r in readings],
        )
        for (index, reading), output in zip(readings, encoded, strict=True):
            reading.encoded = output
            outcomes[index] = self._result(reading)
        return [o for o in outcomes if o is not None]

    def _result(self, reading: Reading) -> TriageResult:
        assert reading.encoded is not None
        message, encoded = reading.message, reading.encoded
        found = []
        if "ask" in encoded.sentence_probs:
            found = self.ask_finder.find(
                message.text, reading.normalised.body, reading.sentences, encoded.sentence_probs["ask"]
            )
        warnings = []
        if not reading.sentences:
            warnings.append("no readable sentences after removing quoted history, signatures and markup")
        route = RouteResult(
            tier=None,
            queue=None,
            confidence=None,
            needs_human_review=True,
            reasons=[
                "this model has no routing policy yet, so no tier was decided; a person should route it"
            ],
        )
        sections = [Section(kind=s.kind, start=s.start, end=s.end) for s in reading.normalised.sections]
        return TriageResult(
            id=message.id,
            language=None,
            asks=[ask for _, ask in found],
            product=self._product(encoded),
            intent=self._intent(encoded, found),
            signals=[],
            route=route,
            model_version=self.model_version,
            sections=sections,
            warnings=warnings,
        )

    def _product(self, encoded: EncoderOutput) -> ProductResult:
        """The product head's calibrated best label over the whole message."""
        probs = encoded.message_probs.get("product")
        if probs is None:
            return ProductResult(reason="this model has no product head")
        labels = self.encoder.head_specs["product"].labels
        best = int(np.argmax(probs))
        return ProductResult(label=labels[best], confidence=round(float(probs[best]), 4))

    def _intent(self, encoded: EncoderOutput, found: list[tuple[int, Ask]]) -> IntentResult:
        """Intent read from the asks (weighted by ask score), never from the opening lines."""
        probs = encoded.sentence_probs.get("intent")
        if probs is None:
            return IntentResult(reason="this model has no intent head")
        if not found:
            return IntentResult(reason="no ask was found to read an intent from")
        weights = np.array([ask.score for _, ask in found])
        mixed = (probs[[index for index, _ in found]] * weights[:, None]).sum(0) / weights.sum()
        labels = self.encoder.head_specs["intent"].labels
        best = int(np.argmax(mixed))
        return IntentResult(label=labels[best], confidence=round(float(mixed[best]), 4))


def load_pipeline(folder: Path | str | None = None) -> Pipeline:
    """Shortcut for ``Pipeline.from_folder``."""
    return Pipeline.from_folder(folder)
