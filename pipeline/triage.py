"""The pipeline object: ``Message`` in, ``TriageResult`` out, through stages with one job each.

normalise → segment → encode (one transformer pass per window, shared by every head) →
find asks → find products → classify → detect signals → route.

The HTTP service, batch re-triage and evaluation all call ``Pipeline.route_batch``; there is no
second inference path, so what is evaluated is exactly what is served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import spacy
from spacy.language import Language
from tokenizers import Tokenizer

from pipeline.artifact import LoadedModel, load_model
from pipeline.asks import AskFinder
from pipeline.basemodel import offline
from pipeline.catalogue import Catalogue, MentionFinder, load_catalogue, settle_product
from pipeline.config import PipelineConfig
from pipeline.encoder import EncoderOutput, HearkenNet, TextEncoder, load_tokenizer
from pipeline.english import shared_english
from pipeline.errors import HearkenError, InputError
from pipeline.language import LanguageDetector, start_loading_identifier
from pipeline.normalise import NormalisedMessage, Normaliser, check_text
from pipeline.ood import OUT_OF_SCOPE_FILE, OutOfScopeDetector
from pipeline.policy import (
    POLICY_FILE,
    AskEvidence,
    CalibrationFn,
    PolicyBundle,
    RouteEvidence,
    Router,
    load_policy,
    route_result,
)
from pipeline.route_calibration import CALIBRATION_FILE, RouteCalibration, read_route_calibration
from pipeline.schema import (
    Ask,
    IntentResult,
    Mention,
    Message,
    ProductResult,
    Section,
    Signal,
    TriageResult,
)
from pipeline.segment import Segmenter, Sentence
from pipeline.signal_head import SIGNAL_HEAD_FILE, SignalHead, head_signals
from pipeline.signals import SignalDetector, SignalLexicon, load_signal_lexicon

log = logging.getLogger(__name__)


def load_model_policy(model: LoadedModel, policy: Path | str | None = None) -> PolicyBundle:
    """The routing policy for ``model``: ``policy`` when given (a YAML file or its folder), else the one
    saved in the model folder, else the packaged default.

    Serving (``Pipeline.from_folder``) and calibrating (``hearken calibrate``) both choose through
    here, so a calibration is always fitted for the policy the model is then served with.
    """
    if policy is not None:
        return load_policy(policy)
    if POLICY_FILE in model.extra_files:
        return load_policy(model.folder / POLICY_FILE)
    return load_policy()


@dataclass(frozen=True)
class TextStages:
    """The spaCy stages (segment, signals, product mentions), built together on one vocabulary.

    Why a unit: spaCy adds every word it tokenises to its vocabulary, so the stages are replaced
    together, on a fresh vocabulary, once it has grown by ``segmenter.renew_vocabulary_after`` words.
    A call that started on the old stages finishes on them (it holds this object), so a renewal
    never mixes a document from one vocabulary with a matcher from another.
    """

    english: Language
    segmenter: Segmenter
    signal_detector: SignalDetector
    mention_finder: MentionFinder | None
    words_at_start: int

    @classmethod
    def build(
        cls, english: Language, config: PipelineConfig, lexicon: SignalLexicon, catalogue: Catalogue | None
    ) -> TextStages:
        return cls(
            english,
            Segmenter(config.segmenter, english=english),
            SignalDetector(lexicon, config.signals, english=english),
            MentionFinder(catalogue, english=english) if catalogue is not None else None,
            len(english.vocab),
        )

    def grown_by(self) -> int:
        """New words in the vocabulary since these stages were built."""
        return len(self.english.vocab) - self.words_at_start


@dataclass
class Reading:
    """What the stages know about one message; internal, never returned to callers."""

    message: Message
    normalised: NormalisedMessage
    sentences: list[Sentence]
    history_sentences: list[list[Sentence]]
    encoded: EncoderOutput | None = None
    asks: list[tuple[int, Ask]] = field(default_factory=list)
    intent_alone: dict[int, np.ndarray] = field(default_factory=dict)  # sentence index -> intent probs


_REPLACEMENT_SHARE = 0.05


def is_readable(text: str, sentences: list[Sentence]) -> bool:
    """Whether there is anything a person could read: sentences with letters, not mojibake."""
    letters = sum(ch.isalpha() for ch in text)
    return bool(sentences) and letters >= 3 and text.count("\ufffd") <= _REPLACEMENT_SHARE * len(text)


class Pipeline:
    """A loaded, verified model and the stages that use it. Thread-compatible for inference."""

    def __init__(
        self,
        config: PipelineConfig,
        net: HearkenNet,
        tokenizer: Tokenizer,
        model_version: str,
        policy: PolicyBundle | None = None,
        calibration: RouteCalibration | None = None,
    ) -> None:
        self.config = config
        self.model_version = model_version
        self.normaliser = Normaliser(config.normaliser)
        self.encoder = TextEncoder(net, tokenizer, config.encoder)
        self.ask_finder = AskFinder(config.asks)
        self.language = LanguageDetector(config.language)
        self.head_names = set(net.head_specs)
        self.loaded: LoadedModel | None = None
        self.policy = policy or load_policy()
        self.router = Router(self.policy)
        rules = self.policy.policy
        # The lexicons are parsed from the text the bundle read and hashed, never re-read from disk:
        # the calibration's policy hash then always describes the rules actually in use.
        texts = self.policy.texts
        self.signal_lexicon = load_signal_lexicon(
            self.policy.folder / rules.signals_file, texts.get(rules.signals_file)
        )
        self.catalogue = (
            load_catalogue(
                self.policy.folder / rules.catalogue_file,
                allowed_labels=rules.products,
                text=texts.get(rules.catalogue_file),
            )
            if rules.catalogue_file
            else None
        )
        self._text = TextStages.build(shared_english(), config, self.signal_lexicon, self.catalogue)
        self._renewing = threading.Lock()
        self.calibration = calibration
        if calibration is not None and calibration.policy_sha256 == self.policy.sha256:
            self.calibrate: CalibrationFn = calibration.function()
            self.review_threshold = calibration.threshold
            self.calibrated = True
        else:
            if calibration is not None:
                log.warning(
                    "the model's route calibration was fitted for another policy; route confidences are "
                    "uncalibrated (re-run `hearken calibrate` for policy %s)",
                    rules.name,
                )
            self.calibrate = CalibrationFn()
            self.review_threshold = rules.review.uncalibrated_threshold
            self.calibrated = False

    @classmethod
    def from_folder(
        cls, folder: Path | str | None = None, policy: Path | str | None = None, *, signal_head: bool = True
    ) -> Pipeline:
        """Load and verify a model folder (the committed default when ``folder`` is None).

        The routing policy is ``policy`` when given (a YAML file or its folder), else the one saved
        in the model folder, else the packaged default; its calibration is used only if it was
        fitted for exactly that policy. ``signal_head=False`` leaves the learned signal head
        unread (fitting a new one must not need the old one to load).
        """
        offline()
        start_loading_identifier()  # overlaps its decompression with loading the model
        model = load_model(folder, for_inference=True)
        bundle = load_model_policy(model, policy)
        calibration = None
        if CALIBRATION_FILE in model.extra_files:
            calibration = read_route_calibration(model.folder / CALIBRATION_FILE)
        pipeline = cls.from_model(model, policy=bundle, calibration=calibration, signal_head=signal_head)
        pipeline.encoder.store_weights_for_precision()  # the folder's network is ours alone
        return pipeline

    @classmethod
    def from_model(
        cls,
        model: LoadedModel,
        *,
        policy: PolicyBundle,
        calibration: RouteCalibration | None,
        signal_head: bool = True,
    ) -> Pipeline:
        """A pipeline on an already loaded model folder, with the policy and calibration given.

        For callers that must choose the calibration themselves (fitting one needs the raw
        confidences, so no calibration at all), without loading and verifying the folder twice.
        """
        pipeline = cls(
            model.config,
            model.net,
            load_tokenizer(model.tokenizer_path),
            model.manifest.model_version,
            policy=policy,
            calibration=calibration,
        )
        pipeline.loaded = model
        if OUT_OF_SCOPE_FILE in model.extra_files and "intent" in model.net.head_specs:
            pipeline.encoder.out_of_scope = OutOfScopeDetector.load(
                model.folder / OUT_OF_SCOPE_FILE, model.net.encoder.settings.hidden_size
            )
        if signal_head and SIGNAL_HEAD_FILE in model.extra_files:
            settings = model.net.encoder.settings
            pipeline.encoder.signal_head = SignalHead.load(
                model.folder / SIGNAL_HEAD_FILE, settings.hidden_size, settings.num_hidden_layers
            )
        return pipeline

    @property
    def precision(self) -> str:
        return self.encoder.precision

    @property
    def segmenter(self) -> Segmenter:
        return self._text.segmenter

    @property
    def signal_detector(self) -> SignalDetector:
        return self._text.signal_detector

    @property
    def mention_finder(self) -> MentionFinder | None:
        return self._text.mention_finder

    def with_asks(self, *, threshold: float, max_asks: int) -> Pipeline:
        """The same model and stages with other ask reporting settings (threshold selection, probes).

        Shares the network and tokenizer, so it costs nothing to make and never diverges from
        the pipeline it came from.
        """
        config = self.config.model_copy(deep=True)
        config.asks = config.asks.model_copy(update={"threshold": threshold, "max_asks": max_asks})
        other = Pipeline(
            config,
            self.encoder.net,
            self.encoder.tokenizer,
            self.model_version,
            policy=self.policy,
            calibration=self.calibration,
        )
        other.loaded = self.loaded
        other.encoder.out_of_scope = self.encoder.out_of_scope
        other.encoder.signal_head = self.encoder.signal_head
        return other

    def score_sentences(self, sentences: Sequence[str]) -> list[float]:
        """Ask probability of each text read as a one-sentence message (sentence-level benchmarks)."""
        outputs = self.encoder.encode(
            list(sentences), [[(0, len(s))] for s in sentences], out_of_scope=False, signals=False
        )
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
        text = self._text  # this call's spaCy stages, even if they are renewed meanwhile
        sentence_lists = text.segmenter.segment_many([n.body.text for _, _, n in normalised])
        history_texts = [h.text for _, _, n in normalised for h in n.history]
        history_lists = iter(text.segmenter.segment_many(history_texts))
        for (index, message, norm), sentences in zip(normalised, sentence_lists, strict=True):
            history = [next(history_lists) for _ in norm.history]
            readings.append((index, Reading(message, norm, sentences, history)))
        encoded = self.encoder.encode(
            [r.normalised.body.text for _, r in readings],
            [[(s.start, s.end) for s in r.sentences] for _, r in readings],
        )
        for (_, reading), output in zip(readings, encoded, strict=True):
            reading.encoded = output
            ask_probs = output.sentence_probs.get("ask")
            if ask_probs is not None:
                reading.asks = self.ask_finder.find(
                    reading.message.text, reading.normalised.body, reading.sentences, ask_probs
                )
        self._read_intent_sentences_alone([r for _, r in readings])
        for index, reading in readings:
            outcomes[index] = self._result(reading, text)
        self._renew_text_stages_if_grown(text)
        return [o for o in outcomes if o is not None]

    def _renew_text_stages_if_grown(self, used: TextStages) -> None:
        """Rebuild the spaCy stages on a fresh vocabulary once it has grown past the configured limit."""
        limit = self.config.segmenter.renew_vocabulary_after
        if not limit or used.grown_by() <= limit:
            return
        with self._renewing:
            if self._text is not used:
                return  # another thread renewed them already
            if used.english is shared_english():
                shared_english.cache_clear()  # let the grown vocabulary go once nobody holds it
            self._text = TextStages.build(spacy.blank("en"), self.config, self.signal_lexicon, self.catalogue)
            log.info(
                "spaCy vocabulary grew by %d words; text stages rebuilt on a fresh vocabulary",
                used.grown_by(),
            )

    def _intent_sentences(self, reading: Reading) -> list[int]:
        """The sentences the intent is read from: the asks, else the single most ask-like sentence."""
        if reading.asks:
            return [index for index, _ in reading.asks]
        assert reading.encoded is not None
        ask_probs = reading.encoded.sentence_probs.get("ask")
        return [int(np.argmax(ask_probs)) if ask_probs is not None and len(ask_probs) else 0]

    def _read_intent_sentences_alone(self, readings: Sequence[Reading]) -> None:
        """Read the intent sentences of multi-sentence messages alone too, in one batched pass.

        A one-sentence message is already read alone, and in a short one the context is what makes
        a terse ask readable, so only messages of ``asks.intent_alone_min_words`` words or more get it.
        """
        settings = self.config.asks
        if not settings.intent_reads_ask_alone_too or "intent" not in self.encoder.head_specs:
            return
        wanted: list[tuple[Reading, int, str]] = []
        for reading in readings:
            body = reading.normalised.body.text
            if len(reading.sentences) < 2 or len(body.split()) < settings.intent_alone_min_words:
                continue
            for index in self._intent_sentences(reading):
                sentence = reading.sentences[index]
                wanted.append((reading, index, body[sentence.start : sentence.end]))
        if not wanted:
            return
        alone = self.encoder.encode(
            [t for _, _, t in wanted],
            [[(0, len(t))] for _, _, t in wanted],
            out_of_scope=False,
            signals=False,
        )
        for (reading, index, _), output in zip(wanted, alone, strict=True):
            probs = output.sentence_probs["intent"]
            if len(probs) and output.sentence_scored[0]:
                reading.intent_alone[index] = probs[0]

    def _result(self, reading: Reading, text: TextStages) -> TriageResult:
        assert reading.encoded is not None
        message, encoded, body = reading.message, reading.encoded, reading.normalised.body
        found = reading.asks
        ask_probs = encoded.sentence_probs.get("ask")
        warnings = []
        readable = is_readable(body.text, reading.sentences)
        if not reading.sentences:
            warnings.append("no readable sentences after removing quoted history, signatures and markup")
        language = self.language.detect(body.text)[0] if readable else None
        signals = [
            signal.model_copy(update={"escalating": self.router.is_escalating(signal)})
            for signal in self._signals(reading, text)
        ]
        mentions = text.mention_finder.find(body) if text.mention_finder is not None else []
        product = self._product(encoded, mentions)
        intent = self._intent(reading)
        evidence = RouteEvidence(
            asks=self._ask_evidence(encoded, found),
            signals=signals,
            product=product.label,
            body=body.text,
            best_sentence_ask_score=float(ask_probs.max())
            if ask_probs is not None and len(ask_probs)
            else 0.0,
            language=language,
            readable=readable,
        )
        route = route_result(self.router, evidence, self.calibrate, self.review_threshold, self.calibrated)
        sections = [Section(kind=s.kind, start=s.start, end=s.end) for s in reading.normalised.sections]
        return TriageResult(
            id=message.id,
            language=language,
            asks=[ask for _, ask in found],
            product=product,
            intent=intent,
            signals=signals,
            route=route,
            model_version=self.model_version,
            sections=sections,
            warnings=warnings,
        )

    def _signals(self, reading: Reading, text: TextStages) -> list[Signal]:
        """The rules' signals, plus those only the learned head found (see ``pipeline.signal_head``)."""
        found = text.signal_detector.detect(reading.normalised, reading.sentences, reading.history_sentences)
        head, encoded = self.encoder.signal_head, reading.encoded
        if head is None or encoded is None or encoded.sentence_signal_probs is None:
            return found
        learned = head_signals(
            head,
            encoded.sentence_signal_probs,
            reading.sentences,
            reading.normalised.body,
            already_found={signal.name for signal in found},
            allowed={spec.name for spec in self.signal_lexicon.signals},
        )
        return sorted([*found, *learned], key=lambda signal: (signal.start, signal.end, signal.name))

    def _ask_evidence(self, encoded: EncoderOutput, found: list[tuple[int, Ask]]) -> list[AskEvidence]:
        """Each ask's text and score with the intent read from its own sentence in context."""
        probs = encoded.sentence_probs.get("intent")
        labels = self.encoder.head_specs["intent"].labels if probs is not None else []
        evidence = []
        for index, ask in found:
            if probs is None:
                evidence.append(AskEvidence(ask.text, ask.score))
                continue
            best = int(np.argmax(probs[index]))
            evidence.append(AskEvidence(ask.text, ask.score, labels[best], float(probs[index][best])))
        return evidence

    def _product(self, encoded: EncoderOutput, mentions: list[Mention]) -> ProductResult:
        """The product head's calibrated label over the whole message, settled by mentions when unsure."""
        probs = encoded.message_probs.get("product")
        label: str | None = None
        confidence: float | None = None
        if probs is not None:
            labels = self.encoder.head_specs["product"].labels
            best = int(np.argmax(probs))
            label, confidence = labels[best], float(probs[best])
        if self.catalogue is None:
            if label is None:
                return ProductResult(reason="this model has no product head and the policy no catalogue")
            return ProductResult(label=label, confidence=round(confidence or 0.0, 4), mentions=mentions)
        settled, sure, why = settle_product(
            label, confidence, mentions, self.catalogue, self.policy.policy.min_product_confidence
        )
        if settled is None:
            return ProductResult(mentions=mentions, reason=why)
        if sure is None and probs is not None and settled in self.encoder.head_specs["product"].labels:
            # A name match is not a probability; the head's own probability of that label is.
            sure = float(probs[self.encoder.head_specs["product"].labels.index(settled)])
        return ProductResult(
            label=settled, confidence=None if sure is None else round(sure, 4), mentions=mentions, reason=why
        )

    def _intent(self, reading: Reading) -> IntentResult:
        """Intent read from the asks (weighted by ask score), never from the opening lines.

        With no ask above the reporting threshold, the intent is read from the single most
        ask-like sentence: a one-line query ("card still not here") is often scored below the
        threshold yet is plainly what the customer wants, and the tier never depends on it then.
        Each sentence's reading in context is averaged with its reading alone where there is one
        (``asks.intent_reads_ask_alone_too``), the reading alone weighing ``asks.intent_alone_weight``.
        """
        assert reading.encoded is not None
        probs = reading.encoded.sentence_probs.get("intent")
        if probs is None:
            return IntentResult(reason="this model has no intent head")
        if not len(probs):
            return IntentResult(reason="no sentence was read to take an intent from")
        labels = self.encoder.head_specs["intent"].labels
        sentences, alone = self._intent_sentences(reading), reading.intent_alone
        found = reading.asks
        weights = np.array([ask.score for _, ask in found]) if found else np.ones(len(sentences))
        share = self.config.asks.intent_alone_weight
        readings = np.stack(
            [(1.0 - share) * probs[i] + share * alone[i] if i in alone else probs[i] for i in sentences]
        )
        mixed = (readings * weights[:, None]).sum(0) / weights.sum()
        best = int(np.argmax(mixed))
        out_of_scope = reading.encoded.sentence_out_of_scope
        return IntentResult(
            label=labels[best],
            confidence=round(float(mixed[best]), 4),
            out_of_scope=None
            if out_of_scope is None
            else round(float((out_of_scope[sentences] * weights).sum() / weights.sum()), 4),
        )


def load_pipeline(folder: Path | str | None = None) -> Pipeline:
    """Shortcut for ``Pipeline.from_folder``."""
    return Pipeline.from_folder(folder)
