"""The committed default model: it loads, passes the contract, and reads asks the way the
guidelines say (cases written by the team), including on real hand-labelled messages."""

from __future__ import annotations

import pytest
import torch

from pipeline.artifact import DEFAULT_MODEL_DIR, load_model
from pipeline.contract import assert_model_contract
from pipeline.goldsets import ask_hit, load_ask_goldset
from pipeline.schema import Message


def test_default_model_is_small_verified_and_documented():
    model = load_model(DEFAULT_MODEL_DIR)
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size < 100 * 1024 * 1024
    assert model.manifest.weights_dtype == "bfloat16"
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "hearken train --config" in card and "Training data" in card
    assert {d.name for d in model.manifest.training_data}.isdisjoint(
        {"twacs_airline_support", "customer_support_tickets_synthetic", "itsm_ticket_assignment"}
    ), "non-commercial or unlicensed sets stay out of the default model"


def test_default_model_passes_the_contract(default_pipeline):
    assert_model_contract(default_pipeline)


def top_ask(pipeline, text: str) -> str | None:
    result = pipeline.route(text)
    return result.asks[0].text if result.asks else None


def test_the_ask_after_venting_is_found(default_pipeline):
    text = (
        "Why does every bank think it's OK to charge fees for everything? I've been a customer for twelve "
        "years and never once missed a payment. I'd like the overdraft fee from March 3 refunded."
    )
    assert top_ask(default_pipeline, text) == "I'd like the overdraft fee from March 3 refunded."


def test_an_ask_buried_past_the_512th_token_is_found(default_pipeline):
    background = (
        "I opened the checking account at the downtown branch in 2015 and have kept my salary there ever "
        "since, along with a small savings account for my daughter's tuition. "
    )
    text = (
        background * 25
        + "Can you tell me why my debit card was declined at the pharmacy yesterday? "
        + background * 3
    )
    assert len(default_pipeline.encoder.tokenise([text])[0].ids) > 700
    assert (
        top_ask(default_pipeline, text)
        == "Can you tell me why my debit card was declined at the pharmacy yesterday?"
    )


def test_thank_you_notes_and_auto_replies_have_no_asks(default_pipeline):
    for text in (
        "Thank you so much, the refund arrived this morning. Have a great weekend!",
        "Thank you for your email. I am out of the office until Monday with no access to email.",
    ):
        assert default_pipeline.route(text).asks == [], text


def test_several_asks_are_all_reported(default_pipeline):
    text = (
        "Hello. I moved last month. Please change my mailing address to 12 Oak Lane, Springfield. "
        "Also, when will my replacement card arrive?"
    )
    asks = {a.text for a in default_pipeline.route(text).asks}
    assert "Please change my mailing address to 12 Oak Lane, Springfield." in asks
    assert "Also, when will my replacement card arrive?" in asks


def test_quoted_history_asks_are_not_new_asks(default_pipeline):
    text = (
        "Thanks, I have sent the documents.\n\n"
        "On Mon, 6 Jan 2025 at 10:02, Support <help@bank.example> wrote:\n"
        "> Can you send us a copy of your ID and a recent utility bill?\n"
    )
    assert all("utility bill" not in a.text for a in default_pipeline.route(text).asks)


def test_intent_is_read_from_the_ask_not_the_opening_lines(default_pipeline):
    text = (
        "I paid my rent by transfer on Monday and my landlord says nothing came. The amount was taken "
        "from my account the same day. I checked the account details twice. "
        "My new card still hasn't arrived either, it has been two weeks, where is it?"
    )
    result = default_pipeline.route(text)
    assert result.asks and "card" in result.asks[0].text
    assert result.intent.label == "card_arrival"


def test_hand_labelled_dev_split_floor(default_pipeline):
    """Real messages, labelled by the guidelines; the test split is only read by the benchmark."""
    gold = load_ask_goldset("dev")
    results = default_pipeline.route_batch([Message(id=str(i), text=m.text) for i, m in enumerate(gold)])
    with_ask = [(m, r) for m, r in zip(gold, results, strict=True) if m.asks]
    hits = sum(bool(r.asks) and ask_hit((r.asks[0].start, r.asks[0].end), m.asks) for m, r in with_ask)
    # Floors under the trade-off training chose on this split (hit@1 0.661, no-ask recall 0.778;
    # the previous default chose 0.714 / 0.75).
    assert hits / len(with_ask) >= 0.65
    without = [r for m, r in zip(gold, results, strict=True) if not m.asks]
    assert sum(not r.asks for r in without) / len(without) >= 0.7


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_agree_on_the_top_ask(default_pipeline, precision, monkeypatch):
    from pipeline.triage import Pipeline

    monkeypatch.setenv("HEARKEN_PRECISION", precision)
    other = Pipeline.from_folder(default_pipeline.loaded.folder)
    assert other.precision == precision
    weight = other.encoder.net.encoder.encoder.layer[0].attention.self.query.weight
    assert weight.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    text = "My card was swallowed by the ATM on Friday. Can you send me a new one to my home address?"
    assert (
        top_ask(other, text)
        == top_ask(default_pipeline, text)
        == "Can you send me a new one to my home address?"
    )
