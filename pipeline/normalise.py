"""The normalise stage: turn a message as received into the text the readers should see.

Customer messages arrive as HTML mail, plain mail with whole reply chains underneath, IT
tickets whose newlines were lost in an export, CFPB narratives full of ``XXXX`` redaction
marks, and social posts. The readers (sentence segmenter, ask detector, intent and product
models) should see only what the customer wrote *this time*, in clean text; the routing
policy still needs what was set aside (an earlier message may say "third time I write").

So the normaliser produces a ``body`` to read, the quoted ``history`` kept separately, and
``sections`` saying what was set aside, all as :class:`~pipeline.textmap.MappedText` or
original offsets: whatever a later stage highlights indexes the message as received.

Only :func:`check_text` and :func:`decode_text` raise; :meth:`Normaliser.normalise` accepts
any readable text, because an odd layout is no reason to drop a customer's message.
"""

from __future__ import annotations

import html
import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import InputError
from pipeline.schema import Section
from pipeline.textmap import Edit, MappedText

# =============================================================================== input checks


def _words(text: str) -> list[str]:
    """Word lists are written as one string: easier to read and extend than a column of literals."""
    return text.split()


#: Control, surrogate and private-use characters (Unicode Cc, Cs, Co) other than \t \n \r.
_BINARY_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\U000f0000-\U0010ffff]"
)
_MAX_BINARY_SHARE = 0.10

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def check_text(text: str, max_chars: int) -> None:
    """Refuse text no stage could route, with an error that says what to do.

    Checked here, once, so the stages themselves never have to fail on odd input.
    """
    if not text.strip():
        raise InputError(
            "The message is empty (it has no characters other than whitespace).",
            fix="send the customer's message text; drop empty messages before routing",
        )
    if len(text) > max_chars:
        raise InputError(
            f"The message has {len(text):,} characters, more than the limit of {max_chars:,}.",
            fix="send only the message body (not attachments or whole mailbox exports), "
            "or raise normaliser.max_chars in the configuration",
        )
    if "\x00" in text:
        raise InputError(
            f"The message contains NUL characters (first at offset {text.index(chr(0))}): it is binary data "
            "or text decoded with the wrong encoding (often UTF-16 read as UTF-8).",
            fix="send the text itself, decoded correctly; save files as UTF-8",
        )
    binary = len(_BINARY_CHARS.findall(text))
    if binary > _MAX_BINARY_SHARE * len(text):
        raise InputError(
            f"{binary:,} of the message's {len(text):,} characters are control or private-use characters: "
            "it looks like binary data, not text.",
            fix="send the message text, not a file's raw bytes; save files as UTF-8",
        )


