"""Product catalogue: loading and validation, mentions with original offsets, and settling a product."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.catalogue import (
    DEFAULT_CATALOGUE,
    Catalogue,
    MentionFinder,
    load_catalogue,
    mention_votes,
    parse_catalogue,
    settle_product,
)
from pipeline.corpora import PRODUCT_LABELS
from pipeline.errors import ConfigError
from pipeline.normalise import Normaliser
from pipeline.schema import Mention
from pipeline.textmap import MappedText


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(DEFAULT_CATALOGUE, allowed_labels=PRODUCT_LABELS)


@pytest.fixture(scope="module")
def finder(catalogue: Catalogue) -> MentionFinder:
    return MentionFinder(catalogue)


def _found(finder: MentionFinder, text: str) -> list[tuple[str, str]]:
    return [(m.text, m.product_id or "") for m in finder.find(MappedText.identity(text))]


# ---------------------------------------------------------------------------- the default catalogue


def test_default_catalogue_covers_every_policy_label_within_size(catalogue: Catalogue) -> None:
    assert catalogue.labels == set(PRODUCT_LABELS)
    assert 100 <= catalogue.alias_count <= 250


def test_default_catalogue_has_no_ambiguous_single_words(catalogue: Catalogue) -> None:
    aliases = {alias.lower() for entry in catalogue.products for alias in entry.aliases}
    for word in ("card", "cards", "account", "loan", "loans", "lease", "checking", "wire", "transfer"):
        assert word not in aliases


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I sent $400 by Zelle and it never came.", [("Zelle", "p2p_payment")]),
        (
            "my CREDIT-CARD and my credit cards",
            [("CREDIT-CARD", "credit_card"), ("credit cards", "credit_card")],
        ),
        (
            "Equifax and TransUnion both show it",
            [("Equifax", "credit_bureau"), ("TransUnion", "credit_bureau")],
        ),
        (
            "the HELOC payment and the escrow account",
            [("HELOC", "home_equity"), ("escrow account", "escrow")],
        ),
        ("Navient lost my FAFSA form", [("Navient", "student_loan_servicer"), ("FAFSA", "student_loan")]),
        ("a debt collector keeps calling", [("debt collector", "debt_collector")]),
        # Longest match wins where aliases overlap.
        ("I used my Visa debit card.", [("Visa debit card", "debit_card")]),
        ("I used my Visa.", [("Visa", "visa_credit")]),
        ("they took my car title loan", [("car title loan", "title_loan")]),
        ("a debt consolidation loan", [("debt consolidation loan", "personal_loan")]),
        ("they offered debt consolidation", [("debt consolidation", "debt_settlement")]),
        # Whole tokens only, and no ambiguous single words.
        ("Visas for travel, a card, an account and a loan.", []),
    ],
)
def test_mentions_found(finder: MentionFinder, text: str, expected: list[tuple[str, str]]) -> None:
    assert _found(finder, text) == expected


def test_mentions_index_the_original_through_normalisation(finder: MentionFinder) -> None:
    original = (
        "<html><body><p>Hello,</p><p>I paid my&nbsp;CREDIT&nbsp;CARD from my checking account &amp; "
        "then by Zelle.</p>\r\n<p>Thanks</p></body></html>"
    )
    body = Normaliser().normalise(original).body
    mentions = finder.find(body)
    assert [m.product_id for m in mentions] == ["credit_card", "checking_account", "p2p_payment"]
    for mention in mentions:
        assert original[mention.start : mention.end] == mention.text
    assert mentions[0].text == "CREDIT&nbsp;CARD"  # the original characters, entity and all
    assert [m.start for m in mentions] == sorted(m.start for m in mentions)


def test_hard_wrapped_names_match_but_not_across_paragraphs(finder: MentionFinder) -> None:
    assert _found(finder, "I lost my credit\ncard yesterday") == [("credit\ncard", "credit_card")]
    assert _found(finder, "my credit\n\ncard") == []


def test_find_many_equals_find(finder: MentionFinder) -> None:
    texts = ["Zelle and Venmo", "nothing here", "my student loans and my mortgage"]
    bodies = [MappedText.identity(t) for t in texts]
    assert finder.find_many(bodies) == [finder.find(b) for b in bodies]


# ---------------------------------------------------------------------------- validation


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_ids_are_refused_naming_file_and_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "products:\n"
        "  - {id: zelle, label: money_transfer, aliases: [zelle]}\n"
        "  - {id: zelle, label: money_transfer, aliases: [zelle pay]}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_catalogue(path, PRODUCT_LABELS)
    assert str(path) in str(info.value) and "'zelle' is used twice" in str(info.value)
    assert info.value.exit_code == 5


def test_label_outside_allowed_set_is_refused_with_its_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "products:\n"
        "  - {id: zelle, label: money_transfer, aliases: [zelle]}\n"
        "  - {id: bnpl, label: buy_now_pay_later, aliases: [klarna]}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_catalogue(path, PRODUCT_LABELS)
    message = str(info.value)
    assert "products[1] (id bnpl).label" in message and "'buy_now_pay_later'" in message
    # Without an allowed set the same file loads: the label check belongs to the policy.
    assert load_catalogue(path).entry("bnpl") is not None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("products:\n  - {id: a, label: mortgage, aliases: []}\n", "products[0] (id a).aliases"),
        ("products:\n  - {id: a, label: mortgage, aliases: ['  ']}\n", "an alias is empty"),
        ("products:\n  - {id: a, label: mortgage}\n", "products[0] (id a).aliases: Field required"),
        ("products:\n  - {id: a, label: mortgage, aliases: [x], colour: red}\n", "colour"),
        ("products:\n  - {id: Bad Id, label: mortgage, aliases: [x]}\n", "lower-case letters"),
        ("products: []\n", "products"),
        (
            "products:\n  - {id: a, label: mortgage, aliases: [Escrow]}\n"
            "  - {id: b, label: mortgage, aliases: ['escrow ']}\n",
            "belongs to both 'a' and 'b'",
        ),
        ("products:\n  - {id: a, label: mortgage, aliases: [x, X]}\n", "listed twice"),
        ("- just a list\n", "must be a mapping"),
        ("products: [\n", "not valid YAML"),
    ],
)
def test_invalid_catalogues_fail_with_the_key(tmp_path: Path, body: str, needle: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_catalogue(path, PRODUCT_LABELS)
    assert needle in str(info.value)
    assert "Fix:" in str(info.value)


def test_missing_catalogue_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_catalogue(tmp_path / "nope.yaml")


def test_parse_catalogue_names_its_source() -> None:
    with pytest.raises(ConfigError, match="policy-x"):
        parse_catalogue({"products": "zelle"}, "policy-x")


# ---------------------------------------------------------------------------- settling a product


def _m(text: str, start: int, product_id: str) -> Mention:
    return Mention(text=text, start=start, end=start + len(text), product_id=product_id)


ZELLE = [_m("Zelle", 10, "p2p_payment"), _m("zelle", 80, "p2p_payment")]
CARD = [_m("credit card", 40, "credit_card")]


def test_confident_classifier_stands_whatever_is_named(catalogue: Catalogue) -> None:
    assert settle_product("mortgage", 0.91, ZELLE, catalogue, 0.6) == ("mortgage", 0.91, None)
    # Exactly at the threshold counts as confident.
    assert settle_product("mortgage", 0.6, ZELLE, catalogue, 0.6) == ("mortgage", 0.6, None)


def test_unsure_classifier_is_overruled_by_the_named_product(catalogue: Catalogue) -> None:
    label, confidence, reason = settle_product("mortgage", 0.41, ZELLE, catalogue, 0.6)
    assert (label, confidence) == ("money_transfer", None)
    assert reason is not None
    assert "mortgage at 0.41, below 0.60" in reason and "'Zelle', 'zelle' (2 mentions)" in reason


def test_count_beats_position_and_ties_go_to_the_earliest(catalogue: Catalogue) -> None:
    assert settle_product("mortgage", 0.3, [*CARD, *ZELLE], catalogue, 0.6)[0] == "money_transfer"
    tie = [_m("credit card", 5, "credit_card"), _m("Zelle", 20, "p2p_payment")]
    assert settle_product("mortgage", 0.3, tie, catalogue, 0.6)[0] == "credit_card"
    assert settle_product("mortgage", 0.3, tie[::-1], catalogue, 0.6)[0] == "credit_card"
    assert [label for label, _ in mention_votes([*CARD, *ZELLE], catalogue)] == [
        "money_transfer",
        "credit_card",
    ]


def test_agreeing_mentions_keep_the_classifier_confidence(catalogue: Catalogue) -> None:
    label, confidence, reason = settle_product("credit_card", 0.45, CARD, catalogue, 0.6)
    assert (label, confidence) == ("credit_card", 0.45)
    assert reason is not None and "agrees" in reason


def test_nothing_named_leaves_the_classifier(catalogue: Catalogue) -> None:
    assert settle_product("mortgage", 0.2, [], catalogue, 0.6) == ("mortgage", 0.2, None)
    label, confidence, reason = settle_product(None, None, [], catalogue, 0.6)
    assert (label, confidence) == (None, None)
    assert reason is not None and "names no catalogue product" in reason
    unknown = [_m("thing", 0, "not_in_this_catalogue")]
    assert settle_product("mortgage", 0.2, unknown, catalogue, 0.6) == ("mortgage", 0.2, None)


def test_model_without_product_head_gets_the_named_product(catalogue: Catalogue) -> None:
    label, confidence, reason = settle_product(None, None, CARD, catalogue, 0.6)
    assert (label, confidence) == ("credit_card", None)
    assert reason is not None and "gave no product" in reason


def test_min_confidence_must_be_a_probability(catalogue: Catalogue) -> None:
    with pytest.raises(ValueError, match="min_confidence"):
        settle_product("mortgage", 0.5, [], catalogue, 1.5)
