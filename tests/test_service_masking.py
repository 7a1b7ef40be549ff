"""Masking of personal data: what must be masked, what must stay readable, and properties that always hold."""

from __future__ import annotations

import logging
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.service.masking import (
    ALL_PII_KINDS,
    Masker,
    MaskingLogFilter,
    iban_valid,
    luhn_valid,
)

MASKER = Masker()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # cards: Luhn-valid 13-19 digits, plain or grouped with spaces or dashes
        ("Card 4111 1111 1111 1111 was charged twice", "Card [card] was charged twice"),
        ("card 4111-1111-1111-1111.", "card [card]."),
        ("visa 4012888888881881", "visa [card]"),
        ("amex 3782 822463 10005 please", "amex [card] please"),
        ("old visa 4222222222222", "old visa [card]"),  # 13 digits
        ("19 digits 6011 0009 9013 9424 009", "19 digits [card]"),
        ("a 20-digit reference 12345678901234567890", "a 20-digit reference 12345678901234567890"),
        ("4111 1111 1111 1111 5 times", "[card] 5 times"),  # a card followed by another number
        ("(4111111111111111)", "([card])"),
        # account numbers: 8-17 digit runs near an account word, and IBANs anywhere
        ("my account number is 12345678901, thanks", "my account number is [account], thanks"),
        ("acct# 000123456789", "acct# [account]"),
        ("checking 9876 5432 10 was frozen", "checking [account] was frozen"),
        ("12345678 is my savings", "[account] is my savings"),
        ("routing 021000021 and account 1234567890", "routing [account] and account [account]"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN [account] please"),
        ("transfer to DE89370400440532013000 failed", "transfer to [account] failed"),
        ("Account ending 4321 was charged", "Account ending 4321 was charged"),  # too short to identify
        # e-mail addresses
        ("email me at john.doe+x@mail.example.co.uk.", "email me at [email]."),
        ("<jane_o'neil@example.org>", "<jane_o'[email]>"),
        ("Contact: A.B@EXAMPLE.COM or c@d.io", "Contact: [email] or [email]"),
        # phone numbers
        ("call me at (555) 123-4567 tomorrow", "call me at [phone] tomorrow"),
        ("my cell is 555.123.4567", "my cell is [phone]"),
        ("+44 20 7946 0958 is my number", "[phone] is my number"),
        ("+1-555-123-4567", "[phone]"),
        ("ring 020 7946 0958 after 5", "ring [phone] after 5"),
        ("phone: 5551234567", "phone: [phone]"),
        ("Tel 0044 20 7946 0958", "Tel [phone]"),
    ],
)
def test_masks_personal_data(text: str, expected: str) -> None:
    assert MASKER.mask(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "On 2019-01-15 I paid $1,234.56 for order 123456789.",
        "Complaint 3456789 was filed on 01/15/2019 at 10:30.",
        "Ref 12345678 re my loan of 250000 dollars",
        "The card ending in 1111 was declined 3 times",
        "number 4111111111111112 is not a card (bad checksum)",
        "I called on Monday and again on 2020-03-04",
        "Version 1.2.3.4 of the app, build 20240101",
        "Interest went from 5.25% to 7.5% in 2023",
        "XXXX XXXX XXXX 1234 (redacted by CFPB)",
        "user@localhost is not an address with a domain",
    ],
)
def test_ordinary_numbers_and_text_stay_readable(text: str) -> None:
    assert MASKER.mask(text) == text


def test_each_kind_can_be_turned_off() -> None:
    text = "card 4111 1111 1111 1111, mail a@b.com, phone +44 20 7946 0958, account 12345678901"
    assert Masker(()).mask(text) == text
    assert not Masker(()).enabled
    only_email = Masker(("email",)).mask(text)
    assert "[email]" in only_email and "4111 1111" in only_email and "+44" in only_email
    no_phone = Masker(("card", "account", "email")).mask(text)
    assert "+44 20 7946 0958" in no_phone and "[card]" in no_phone and "[account]" in no_phone


def test_find_reports_kinds_and_offsets_of_the_original() -> None:
    text = "Mail x@y.org or call +1 555 123 4567 about 4111111111111111"
    spans = MASKER.find(text)
    assert [s.kind for s in spans] == ["email", "phone", "card"]
    assert [text[s.start : s.end] for s in spans] == ["x@y.org", "+1 555 123 4567", "4111111111111111"]


def test_email_digits_are_not_masked_twice() -> None:
    assert MASKER.mask("write to 5551234567@txt.example.com") == "write to [email]"


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("41x1")
    assert iban_valid("GB82WEST12345698765432") and iban_valid("NO9386011117947")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("GB82")


def test_masking_long_text_is_fast() -> None:
    """Adversarial runs (digits and spaces, word characters without an @) must stay linear."""
    texts = ["1 " * 20_000, "a" * 40_000, "1-" * 20_000, "a.a" * 13_000 + "@", "@" + "a." * 20_000]
    started = time.perf_counter()
    for text in texts:
        MASKER.mask(text)
    assert time.perf_counter() - started < 3.0


_CARD_RE = re.compile(r"\d{13,19}")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -.()+@abcxyzACCOUNTphone\n"), max_size=120))
def test_masking_never_fails_and_is_stable(text: str) -> None:
    masked = MASKER.mask(text)
    assert MASKER.mask(masked) == masked  # placeholders are not re-masked
    for span in MASKER.find(text):
        assert 0 <= span.start < span.end <= len(text)


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.text(alphabet=st.sampled_from("abc ,.:"), max_size=20),
    body=st.lists(st.integers(0, 9), min_size=12, max_size=18),
    separator=st.sampled_from(["", " ", "-"]),
    suffix=st.text(alphabet=st.sampled_from("abc ,.:"), max_size=20),
)
def test_every_luhn_valid_card_is_masked(prefix: str, body: list[int], separator: str, suffix: str) -> None:
    digits = "".join(map(str, body))
    check = next(d for d in "0123456789" if luhn_valid(digits + d))
    number = digits + check
    grouped = separator.join(number[i : i + 4] for i in range(0, len(number), 4))
    masked = MASKER.mask(f"{prefix} {grouped} {suffix}")
    assert number not in masked.replace(" ", "").replace("-", "")
    assert "[card]" in masked


def test_log_filter_masks_messages_and_redacts_bearer_tokens(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.masking")
    log_filter = MaskingLogFilter(Masker(ALL_PII_KINDS))
    logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.INFO, logger="tests.masking"):
            logger.info("customer %s wrote from %s", "4111 1111 1111 1111", "jo@example.com")
            logger.info("header was Authorization: Bearer s3cr3t-key-value-123")
            try:
                raise ValueError("could not read 'call +44 20 7946 0958'")
            except ValueError:
                logger.exception("routing failed")
    finally:
        logger.removeFilter(log_filter)
    assert "4111" not in caplog.text and "jo@example.com" not in caplog.text
    assert "7946" not in caplog.text and "ValueError" in caplog.text
    assert "s3cr3t-key-value-123" not in caplog.text
    assert "[card]" in caplog.text and "[email]" in caplog.text and "Bearer [redacted]" in caplog.text