def decode_text(data: bytes) -> str:
    """Decode message bytes: strict UTF-8 (BOM dropped), else UTF-16 when it carries a BOM.

    Strict, because guessing an encoding silently garbles names and amounts; the error says
    where the bad byte is so the sender can find it.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        if data.startswith(_UTF16_BOMS):
            try:
                return data.decode("utf-16")
            except UnicodeDecodeError as utf16_error:
                raise InputError(
                    f"The message starts with a UTF-16 byte-order mark but byte {utf16_error.start} "
                    "is not valid UTF-16.",
                    fix="save the file as UTF-8",
                ) from utf16_error
        bad = data[utf8_error.start]
        raise InputError(
            f"The message is not valid UTF-8: byte {utf8_error.start} (0x{bad:02x}) cannot be decoded "
            f"({utf8_error.reason}).",
            fix="save the file as UTF-8 (in most editors: Save As, encoding UTF-8)",
        ) from utf8_error


# =============================================================================== configuration


class NormaliserConfig(BaseModel):
    """Which clean-up steps run, and what redacted spans are rewritten to."""

    model_config = ConfigDict(extra="forbid")

    convert_html: bool = Field(
        default=True,
        description="Turn HTML mail into text (and decode the few entities plain-text exports leave behind).",
    )
    clean_unicode: bool = Field(
        default=True,
        description="NFKC-style clean-up: straight quotes, no zero-width or control characters, "
        "plain spaces.",
    )
    collapse_whitespace: bool = Field(
        default=True,
        description="CRLF to LF, runs of spaces/tabs to one space, three or more newlines to two.",
    )
    strip_headers: bool = Field(
        default=True,
        description="Set aside a leading 'received from: address' line that IT-ticket exports prepend.",
    )
    set_aside_quoted_history: bool = Field(
        default=True,
        description="Move quoted earlier messages ('>' lines, 'On ... wrote:', Outlook headers, forwards) "
        "out of the body into history.",
    )
    strip_signatures: bool = Field(
        default=True,
        description="Remove '-- ' signature blocks, 'Sent from my iPhone' footers and closing "
        "valediction blocks.",
    )
    rewrite_redactions: bool = Field(
        default=True,
        description="Rewrite CFPB-style redactions (XXXX, XX/XX/XXXX, {$1.00}) into tokens an encoder "
        "reads well.",
    )
    redaction_token: str = Field(
        default="[masked]",
        min_length=1,
        description="Replaces each run of XXXX redaction marks. '[masked]' is three pieces for a BERT "
        "uncased WordPiece vocabulary ('[', 'masked', ']') where 'XXXX' is two meaningless ones "
        "and '[redacted]' five.",
    )
    date_token: str = Field(
        default="[date]",
        min_length=1,
        description="Replaces a date whose parts were redacted (XX/XX/XXXX, XX/XX/2019).",
    )
    max_chars: int = Field(
        default=200_000,
        gt=0,
        description="Longest message accepted by check_text; longer input is refused, not truncated.",
    )


# =============================================================================== result


@dataclass(frozen=True)
class NormalisedMessage:
    """What the normaliser hands on: the body to read, the history set aside, and where things went."""

    body: MappedText
    history: list[MappedText] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    was_html: bool = False

    @property
    def original(self) -> str:
        """The message exactly as received (every offset indexes it)."""
        return self.body.original


# =============================================================================== HTML

_HTML_HINT = re.compile(
    r"<(?:!doctype|html|body|head)\b|<!--"
    r"|</?(?:p|br|div|table|tbody|thead|tr|td|th|span|ul|ol|li|blockquote|font|a|b|i|u|strong|em|h[1-6]|meta"
    r"|style|img|hr|center|pre|section|article)(?:\s[^<>]{0,1000})?/?>",
    re.IGNORECASE,
)
_HTML_STRONG_HINT = re.compile(r"<(?:!doctype|html|body|head)\b", re.IGNORECASE)

_HTML_TOKEN = re.compile(
    r"(?P<comment><!--[\s\S]*?(?:-->|\Z))"
    r"|(?P<drop><(?P<droptag>script|style|head|title)\b[^>]{0,2000}>[\s\S]*?(?:</(?P=droptag)\s*>|\Z))"
    r"|(?P<tag></?(?P<name>[a-zA-Z][a-zA-Z0-9]{0,15})(?:[\s/](?:[^<>\"']|\"[^\"]*\"|'[^']*'){0,2000})?>)"
    r"|(?P<doctype><![^>]{0,500}>)"
    r"|(?P<entity>&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});)"
    r"|(?P<space>[ \t\r\n\f\v]{2,}|[\t\r\n\f\v])",
    re.IGNORECASE,
)
_HTML_BLOCK_TAGS = frozenset(
    _words(
        "address article aside blockquote body center dd div dl dt fieldset figure footer form h1 "
        "h2 h3 h4 h5 h6 header hr html main nav ol pre section table tbody thead tfoot tr ul"
    )
)
_PLAIN_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|nbsp|#39|#x27|#34);", re.IGNORECASE)


def looks_like_html(text: str) -> bool:
    """True for HTML mail: a document tag, or at least two known HTML tags.

    Two tags, because a plain message may mention one ('<b>' in a complaint about a web form)
    while real HTML mail has dozens.
    """
    if _HTML_STRONG_HINT.search(text):
        return True
    return sum(1 for _ in itertools.islice(_HTML_HINT.finditer(text), 2)) >= 2


def html_to_text(text: MappedText) -> MappedText:
    """Strip HTML in one pass: blocks become line breaks, entities their characters, the map kept."""

    def replacement(m: re.Match[str]) -> str:
        if m.group("tag") is not None:
            name = m.group("name").lower()
            closing = m.group("tag").startswith("</")
            if name == "br":
                return "\n"
            if name == "p":
                return "\n\n"
            if name == "li":
                return "" if closing else "\n• "
            if name in ("td", "th"):
                return " "
            return "\n" if name in _HTML_BLOCK_TAGS else ""
        if m.group("entity") is not None:
            return html.unescape(m.group("entity"))
        if m.group("space") is not None:
            return " "
        return ""  # comments, script/style/head/title, doctype

    return text.sub(_HTML_TOKEN, replacement)


def decode_plain_entities(text: MappedText) -> MappedText:
    """Decode the handful of entities that plain-text exports (tweets, tickets) carry, e.g. '&amp;'."""
    return text.sub(_PLAIN_ENTITY, lambda m: html.unescape(m.group()).replace("\xa0", " "))


# =============================================================================== unicode & whitespace

_CHAR_TABLE: dict[str, str] = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u00a0": " ", "\u202f": " ", "\u205f": " ", "\u3000": " ", "\u1680": " ",
    "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": "", "\u00ad": "", "\u180e": "",
    "\u2028": "\n", "\u2029": "\n", "\x0b": "\n", "\x0c": "\n", "\x85": "\n",
    "\u2026": "...",
}  # fmt: skip
_CHAR_TABLE.update({chr(c): " " for c in range(0x2000, 0x200B)})  # en quad ... hair space
_CHAR_TABLE.update({chr(c): "" for c in [*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F]})
_UNICODE_FIXES = re.compile(r"\r\n?|[" + re.escape("".join(_CHAR_TABLE)) + "]")
_COMBINING = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_COMBINING_SEQUENCE = re.compile(f"[^{_COMBINING}][{_COMBINING}]+")
_CARRIAGE_RETURN = re.compile(r"\r\n?")
_ESCAPED_NEWLINE = re.compile(r"\\r\\n|\\n")
_MIN_ESCAPED_NEWLINES = 2
_WHITESPACE = re.compile(r"[ \t]*\n[ \t\n]*|[ \t]{2,}|\t")
_EXTRA_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


@lru_cache(maxsize=8192)
def _nfkc(unit: str) -> str:
    return unicodedata.normalize("NFKC", unit)


def clean_unicode(text: MappedText) -> MappedText:
    """Straighten quotes, drop invisible characters, then NFKC character by character.

    NFKC is applied per character (with its combining marks) rather than to the whole string,
    so that each change is a small local edit and the offset map stays exact: one-for-one
    foldings (full-width and mathematical letters) go through ``translate`` and keep the map
    as is; expansions (ligatures, fractions) and combining sequences become small edits.
    """
    text = text.sub(_UNICODE_FIXES, lambda m: "\n" if m.group()[0] == "\r" else _CHAR_TABLE[m.group()])
    if unicodedata.is_normalized("NFKC", text.text):
        return text
    one_for_one: dict[int, str] = {}
    expanding: dict[str, str] = {}
    for ch in set(text.text):
        if ord(ch) < 0x80:
            continue
        folded = _nfkc(ch)
        if folded == ch:
            continue
        if len(folded) == 1:
            one_for_one[ord(ch)] = folded
        else:
            expanding[ch] = folded
    text = text.translate(one_for_one)
    if expanding:
        pattern = re.compile("[" + re.escape("".join(expanding)) + "]")
        text = text.sub(pattern, lambda m: expanding[m.group()])
    if _COMBINING_SEQUENCE.search(text.text):
        edits: list[Edit] = []
        for m in _COMBINING_SEQUENCE.finditer(text.text):
            unit = m.group()
            folded = _nfkc(unit)
            if folded != unit:
                edits.append((m.start(), m.end(), folded))
        text = text.edit(edits)
    return text


def collapse_whitespace(text: MappedText) -> MappedText:
    """CRLF to LF, spaces/tabs to one space, trailing/leading spaces on lines dropped, 3+ newlines to 2.

    Text exported through JSON sometimes arrives with its line breaks as a literal backslash-n;
    when a message has no real line break but several of those, they are read as line breaks,
    because paragraphs and list items matter to the segmenter.
    """
    text = text.sub(_CARRIAGE_RETURN, "\n")
    if "\n" not in text.text and text.text.count("\\n") >= _MIN_ESCAPED_NEWLINES:
        text = text.sub(_ESCAPED_NEWLINE, "\n")

    def replacement(m: re.Match[str]) -> str:
        newlines = m.group().count("\n")
        if newlines == 0:
            return " "
        return "\n" if newlines == 1 else "\n\n"

    return text.sub(_WHITESPACE, replacement)


# =============================================================================== headers

_RECEIVED_FROM = re.compile(r"\A\s*received from:[ \t]*[^\s]{1,200}[ \t]*\n?", re.IGNORECASE)

# =============================================================================== quoted history

_ON_WROTE = re.compile(
    r"^(?:On|Am|Le|El|Il|Op)\b(?:[^\n]{0,300}|[^\n]{0,300}\n[^\n]{0,300})"
    r"(?:wrote|schrieb|a écrit|escribió|ha scritto|schreef)[ \t]*:?[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)
_ORIGINAL_MESSAGE = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht|Message d'origine)[ \t]*-{2,}"
    r"[^\n]{0,40}$",
    re.MULTILINE | re.IGNORECASE,
)
_FORWARDED = re.compile(
    r"^[ \t]*(?:Begin forwarded message:|-{2,}[ \t]*(?:Forwarded message|Weitergeleitete Nachricht|"
    r"Message transféré)[ \t]*-{2,}|-{3,}[ \t]*Forwarded by\b)[^\n]{0,200}$",
    re.MULTILINE | re.IGNORECASE,
)
_FIELD_NAMES = {
    "from": "from", "von": "from", "de": "from",
    "sent": "sent", "date": "sent", "gesendet": "sent", "datum": "sent", "envoyé": "sent", "enviado": "sent",
    "to": "to", "an": "to", "à": "to", "para": "to",
    "cc": "cc", "bcc": "cc",
    "subject": "subject", "betreff": "subject", "objet": "subject", "asunto": "subject",
    "reply-to": "other", "importance": "other", "attachments": "other",
}  # fmt: skip
_FIELD_ALTERNATIVES = "|".join(sorted((re.escape(k) for k in _FIELD_NAMES), key=len, reverse=True))
_HEADER_LINE = re.compile(
    r"[ \t>*]*(" + _FIELD_ALTERNATIVES + r")[ \t*]*:",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"^[ \t*]*(?:From|Von|De)[ \t*]*:[^\n]{0,300}$", re.MULTILINE | re.IGNORECASE)
_INLINE_FROM = re.compile(r"(?<!received )\bfrom:", re.IGNORECASE)
_INLINE_SENT = re.compile(r"\b(?:sent|date):", re.IGNORECASE)
_INLINE_TO = re.compile(r"\bto:", re.IGNORECASE)
_INLINE_SUBJECT = re.compile(r"\b(?:subject|cc):", re.IGNORECASE)
_INLINE_SUBJECT_ONLY = re.compile(r"\bsubject:", re.IGNORECASE)
_QUOTE_BLOCK = re.compile(r"^[ \t]*>[^\n]*(?:\n[ \t]*>[^\n]*)*", re.MULTILINE)
_QUOTE_PREFIX = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
_CONTENT = re.compile(r"[^\W_]", re.UNICODE)
_MAX_INLINE_CANDIDATES = 2000


@dataclass(frozen=True)
class _Marker:
    """Where an earlier message starts (``start``) and where its header lines end (``header_end``)."""

    start: int
    header_end: int


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _header_block_end(text: str, pos: int, max_lines: int = 10) -> tuple[int, set[str]]:
    """Scan header lines ('From:', 'Sent:', 'To:', 'Subject:'...) from ``pos``; return their end and names."""
    names: set[str] = set()
    end = pos
    line_start = pos
    for _ in range(max_lines):
        if line_start >= len(text):
            break
        m = _HEADER_LINE.match(text, line_start)
        if not m:
            break
        names.add(_FIELD_NAMES[m.group(1).lower()])
        end = _line_end(text, line_start)
        line_start = end + 1
    return end, names


def _find_markers(text: str) -> list[_Marker]:
    """All places where an earlier message starts, in order (at most one per position)."""
    found: dict[int, int] = {}
    for m in _ON_WROTE.finditer(text):
        found.setdefault(m.start(), m.end())
    for pattern in (_ORIGINAL_MESSAGE, _FORWARDED):
        for m in pattern.finditer(text):
            header_end, _ = _header_block_end(text, min(m.end() + 1, len(text)))
            found.setdefault(m.start(), max(m.end(), header_end))
    for m in _OUTLOOK_FROM.finditer(text):
        header_end, names = _header_block_end(text, m.start())
        if "sent" in names and ({"to", "subject"} & names):
            found.setdefault(m.start(), header_end)
    for i, m in enumerate(_INLINE_FROM.finditer(text)):
        if i >= _MAX_INLINE_CANDIDATES:
            break
        inline = _inline_header(text, m.start())
        if inline is not None:
            found.setdefault(m.start(), inline)
    markers: list[_Marker] = []
    for start, end in sorted(found.items()):
        if markers and start <= markers[-1].header_end:
            # A header inside the previous one ('-----Original Message-----' then 'From:'): same message.
            if end > markers[-1].header_end:
                markers[-1] = _Marker(markers[-1].start, end)
            continue
        markers.append(_Marker(start, end))
    return markers


def _inline_header(text: str, pos: int) -> int | None:
    """Match a flattened 'from: .. sent: .. to: .. subject:' header on one line; return where it ends."""
    line_end = _line_end(text, pos)
    sent = _INLINE_SENT.search(text, pos + 5, min(line_end, pos + 5 + 250))
    if not sent:
        return None
    to = _INLINE_TO.search(text, sent.end(), min(line_end, sent.end() + 250))
    if not to:
        return None
    subject = _INLINE_SUBJECT.search(text, to.end(), min(line_end, to.end() + 600))
    if not subject:
        return None
    if subject.group().lower().startswith("cc"):
        # 'cc:' comes before 'subject:'; the subject, when present, follows within the line.
        real = _INLINE_SUBJECT_ONLY.search(text, subject.end(), min(line_end, subject.end() + 600))
        return real.end() if real else subject.end()
    return subject.end()


def _has_content(text: str) -> bool:
    return _CONTENT.search(text) is not None


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` to exclude surrounding whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _add_section(sections: list[Section], text: MappedText, kind: str, start: int, end: int) -> None:
    """Record ``text[start:end]`` (whitespace trimmed) as a set-aside section in original offsets."""
    start, end = _trimmed(text.text, start, end)
    if start < end:
        s, e = text.to_original(start, end)
        sections.append(Section(kind=kind, start=s, end=e))  # type: ignore[arg-type]


def _unquote(text: MappedText) -> MappedText:
    return text.sub(_QUOTE_PREFIX, "").strip()


_MAX_LEADING_HEADERS = 20


def split_history(text: MappedText) -> tuple[MappedText, list[MappedText], list[Section]]:
    """Separate the new message from the quoted earlier ones.

    The body ends where the first earlier message starts; everything after it is history,
    one item per earlier message. '>' blocks above that point (inline replies) are history
    too. A message that *starts* with a forward or reply header has no note of its own: its
    header lines are set aside as a header and the forwarded content is read as the body,
    because it is the only content there is.
    """
    sections: list[Section] = []
    history: list[MappedText] = []
    for _ in range(_MAX_LEADING_HEADERS):
        t = text.text
        markers = _find_markers(t)
        if not markers or _has_content(_QUOTE_BLOCK.sub("", t[: markers[0].start])):
            break
        first = markers[0]
        rest = text.slice(first.header_end, len(t))
        if not _has_content(rest.text):
            break
        if _has_content(t[: first.start]):  # a stray quoted line above the header
            history.append(_unquote(text.slice(0, first.start)))
            _add_section(sections, text, "quoted_history", 0, first.start)
        _add_section(sections, text, "header", first.start, first.header_end)
        text = rest
    else:
        markers = _find_markers(text.text)
    t = text.text
    cut = markers[0].start if markers else len(t)
    removed: list[tuple[int, int]] = []
    quoted: list[MappedText] = []
    quoted_sections: list[Section] = []
    for m in _QUOTE_BLOCK.finditer(t, 0, cut):
        removed.append((m.start(), min(len(t), m.end() + 1)))
        quoted.append(_unquote(text.slice(m.start(), m.end())))
        _add_section(quoted_sections, text, "quoted_history", m.start(), m.end())
    if markers:
        removed.append((cut, len(t)))
        _add_section(quoted_sections, text, "quoted_history", cut, len(t))
        bounds = [m.start for m in markers] + [len(t)]
        for a, b in itertools.pairwise(bounds):
            item = _unquote(text.slice(a, b))
            if item.text:
                quoted.append(item)
    body = text.remove_ranges(removed)
    if not _has_content(body.text) and quoted:
        # Everything left was quoted: read the quoted text rather than lose the only content.
        return _unquote(text), history, sections
    return body, [*history, *quoted], [*sections, *quoted_sections]


# =============================================================================== signatures

_SIG_DELIMITER = re.compile(r"^--[ \t]?$", re.MULTILINE)
_MOBILE_FOOTER = re.compile(
    r"(?:^|(?<=[.!?])[ \t]+)[ \t]*(?:"
    r"Sent from my (?:iPhone|iPad|iPod|Android|phone|mobile(?: device| phone)?|smartphone|tablet"
    r"|Samsung[^\n]{0,40}|Galaxy[^\n]{0,40}|BlackBerry[^\n]{0,40}|Huawei[^\n]{0,40}|Windows Phone"
    r"|Sony[^\n]{0,40})"
    r"|Get Outlook for (?:iOS|Android)"
    r"|Sent from (?:Mail|Outlook) for (?:Windows(?: 10| 11)?|iOS|Android|Mac)"
    r"|Sent from Yahoo Mail(?: (?:for|on) (?:iPhone|iPad|Android))?"
    r"|Sent from (?:Outlook|Gmail|AOL Mobile Mail|the Gmail app)(?: (?:for|on) (?:iPhone|iPad|Android|iOS))?"
    r"|Sent via (?:the )?(?:Samsung|BlackBerry|mobile)[^\n]{0,40}"
    r")[ \t]*[.!]?[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)
_VALEDICTION = re.compile(
    r"^[ \t]*(?:(?:best|kind|kindest|warm|warmest|many|with|all the best)[ \t]+(?:regards|wishes|thanks)"
    r"|regards|best|cheers|sincerely|respectfully|br|rgds|regds"
    r"|yours(?:[ \t]+(?:sincerely|truly|faithfully))?|(?:sincerely|faithfully|truly)[ \t]+yours"
    r"|thanks(?:[ \t]+(?:again|in advance|a lot|so much))?"
    r"|thank[ \t]+you(?:[ \t]+(?:again|in advance|so much))?"
    r"|many thanks|thx|tia|mit freundlichen grüßen|freundliche grüße|viele grüße|beste grüße|cordialement"
    r"|saludos|atentamente|met vriendelijke groet)"
    r"[ \t]*[,.!]*(?P<name>(?:[ \t]+[^\W\d_][\w.'-]{0,30}){0,3})[ \t]*[,.]?[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)
_NOT_A_NAME = frozenset(
    _words(
        "a an and the for to you your me my us our we i is are was be this that it of in on at with "
        "please help so very much all again advance"
    )
)
_MAX_SIGNATURE_LINES = 5
_MAX_SIGNATURE_LINE_CHARS = 80
_MAX_SIGNATURE_LINE_WORDS = 10


def _signature_lines_ok(lines: list[str]) -> bool:
    """True when what follows a valediction looks like a name/title/company/phone block."""
    non_empty = [line.strip() for line in lines if line.strip()]
    if len(non_empty) > _MAX_SIGNATURE_LINES:
        return False
    for line in non_empty:
        if len(line) > _MAX_SIGNATURE_LINE_CHARS or len(line.split()) > _MAX_SIGNATURE_LINE_WORDS:
            return False
        if line.endswith("?"):
            return False
    return True


def _valediction_start(text: str) -> int | None:
    """Start of the closing 'Regards,\\nName\\nTitle' block at the end of ``text``, if there is one."""
    tail_start = max(0, len(text) - 1200)
    for m in _VALEDICTION.finditer(text, tail_start):
        name_words = m.group("name").lower().replace(",", " ").split()
        if any(word.strip(".") in _NOT_A_NAME for word in name_words):
            continue
        if _signature_lines_ok(text[m.end() :].split("\n")):
            return m.start()
    return None


def _remove_if_content_remains(
    text: MappedText, ranges: list[tuple[int, int]], sections: list[Section]
) -> MappedText:
    """Drop ``ranges`` as signature sections unless that would leave no content at all."""
    if not ranges:
        return text
    candidate = text.remove_ranges(ranges)
    if not _has_content(candidate.text):
        return text
    for start, end in ranges:
        _add_section(sections, text, "signature", start, end)
    return candidate


def strip_signature(text: MappedText) -> tuple[MappedText, list[Section]]:
    """Remove mobile footers, a '-- ' signature block and a closing valediction block.

    Each step only removes what leaves some content behind: a message that is nothing but
    'Thanks!' keeps it.
    """
    sections: list[Section] = []
    text = _remove_if_content_remains(text, [m.span() for m in _MOBILE_FOOTER.finditer(text.text)], sections)
    delimiter = _SIG_DELIMITER.search(text.text)
    if delimiter:
        text = _remove_if_content_remains(text, [(delimiter.start(), len(text))], sections)
    t = text.text.rstrip()
    start = _valediction_start(t)
    if start is not None:
        text = _remove_if_content_remains(text, [(start, len(t))], sections)
    return text, sections


# =============================================================================== redactions

_AMOUNT_BRACES = re.compile(r"\{(\$?[0-9X][0-9X,]{0,15}(?:\.[0-9X]{1,2})?)\}")
_REDACTION = re.compile(
    r"(?P<date>(?<![\w/])(?:XX|[0-9]{1,2})/(?:XX|[0-9]{1,2})/(?:XXXX|XX|[0-9]{4}|[0-9]{2}|<?year>)(?![\w/]))"
    r"|(?P<run>(?<![A-Za-z0-9])X{2,}(?:(?:[ \t]+|[ \t]*[/-][ \t]*)X{2,}){0,30}(?![A-Za-z0-9]))"
)


def rewrite_redactions(text: MappedText, redaction_token: str, date_token: str) -> MappedText:
    """Rewrite CFPB redaction marks into words an encoder has seen, keeping amounts exact.

    ``XX/XX/2019`` becomes the date token, each run of ``XXXX`` marks one redaction token
    (several names in a row are still one redacted thing to a reader), and ``{$1.00}`` loses
    only its braces, so the amount itself still maps character by character.
    """
    t = text.text
    if "X" not in t and "{" not in t:
        return text
    edits: list[Edit] = []
    for m in _AMOUNT_BRACES.finditer(t):
        edits.append((m.start(), m.start() + 1, ""))
        edits.append((m.end() - 1, m.end(), ""))
    text = text.edit(edits)

    def replacement(m: re.Match[str]) -> str:
        if m.group("date") is not None:
            return date_token if "X" in m.group() or "year" in m.group() else m.group()
        return redaction_token

    return text.sub(_REDACTION, replacement)


# =============================================================================== the stage


class Normaliser:
    """The normalise stage. Stateless apart from its configuration, so one instance serves all threads."""

    def __init__(self, config: NormaliserConfig | None = None) -> None:
        self.config = config or NormaliserConfig()

    def check(self, text: str) -> None:
        """Run :func:`check_text` with this configuration's ``max_chars``."""
        check_text(text, self.config.max_chars)

    def normalise(self, text: str) -> NormalisedMessage:
        """Clean ``text`` and set aside history, headers and signatures; never raises on readable text."""
        cfg = self.config
        mapped = MappedText.identity(text)
        sections: list[Section] = []
        history: list[MappedText] = []
        was_html = False
        if cfg.convert_html and looks_like_html(text):
            mapped = html_to_text(mapped)
            was_html = True
        if cfg.clean_unicode:
            mapped = clean_unicode(mapped)
        if cfg.collapse_whitespace:
            mapped = collapse_whitespace(mapped)
        if cfg.strip_headers:
            m = _RECEIVED_FROM.match(mapped.text)
            if m and _has_content(mapped.text[m.end() :]):
                _add_section(sections, mapped, "header", 0, m.end())
                mapped = mapped.slice(m.end(), len(mapped))
        if cfg.set_aside_quoted_history:
            mapped, history, found = split_history(mapped)
            sections.extend(found)
        if cfg.strip_signatures:
            mapped, found = strip_signature(mapped)
            sections.extend(found)
        finishing: list[Callable[[MappedText], MappedText]] = []
        if cfg.convert_html and not was_html:
            finishing.append(decode_plain_entities)
        if cfg.rewrite_redactions:
            finishing.append(lambda m: rewrite_redactions(m, cfg.redaction_token, cfg.date_token))
        if cfg.collapse_whitespace:
            finishing.append(lambda m: m.sub(_EXTRA_BLANK_LINES, "\n\n"))
        for step in finishing:
            mapped = step(mapped)
            history = [step(item) for item in history]
        sections.sort(key=lambda s: (s.start, s.end))
        return NormalisedMessage(
            body=mapped.strip(),
            history=[item.strip() for item in history if item.text.strip()],
            sections=sections,
            was_html=was_html,
        )
