"""The contract every Hearken model must pass, whatever its weights (flair's habit).

One function, used by the tests for the tiny random model, for the committed default model
and for any model an ML engineer trains before promoting it: it checks the *shape* of
behaviour that integrations rely on, not accuracy.
"""

from __future__ import annotations

from pipeline.errors import InputError
from pipeline.schema import Message, TriageResult
from pipeline.triage import Pipeline

CONTRACT_MESSAGES = [
    Message(id="plain", text="My debit card was charged twice at the pharmacy. Can you refund one of them?"),
    Message(
        id="email",
        text=(
            "Hello,\n\nI still have not received the replacement card you promised on the phone.\n"
            "Could you tell me when it will arrive?\n\nThanks,\nDana\nSent from my iPhone\n\n"
            "On Tue, 4 Mar 2025 at 09:12, Support <help@bank.example> wrote:\n"
            "> Please tell us your new address.\n> We will send the card."
        ),
    ),
    Message(
        id="html", text="<html><body><p>Where is my transfer&nbsp;from last week?</p><br>Thanks</body></html>"
    ),
    Message(id="chat", text="hi i lost my card yesterday can you block it also i need a new one thanks"),
    Message(
        id="cfpb", text="On XX/XX/2023 XXXX XXXX charged me {$25.00} for a fee I never agreed to. Remove it."
    ),
    Message(
        id="long",
        text=("I opened the account in 2019 and used it every month without trouble. " * 300)
        + "Please close the account and send me a cheque for the balance.",
    ),
    Message(id="unicode", text="Mon virement n’est pas arrivé 😡 — where is it?\u200b"),
]


def check_result(message: Message, result: TriageResult) -> None:
    """Invariants of one v1 result against the message it came from."""
    assert result.schema_version == "1"
    assert result.id == message.id
    assert result.model_version
    TriageResult.model_validate_json(result.model_dump_json())  # serialises and re-validates
    scores = [a.score for a in result.asks]
    assert scores == sorted(scores, reverse=True), "asks must be ordered by score, best first"
    history = [(s.start, s.end) for s in result.sections if s.kind == "quoted_history"]
    for span in [*result.asks, *result.product.mentions, *result.signals]:
        assert 0 <= span.start < span.end <= len(message.text), "span outside the message"
        assert message.text[span.start : span.end] == span.text, "span text must index the original text"
    for ask in result.asks:
        assert not any(hs <= ask.start and ask.end <= he for hs, he in history), (
            "quoted history is not an ask"
        )
    for label, confidence in (
        (result.product.label, result.product.confidence),
        (result.intent.label, result.intent.confidence),
    ):
        assert label is not None or confidence is None, "a confidence needs a label"
    if result.route.tier is None:
        assert result.route.needs_human_review and result.route.reasons


def assert_model_contract(pipeline: Pipeline) -> None:
    """Raise AssertionError if the pipeline breaks the v1 contract on the contract messages."""
    batch = pipeline.route_batch(CONTRACT_MESSAGES)
    assert len(batch) == len(CONTRACT_MESSAGES)
    policy = pipeline.policy.policy
    tiers = {tier.name for tier in policy.tiers}
    for message, result in zip(CONTRACT_MESSAGES, batch, strict=True):
        assert isinstance(result, TriageResult), f"{message.id}: {result}"
        check_result(message, result)
        route = result.route
        assert route.tier in tiers, f"{message.id}: tier {route.tier!r} is not one of the policy's {tiers}"
        assert route.queue and route.reasons and route.confidence is not None
        if any(signal.escalating for signal in result.signals):
            assert route.tier == policy.escalation_tier, "an escalating signal must force the escalation tier"
        alone = pipeline.route(message)
        assert [(a.start, a.end) for a in alone.asks] == [(a.start, a.end) for a in result.asks], (
            "routing alone and in a batch must agree"
        )
        for a, b in zip(alone.asks, result.asks, strict=True):
            assert abs(a.score - b.score) < 0.02
    for bad in ("", "   \n\t ", "\x00\x01\x02binary\x00"):
        outcome = pipeline.route_batch([Message(id="bad", text=bad)])[0]
        assert isinstance(outcome, InputError), f"{bad!r} must be refused with an InputError"
