"""How the message intent is read from the asks: in context, averaged with each ask read alone."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import AskConfig, PipelineConfig
from pipeline.encoder import HeadSpec
from pipeline.triage import Pipeline
from tests.conftest import build_tiny_model

HEADS = [
    HeadSpec(name="ask", level="sentence", kind="binary", labels=["not_ask", "ask"]),
    HeadSpec(name="intent", level="sentence", kind="multiclass", labels=["card_arrival", "refund", "other"]),
]
TEXT = "I moved house last month. My new card never arrived. Where is it?"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Pipeline]:
    # Threshold 0: every sentence is an ask, so the weighting by ask score is exercised too.
    config = PipelineConfig(asks=AskConfig(threshold=0.0, max_asks=5, intent_alone_min_words=5))
    folder = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-intent", heads=HEADS, config=config)
    both = Pipeline.from_folder(folder)
    off_config = both.config.model_copy(deep=True)
    off_config.asks.intent_reads_ask_alone_too = False
    in_context_only = Pipeline(off_config, both.encoder.net, both.encoder.tokenizer, both.model_version)
    return both, in_context_only


def expected_intent(pipeline: Pipeline, text: str, read_alone: bool) -> tuple[str, float]:
    sentences = pipeline.segmenter.segment(text)
    spans = [(s.start, s.end) for s in sentences]
    encoded = pipeline.encoder.encode([text], [spans])[0]
    scores, probs = encoded.sentence_probs["ask"], encoded.sentence_probs["intent"]
    readings = []
    for index, (start, end) in enumerate(spans):
        reading = probs[index]
        if read_alone:
            sentence = text[start:end]
            alone = pipeline.encoder.encode([sentence], [[(0, len(sentence))]])[0].sentence_probs["intent"][0]
            share = pipeline.config.asks.intent_alone_weight
            reading = (1.0 - share) * reading + share * alone
        readings.append(reading)
    mixed = (np.stack(readings) * scores[:, None]).sum(0) / scores.sum()
    best = int(np.argmax(mixed))
    return HEADS[1].labels[best], round(float(mixed[best]), 4)


def test_each_ask_is_read_in_context_and_alone(pipelines: tuple[Pipeline, Pipeline]) -> None:
    both, in_context_only = pipelines
    result = both.route(TEXT)
    assert len(result.asks) == 3
    assert (result.intent.label, result.intent.confidence) == expected_intent(both, TEXT, read_alone=True)
    plain = in_context_only.route(TEXT)
    assert (plain.intent.label, plain.intent.confidence) == expected_intent(both, TEXT, read_alone=False)
    assert result.intent.confidence != plain.intent.confidence


def test_a_one_sentence_message_is_read_once(pipelines: tuple[Pipeline, Pipeline]) -> None:
    both, in_context_only = pipelines
    text = "Where is my new card?"
    assert both.route(text).intent == in_context_only.route(text).intent


def test_batch_and_single_routing_agree(pipelines: tuple[Pipeline, Pipeline]) -> None:
    both, _ = pipelines
    texts = [TEXT, "Where is my new card?", "Refund me. The charge was wrong. I never ordered it."]
    batch = both.route_batch([both_message(t) for t in texts])
    for text, result in zip(texts, batch, strict=True):
        single = both.route(text).intent
        assert result.intent.label == single.label
        assert result.intent.confidence == pytest.approx(single.confidence, abs=2e-3)  # bf16 batching


def both_message(text: str):  # type: ignore[no-untyped-def]
    from pipeline.schema import Message

    return Message(text=text)


def test_a_short_message_is_read_in_context_only(pipelines: tuple[Pipeline, Pipeline]) -> None:
    both, in_context_only = pipelines
    text = "Lost it. What now?"  # two sentences, under intent_alone_min_words (5)
    assert both.route(text).intent == in_context_only.route(text).intent


def test_the_reading_alone_weighs_what_the_config_says(pipelines: tuple[Pipeline, Pipeline]) -> None:
    both, _ = pipelines
    assert both.config.asks.intent_alone_weight == 0.75  # the default, chosen on dev compositions
    halves_config = both.config.model_copy(deep=True)
    halves_config.asks.intent_alone_weight = 0.5
    halves = Pipeline(halves_config, both.encoder.net, both.encoder.tokenizer, both.model_version)
    result = halves.route(TEXT).intent
    assert (result.label, result.confidence) == expected_intent(halves, TEXT, read_alone=True)
    assert result.confidence != both.route(TEXT).intent.confidence


def test_setting_is_saved_with_the_model_config() -> None:
    assert PipelineConfig().asks.intent_reads_ask_alone_too is True
    dumped = PipelineConfig().model_dump()["asks"]
    assert "intent_reads_ask_alone_too" in dumped and dumped["intent_alone_weight"] == 0.75
    with pytest.raises(ValueError):
        AskConfig(intent_alone_weight=0.0)
