"""Masking personal data before it is written anywhere: the decision log's stored text and log lines.

Customers paste card numbers, account numbers, e-mail addresses and phone numbers into messages.
Hearken needs none of them to route, so nothing it writes down keeps them. The detectors prefer
masking too much over too little, but each has a check that keeps ordinary numbers (amounts, dates,
order and complaint numbers) readable, because stored text is only useful if it can still be read:

* **card**: 13-19 digits, optionally grouped by single spaces or dashes, that pass the Luhn check;
* **account**: an IBAN that passes its mod-97 check anywhere, or an 8-17 digit run near a word like
  *account*, *acct*, *IBAN*, *routing*, *checking* or *savings*;
* **email**: ``local@domain.tld``;
* **phone**: an international number (``+`` and 8-15 digits), a North-American number with separators
  (``(555) 123-4567``, ``555.123.4567``), a national number with a leading 0 and separators
  (``020 7946 0958``), ``00`` and an international number, or 7-15 digits right after a word
  like *phone*, *call*, *tel* or *mobile*.

Every regular expression is anchored at the start of a run (look-behind) or bounded in length, so
masking a 30,000-character message stays linear in its length.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

PiiKind = Literal["card", "account", "email", "phone"]
ALL_PII_KINDS: tuple[PiiKind, ...] = ("email", "card", "account", "phone")
PLACEHOLDERS: dict[PiiKind, str] = {
    "email": "[email]",
    "card": "[card]",
    "account": "[account]",
    "phone": "[phone]",
}

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# A run of digit groups joined by single spaces or dashes, starting where no such run continues
# (and not after a "+", which makes it a phone number).
_DIGIT_RUN = re.compile(r"(?<![\d+])(?<!\d[ -])\d+(?:[ -]\d+)*(?![ -]?\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32}")
_ACCOUNT_WORD = re.compile(
    r"(?i)\b(?:accounts?|acct|acc(?:t)?\s?(?:no|num|#)|a/c|iban|routing|aba|checking|savings|sort\s?code|bsb)\b"
)
_PHONE_WORD = re.compile(
    r"(?i)\b(?:phone|telephone|tel|mobile|cell(?:phone)?|call|text|fax|whatsapp|contact\s+number)\b"
)
_PHONE_CANDIDATE = re.compile(r"(?<![\w+(.-])(?:\+ ?)?\(?\d[\d ().-]{0,24}\d(?![\d])")
_NANP = re.compile(r"\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}")
_SEPARATOR = re.compile(r"[ ().-]")
# A group of digits that ends a card-like run; the window walk below works on these.
_GROUP = re.compile(r"\d+")

_ACCOUNT_BEFORE = 32  # how far before a number an account word may end
_ACCOUNT_AFTER = 16  # how far after a number an account word may start
_PHONE_BEFORE = 24

# Lengths of IBANs by country (ISO 13616 registry); others are accepted at any valid length.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


@dataclass(frozen=True)
class PiiSpan:
    """One piece of personal data found in a text, by character offsets (end exclusive)."""

    kind: PiiKind
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (and most random numbers fail)."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN written without spaces."""
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged.upper())
    return int(number) % 97 == 1


