"""The pipeline object on the tiny random model: plumbing, spans and bad input (not accuracy)."""

from __future__ import annotations

import pytest

from pipeline.contract import assert_model_contract, check_result
from pipeline.errors import InputError
from pipeline.schema import Message, TriageResult


def test_tiny_model_passes_the_model_contract(tiny_pipeline):
    assert_model_contract(tiny_pipeline)


def test_spans_index_the_original_text_after_normalisation(tiny_pipeline):
    text = (
        "<p>Dear team,</p><p>On XX/XX/2023 I paid {$120.00} &amp; nothing arrived.</p>"
        "<p>Can you  refund   me?</p><p>Regards,<br>Ann</p>"
    )
    message = Message(id="x", text=text)
    result = tiny_pipeline.route(message)
    check_result(message, result)
    # with the threshold at zero every sentence is reported, so every sentence span is checked
    probe = tiny_pipeline.with_asks(threshold=0.0, max_asks=50)
    result = probe.route(message)
    texts = [a.text for a in result.asks]
    assert any("Can you  refund   me?" in t for t in texts)
    assert any("{$120.00} &amp; nothing arrived." in t for t in texts)
    assert not any("Ann" in t for t in texts), "the signature is not read as an ask"


def test_quoted_history_is_set_aside_and_not_read_as_asks(tiny_pipeline):
    text = "Thanks, that works.\n\nOn Mon, 2 Jan 2023, Bank <a@b.example> wrote:\n> Can you send your ID?\n"
    result = tiny_pipeline.route(Message(id="q", text=text))
    history = [s for s in result.sections if s.kind == "quoted_history"]
    assert history and text[history[0].start : history[0].end].lstrip().startswith("On Mon")
    assert all("send your ID" not in a.text for a in result.asks)


def test_twenty_thousand_character_message_is_read_to_the_end(tiny_pipeline):
    background = "We have banked with you for many years and the branch staff were always helpful. "
    text = background * 240 + "Please send me the closing statement for account ending 4411."
    assert len(text) > 19_000
    probe = tiny_pipeline.with_asks(threshold=0.0, max_asks=1000)
    result = probe.route(text)
    assert any(a.text.startswith("Please send me the closing statement") for a in result.asks)
    assert result.asks and max(a.end for a in result.asks) == len(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   \n  ", "empty"),
        ("abc\x00def", "NUL"),
        ("x" * 200_001, "200,000"),
    ],
)
def test_unreadable_text_is_refused_with_a_reason(tiny_pipeline, text, fragment):
    with pytest.raises(InputError) as raised:
        tiny_pipeline.route(text)
    assert fragment.lower() in str(raised.value).lower()
    assert "Fix:" in str(raised.value)


def test_batch_keeps_order_and_puts_errors_in_place(tiny_pipeline):
    messages = [
        Message(id="a", text="Where is my card?"),
        Message(id="b", text=""),
        Message(id="c", text="Hi."),
    ]
    outcomes = tiny_pipeline.route_batch(messages)
    assert isinstance(outcomes[0], TriageResult) and outcomes[0].id == "a"
    assert isinstance(outcomes[1], InputError)
    assert isinstance(outcomes[2], TriageResult) and outcomes[2].id == "c"


def test_message_that_is_only_quoted_history_still_gets_a_result(tiny_pipeline):
    text = "> Can you confirm the payment?\n> Thanks"
    result = tiny_pipeline.route(text)
    check_result(Message(id=result.id, text=text), result)


def test_fields_a_model_cannot_decide_are_null_with_reasons(tiny_pipeline):
    # The tiny model has an ask head only: no product head (and no catalogue name in the text),
    # no intent head. The route is still decided, by the policy.
    result = tiny_pipeline.route("Can I change my PIN online?")
    assert result.product.label is None and result.product.reason
    assert result.intent.label is None and result.intent.reason
    assert result.route.tier in {"none", "tier1", "tier2", "tier3"} and result.route.reasons


def test_the_lexicons_in_use_are_the_ones_the_policy_hash_describes(tiny_pipeline, tmp_path):
    """A lexicon edited on disk after the policy was read must not slip in under the old hash."""
    import shutil

    from pipeline.policy import DEFAULT_POLICY, load_policy
    from pipeline.triage import Pipeline

    folder = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY.parent, folder)
    bundle = load_policy(folder)
    (folder / "signals.yaml").write_text("not: [a, valid lexicon")
    (folder / "catalogue.yaml").write_text("products: 7")
    pipeline = Pipeline(
        tiny_pipeline.config,
        tiny_pipeline.encoder.net,
        tiny_pipeline.encoder.tokenizer,
        tiny_pipeline.model_version,
        policy=bundle,
    )
    result = pipeline.route("I will take legal action if my credit card refund is not paid this week.")
    assert [s.name for s in result.signals] == ["legal_threat"]
    assert [m.product_id for m in result.product.mentions] == ["credit_card"]
    assert load_policy(folder).sha256 != bundle.sha256


def _pipeline_like(pipeline, **segmenter):
    from pipeline.triage import Pipeline

    config = pipeline.config.model_copy(deep=True)
    config.segmenter = config.segmenter.model_copy(update=segmenter)
    return Pipeline(
        config,
        pipeline.encoder.net,
        pipeline.encoder.tokenizer,
        pipeline.model_version,
        policy=pipeline.policy,
    )


def test_spacy_stages_are_rebuilt_on_a_fresh_vocabulary_and_results_do_not_change(tiny_pipeline):
    """spaCy keeps every word it has seen; a long-running service must not grow with its traffic."""
    messages = [
        f"Order ZX{n}Q{n * 7} was charged twice and I will report you to the CFPB. "
        f"Reference word{n}alpha word{n}beta. Can you refund it?"
        for n in range(12)
    ]
    renewing = _pipeline_like(tiny_pipeline, renew_vocabulary_after=10)
    steady = _pipeline_like(tiny_pipeline, renew_vocabulary_after=0)
    first = renewing._text
    renewed = [renewing.route(Message(id=str(i), text=m)) for i, m in enumerate(messages)]
    expected = [steady.route(Message(id=str(i), text=m)) for i, m in enumerate(messages)]
    assert renewing._text is not first  # rebuilt at least once
    assert renewing._text.english is not first.english
    assert renewing._text.grown_by() <= 10 + 20  # the fresh vocabulary holds at most the last message's words
    assert [r.model_dump() for r in renewed] == [e.model_dump() for e in expected]
    assert all(any(s.name == "regulator_threat" for s in r.signals) for r in renewed)


def test_vocabulary_is_never_renewed_when_switched_off(tiny_pipeline):
    steady = _pipeline_like(tiny_pipeline, renew_vocabulary_after=0)
    first = steady._text
    for n in range(5):
        steady.route(f"Never seen before: qq{n}zz{n} kk{n}ww{n}.")
    assert steady._text is first