def _find_emails(text: str) -> list[PiiSpan]:
    return [PiiSpan("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]


def _find_cards(text: str) -> list[PiiSpan]:
    """Luhn-valid windows of 13-19 digits over consecutive digit groups, greedy left to right.

    A window is a sequence of whole groups (``4111 1111 1111 1111``), so a card followed or preceded by
    another number in the same run is still found; at each group the longest valid window wins.
    Linear in the run length: a window never spans more than 19 digits.
    """
    spans = []
    for run in _DIGIT_RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in _GROUP.finditer(run.group())]
        first = 0
        while first < len(groups):
            digits, best = "", None
            for last in range(first, len(groups)):
                digits += text[groups[last][0] : groups[last][1]]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    best = last
            if best is None:
                first += 1
                continue
            spans.append(PiiSpan("card", groups[first][0], groups[best][1]))
            first = best + 1
    return spans


def _find_ibans(text: str) -> list[PiiSpan]:
    spans = []
    for match in _IBAN.finditer(text):
        chars = [(i, c) for i, c in enumerate(match.group(), match.start()) if c != " "]
        country = "".join(c for _, c in chars[:2])
        lengths = [_IBAN_LENGTHS[country]] if country in _IBAN_LENGTHS else range(min(len(chars), 34), 14, -1)
        for length in lengths:
            if length <= len(chars) and iban_valid("".join(c for _, c in chars[:length])):
                spans.append(PiiSpan("account", match.start(), chars[length - 1][0] + 1))
                break
    return spans


def _near(words: list[tuple[int, int]], start: int, end: int, before: int, after: int) -> bool:
    return any(start - before <= w_end <= start or end <= w_start <= end + after for w_start, w_end in words)


def _find_accounts(text: str) -> list[PiiSpan]:
    words = [(m.start(), m.end()) for m in _ACCOUNT_WORD.finditer(text)]
    if not words:
        return []
    spans = []
    for run in _DIGIT_RUN.finditer(text):
        digits = sum(c.isdigit() for c in run.group())
        if 8 <= digits <= 17 and _near(words, run.start(), run.end(), _ACCOUNT_BEFORE, _ACCOUNT_AFTER):
            spans.append(PiiSpan("account", run.start(), run.end()))
    return spans


def _find_phones(text: str) -> list[PiiSpan]:
    words = [(m.start(), m.end()) for m in _PHONE_WORD.finditer(text)]
    spans = []
    for match in _PHONE_CANDIDATE.finditer(text):
        candidate = match.group()
        digits = sum(c.isdigit() for c in candidate)
        separated = bool(_SEPARATOR.search(candidate))
        international = candidate.startswith("+") or (candidate.startswith("00") and separated)
        is_phone = (
            (international and 8 <= digits <= 15)
            or bool(_NANP.fullmatch(candidate))
            or (candidate.startswith(("0", "(0")) and separated and 10 <= digits <= 12)
            or (7 <= digits <= 15 and _near(words, match.start(), match.end(), _PHONE_BEFORE, 0))
        )
        if is_phone:
            spans.append(PiiSpan("phone", match.start(), match.end()))
    return spans


_DETECTORS = (
    ("email", _find_emails),
    ("account", _find_ibans),
    ("card", _find_cards),
    ("account", _find_accounts),
    ("phone", _find_phones),
)


class Masker:
    """Finds and masks the configured kinds of personal data; with no kinds it changes nothing."""

    def __init__(self, kinds: tuple[PiiKind, ...] | list[PiiKind] = ALL_PII_KINDS) -> None:
        self.kinds = frozenset(kinds)

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    def find(self, text: str) -> list[PiiSpan]:
        """Non-overlapping spans in text order; earlier detectors win (an e-mail's digits stay an e-mail)."""
        accepted: list[PiiSpan] = []
        for kind, detect in _DETECTORS:
            if kind not in self.kinds:
                continue
            for span in detect(text):
                if all(span.end <= other.start or span.start >= other.end for other in accepted):
                    accepted.append(span)
        return sorted(accepted, key=lambda s: s.start)

    def mask(self, text: str) -> str:
        """The text with every found span replaced by a placeholder such as ``[card]``."""
        if not self.kinds:
            return text
        pieces = []
        cursor = 0
        for span in self.find(text):
            pieces.append(text[cursor : span.start])
            pieces.append(PLACEHOLDERS[span.kind])
            cursor = span.end
        pieces.append(text[cursor:])
        return "".join(pieces)


_FORMATTER = logging.Formatter()
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")


class MaskingLogFilter(logging.Filter):
    """Rewrites every record it sees: personal data masked, bearer tokens redacted.

    Attached to the service's loggers so that even a careless log call with a message text or an
    ``Authorization`` header in it cannot write either to a log file.
    """

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call; logging reports it, we must not hide it
            return True
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Handlers reuse a pre-formatted exc_text, so a traceback quoting message text is masked too.
            record.exc_text = self._clean(_FORMATTER.formatException(record.exc_info))
        return True

    def _clean(self, text: str) -> str:
        return _BEARER.sub(r"\1 [redacted]", self.masker.mask(text))
