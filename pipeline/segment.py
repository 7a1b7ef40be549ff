"""The segment stage: cut a normalised body into sentences, the units asks are found in.

Customer text is not edited prose. Emails wrap lines mid-sentence, tickets are bullet lists,
chat messages run several requests together with no punctuation at all ("hi i lost my card
yesterday can you block it also i need a new one thanks"), social posts mix @handles, URLs
and emoji. A trained parser would need downloads and still mis-cut these, so the segmenter
is a blank spaCy English tokenizer plus rule components registered under versioned names:

* ``hearken_sentence_rules_v1`` — terminal punctuation (with abbreviation and number
  guards), line breaks (with hard-wrap continuation), bullet and numbered list items;
* ``hearken_chat_cues_v1`` — in unpunctuated, chat-style runs only, a spaCy ``Matcher``
  starts new sentences at clause cues ("can you", "please", "also", "thanks", ...).

Sentences longer than ``max_sentence_chars`` are then split at the best clause boundary, so
no downstream window has to cope with a 5,000-character "sentence". Docs never leave the
stage: callers get :class:`Sentence` objects with offsets into the text they passed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from spacy.attrs import IDX, IS_TITLE, SENT_START
from spacy.language import Language
from spacy.matcher import Matcher
from spacy.tokens import Doc

from pipeline.english import english_on, shared_english

RULES_COMPONENT = "hearken_sentence_rules_v1"
CASE_COMPONENT = "hearken_case_breaks_v2"
CHAT_COMPONENT = "hearken_chat_cues_v1"


class SegmenterConfig(BaseModel):
    """How the segmenter cuts text into sentences."""

    model_config = ConfigDict(extra="forbid")

    max_sentence_chars: int = Field(
        default=600,
        ge=40,
        description="Longest sentence returned; longer ones are split at a clause boundary or whitespace.",
    )
    split_on_newlines: bool = Field(
        default=True,
        description="A line break ends a sentence (except a hard-wrapped line continuing in lowercase). "
        "Blank lines and list items always end one.",
    )
    hard_wrap_min_line_chars: int = Field(
        default=50,
        ge=1,
        description="A line at least this long that ends without punctuation, followed by a line starting "
        "in lowercase, is taken as hard-wrapped and continues the sentence.",
    )
    case_breaks: bool = Field(
        default=True,
        description="A capitalised sentence opener ('My', 'The', 'Please', 'Can', ...; never 'I') right "
        "after a lowercase word starts a new sentence: the writer left the sentence before it unpunctuated "
        "('i need a new pin My card was blocked yesterday.').",
    )
    chat_cues: bool = Field(
        default=True,
        description="Split unpunctuated chat-style runs at clause cues ('can you', 'please', 'also', "
        "'thanks').",
    )
    batch_size: int = Field(default=64, ge=1, description="Default batch size for segment_many (nlp.pipe).")
    renew_vocabulary_after: int = Field(
        default=200_000,
        ge=0,
        description="spaCy keeps every distinct word it has ever tokenised (about 40 MB per 100,000: order "
        "numbers, names, typos), so a long-running service or a large backlog would grow without end. After "
        "this many new words the pipeline rebuilds its spaCy stages on a fresh vocabulary (about half a "
        "second, results unchanged). 0 never does.",
    )


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``text == body[start:end]`` of the text given to the segmenter, trimmed."""

    start: int
    end: int
    text: str


# =============================================================================== shared helpers

IntArray = npt.NDArray[np.int64]


_TEXT_KEY = "hearken_text"


def _doc_text(doc: Doc) -> str:
    """The doc's text, cached in ``user_data``: ``Doc.text`` re-joins every token on each call."""
    text = doc.user_data.get(_TEXT_KEY)
    if text is None:
        text = doc.text
        doc.user_data[_TEXT_KEY] = text
    return text


def _token_starts(doc: Doc) -> IntArray:
    return doc.to_array([IDX]).astype(np.int64).reshape(-1)


def _tokens_at(token_idx: IntArray, positions: Iterable[int]) -> IntArray:
    """Index of the token containing each character position."""
    pos = np.fromiter(positions, dtype=np.int64)
    if pos.size == 0:
        return pos
    return np.searchsorted(token_idx, pos, side="right") - 1


def _write_sent_starts(doc: Doc, starts: IntArray) -> None:
    """Set SENT_START for the whole doc in one call: 1 at ``starts`` (and token 0), -1 elsewhere."""
    values = np.full(len(doc), -1, dtype=np.int64)
    values[0] = 1
    values[starts[(starts >= 0) & (starts < len(doc))]] = 1
    doc.from_array([SENT_START], values.astype(np.uint64).reshape(-1, 1))


def _sent_start_tokens(doc: Doc) -> IntArray:
    values = doc.to_array([SENT_START]).astype(np.int64).reshape(-1)
    starts = np.flatnonzero(values == 1)
    if len(doc) and (starts.size == 0 or starts[0] != 0):
        starts = np.concatenate(([0], starts))
    return starts


# =============================================================================== punctuation, lines, lists


def _words(text: str) -> list[str]:
    """Word lists are written as one string: easier to read and extend than a column of literals."""
    return text.split()


# Never end a sentence after these (titles, "acct. no. 123", "e.g.").
_NEVER_SPLIT_AFTER = frozenset(
    _words(
        "mr mrs ms mx dr prof rev hon sr jr st mt ft gen col capt lt sgt vs v cf viz eg ie e.g i.e "
        "approx apx appt dept est fig acct acc ref tel ph ext attn encl min max avg ave blvd rd apt "
        "bldg ste"
    )
)
# Not after these when a number follows ("no. 12345", "acct # 55"); "No. I want a refund" does split.
_NUMBER_ABBREVIATIONS = frozenset(_words("no nos num nr"))
# End a sentence after these only when the next word is capitalised ("... Acme Inc. They ...").
_SPLIT_IF_CAPITAL_AFTER = frozenset(
    _words("etc inc ltd co corp llc plc bros jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m am pm")
)
_TERMINAL = re.compile(r"(?P<punct>[.!?]+|…)[\"'”’)\]]*(?P<space>\s+)(?=\S)")
_WORD_BEFORE = re.compile(r"(\S{1,40})$")
_NEWLINE_RUN = re.compile(r"\n[ \t\n]*")
_LIST_MARKER = re.compile(
    r"^[ \t]*(?P<marker>[-*•·▪◦‣–—+>]|\(?(?P<num>\d{1,3})[.)]|\(?[a-z][.)]|\(?[A-Z]\))[ \t]+(?=\S)",
    re.MULTILINE,
)
_INLINE_BULLET = re.compile(r"(?<=\S)[ \t]+(?P<marker>[•▪◦‣])[ \t]+(?=\S)")
_INLINE_NUMBER = re.compile(r"(?<![^\s(])\(?(?P<num>\d{1,2})[.)][ \t]+(?=[^\W\d_])")
_CLOSERS = "\"')]}”’"


def _is_terminal(text: str, m: re.Match[str], next_char: str) -> bool:
    """Decide whether the punctuation in ``m`` ends a sentence, given the next non-space character."""
    punct = m.group("punct")
    if "?" in punct or "!" in punct:
        return True
    if next_char in ",;:":
        return False
    word_match = _WORD_BEFORE.search(text, max(0, m.start() - 40), m.start())
    word = word_match.group(1).lstrip("([{\"'").lower() if word_match else ""
    if punct in ("...", "…") or len(punct) > 1:
        return next_char.isupper() or not next_char.isalpha()
    if not word:
        return True
    if word in _NEVER_SPLIT_AFTER:
        return False
    if word in _NUMBER_ABBREVIATIONS:
        return not (next_char.isdigit() or next_char == "#")
    if word in _SPLIT_IF_CAPITAL_AFTER or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
        return next_char.isupper()
    if len(word) == 1 and word.isalpha() and text[m.start() - 1].isupper():
        return not next_char.isupper()  # an initial: "J. Smith"
    return True


def _list_markers(text: str) -> tuple[list[int], set[int]]:
    """Starts of list items, and the positions of marker punctuation that must not end a sentence."""
    starts: list[int] = []
    suppressed: set[int] = set()
    for m in _LIST_MARKER.finditer(text):
        starts.append(m.start("marker"))
        suppressed.add(m.end("marker") - 1)
    for m in _INLINE_BULLET.finditer(text):
        starts.append(m.start("marker"))
    inline = list(_INLINE_NUMBER.finditer(text))
    numbers = [int(m.group("num")) for m in inline]
    for i, m in enumerate(inline):
        # Inline "1) ... 2) ..." counts only as part of a run of consecutive numbers.
        before = i > 0 and numbers[i - 1] == numbers[i] - 1
        after = i + 1 < len(inline) and numbers[i + 1] == numbers[i] + 1
        if before or after:
            starts.append(m.start())
            suppressed.add(m.end("num"))
    return starts, suppressed


def rule_boundaries(
    text: str, split_on_newlines: bool = True, hard_wrap_min_line_chars: int = 50
) -> list[int]:
    """Character positions where a sentence starts, from punctuation, line breaks and list items."""
    boundaries, suppressed = _list_markers(text)
    list_starts = set(boundaries)
    for m in _TERMINAL.finditer(text):
        if m.start("punct") in suppressed or m.end("punct") - 1 in suppressed:
            continue
        nxt = m.end()
        if _is_terminal(text, m, text[nxt]):
            boundaries.append(nxt)
    for m in _NEWLINE_RUN.finditer(text):
        nxt = m.end()
        if nxt >= len(text):
            break
        if nxt in list_starts or m.group().count("\n") > 1:
            boundaries.append(nxt)
            continue
        if not split_on_newlines:
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        line = text[line_start : m.start()].rstrip()
        wrapped = (
            len(line) >= hard_wrap_min_line_chars
            and line[-1:] not in ".!?:;" + _CLOSERS
            and text[nxt].islower()
        )
        if not wrapped:
            boundaries.append(nxt)
    return boundaries


@Language.factory(
    RULES_COMPONENT,
    default_config={"split_on_newlines": True, "hard_wrap_min_line_chars": 50},
)
def make_sentence_rules(
    nlp: Language, name: str, split_on_newlines: bool, hard_wrap_min_line_chars: int
) -> SentenceRules:
    return SentenceRules(split_on_newlines, hard_wrap_min_line_chars)


class SentenceRules:
    """Sets SENT_START from punctuation, line breaks and list markers (character-level rules)."""

    def __init__(self, split_on_newlines: bool, hard_wrap_min_line_chars: int) -> None:
        self.split_on_newlines = split_on_newlines
        self.hard_wrap_min_line_chars = hard_wrap_min_line_chars

    def __call__(self, doc: Doc) -> Doc:
        if not len(doc):
            return doc
        positions = rule_boundaries(_doc_text(doc), self.split_on_newlines, self.hard_wrap_min_line_chars)
        _write_sent_starts(doc, _tokens_at(_token_starts(doc), positions))
        return doc


# =============================================================================== chat cues

_CONTENT_STOP = frozenset(
    _words(
        "a an the and or but so if that because then than as of to for in on at by with from about "
        "into i you u we me my your our he she they it its is are was were be been am do does did "
        "have has had can could would will should may might must shall please pls plz kindly also "
        "just not no yes ok okay what when where why how who which whether know tell wonder "
        "wondering ask asking see understand explain idea sure let help out up"
    )
)
_ACKS = _words(
    "yes yeah yep yup ya ok okay k sure no nope nah fine alright great perfect cool correct exactly awesome "
    "right oh sorry thats that's"
)
_AFTER_ACK = _words(
    "thank thanks thx i i'm im please can could my that thats that's it its it's have bye goodbye nothing no "
    "we will let"
)


def _cue_patterns() -> dict[str, list[list[dict[str, object]]]]:
    """Matcher patterns; the match start is where the new sentence would begin."""
    lower = "LOWER"
    return {
        "THANKS": [
            [{lower: {"IN": ["thanks", "thx", "tks", "thanx", "thankyou"]}}],
            [{lower: "thank"}, {lower: {"IN": ["you", "u"]}}],
        ],
        "MODAL_YOU": [
            [
                {lower: {"IN": ["can", "could", "would", "will", "cant", "can't", "wont", "won't"]}},
                {lower: {"IN": ["you", "u", "someone", "somebody", "anyone", "i", "we"]}},
            ]
        ],
        "PLEASE": [[{lower: {"IN": ["please", "pls", "plz", "kindly"]}}]],
        "ALSO": [
            [{lower: {"IN": ["also", "btw", "additionally", "furthermore"]}}],
            [{lower: "by"}, {lower: "the"}, {lower: "way"}],
        ],
        "I_WANT": [
            [
                {lower: {"IN": ["i", "im", "i'm", "we"]}},
                {
                    lower: {
                        "IN": ["need", "want", "wanted", "would", "wanna", "'d", "d", "am", "have", "will"]
                    }
                },
            ]
        ],
        "WH_QUESTION": [
            [
                {lower: {"IN": ["how", "what", "when", "where", "why", "which"]}},
                {
                    lower: {
                        "IN": [
                            "do",
                            "does",
                            "did",
                            "can",
                            "could",
                            "should",
                            "would",
                            "will",
                            "is",
                            "are",
                            "was",
                            "much",
                            "long",
                            "many",
                            "about",
                        ]
                    }
                },
            ]
        ],
        "BUT": [[{lower: "but"}]],
        "AND_I": [[{lower: "and"}, {lower: {"IN": ["i", "also", "please", "can", "could"]}}]],
        "CLOSING": [
            [
                {lower: "have"},
                {lower: {"IN": ["a", "an"]}},
                {lower: {"IN": ["nice", "good", "great", "wonderful"]}},
            ],
            [{lower: {"IN": ["bye", "goodbye"]}}],
            [{lower: "good"}, {lower: {"IN": ["bye", "day", "night"]}}],
            [{lower: {"IN": ["thats", "that's"]}}, {lower: {"IN": ["all", "it"]}}],
            [{lower: "nothing"}, {lower: {"IN": ["else", "more"]}}],
        ],
        "GREETING": [
            [{lower: {"IN": ["hi", "hello", "hey", "hiya", "greetings"]}}],
            [{lower: "good"}, {lower: {"IN": ["morning", "afternoon", "evening"]}}],
        ],
        "ACK": [[{lower: {"IN": _ACKS}}, {lower: {"IN": _AFTER_ACK}}]],
    }


#: Words after which a cue does not start a new clause ("could you please", "let me know when").
_NO_SPLIT_BEFORE: dict[str, frozenset[str]] = {
    "THANKS": frozenset(_words("no and also many big say to so a")),
    "PLEASE": frozenset(_words("you u can could would will me and so ok okay yes sir madam now then just")),
    "MODAL_YOU": frozenset(_words("and or so if that because then how what when where why who which also")),
    "I_WANT": frozenset(
        _words(
            "and or so if that because then when where what which why how but as since also than think "
            "hope guess know believe said say"
        )
    ),
    "WH_QUESTION": _CONTENT_STOP,
    "ALSO": frozenset(_words("and i we you")),
}
#: Minimum tokens between the previous sentence start and the cue, and from the cue to the end of the
#: run. Measured on MultiDoGO train turns: annotators rarely split short turns ("ok thank you",
#: "yes i would like that"), so cues only cut runs where both sides can stand as a clause.
_CUE_MIN_WORDS_BEFORE = {
    "GREETING": 1, "ACK": 1, "THANKS": 2, "CLOSING": 2, "MODAL_YOU": 2, "I_WANT": 2, "PLEASE": 3,
    "WH_QUESTION": 3, "ALSO": 4, "BUT": 3, "AND_I": 5,
}  # fmt: skip
_CUE_MIN_WORDS_AFTER = {
    "GREETING": 3, "ACK": 5, "THANKS": 1, "CLOSING": 2, "MODAL_YOU": 3, "I_WANT": 4, "PLEASE": 2,
    "WH_QUESTION": 2, "ALSO": 4, "BUT": 5, "AND_I": 5,
}  # fmt: skip
_PUNCT_IN_RUN = re.compile(r"[.!?;]\s")
_ENDS_PUNCTUATED = re.compile(r"[.!?][\"')\]]*$")
_ALPHA = re.compile(r"[^\W\d_]")


#: Capitalised words that open a sentence and almost never stand capitalised inside one. "I" is not
#: here: "the card I ordered" puts it after a lowercase word mid-sentence all the time. Nor is
#: "first": "First Source" and "First Credit Services" are company names. The time and
#: connective openers ("In", "On", "So", "Before" ...) were checked on 3,000 CFPB narratives:
#: they add 34 cuts, 28 at a real sentence start ("... unsure to where Later we saw that ...");
#: the rest are typos ("had a In branch rep"), names ("my On Line Account") and title case.
_SENTENCE_OPENERS = frozenset(
    _words(
        "my the this that these those we our it its they their he she his her you your please thank thanks "
        "can could would will why what how when where is are do does did also after since then however "
        "now today yesterday recently hello hi dear "
        "in on at as if so for there here before upon during last once while again later finally "
        "meanwhile instead although though because unfortunately"
    )
)
#: Words after which a capital is the writer's slip, not a new sentence ("and They never answered").
_NO_CASE_BREAK_AFTER = frozenset(
    _words(
        "and or but nor so because that if when while said says stated told asked wrote of to for with "
        "at in on by from as than per via into about"
    )
)
_CASE_MIN_TOKENS_BEFORE = 3
_CASE_MIN_TOKENS_AFTER = 2


@Language.factory(CASE_COMPONENT)
def make_case_breaks(nlp: Language, name: str) -> CaseBreaks:
    return CaseBreaks()


class CaseBreaks:
    """Starts a sentence at a capitalised opener that follows a lowercase word.

    Why: a question typed without a question mark and followed by more text ("can i get a refund
    My order never came.") gives punctuation nothing to cut at, and the ask is then scored as part
    of the next sentence. In edited prose a capitalised "My", "The" or "Please" right after a
    lowercase word does not happen inside a sentence, so the case change marks the missing stop.
    Names are safe because only the listed openers count ("my Discover card" stays whole), and at
    least ``_CASE_MIN_TOKENS_BEFORE`` tokens must come before and ``_CASE_MIN_TOKENS_AFTER`` after.

    "I" is the commonest opener but also stands after lowercase words inside sentences ("the card I
    ordered"), so it counts only where the writer has just shown that they type the pronoun as "i"
    with no capitals at all since the sentence began: "tell me what i owe I paid in March."
    """

    def __call__(self, doc: Doc) -> Doc:
        if len(doc) < _CASE_MIN_TOKENS_BEFORE + _CASE_MIN_TOKENS_AFTER:
            return doc
        # Only title-case tokens can open a sentence here: find them in one array pass, so the
        # common token costs nothing in Python.
        titles = np.flatnonzero(doc.to_array(IS_TITLE))
        if not len(titles):
            return doc
        starts = _sent_start_tokens(doc)
        bounds = np.append(starts, len(doc))
        new_starts: list[int] = []
        for a, b in itertools.pairwise(bounds):
            sentence_start, end = int(a), int(b)
            lo, hi = np.searchsorted(
                titles, [sentence_start + _CASE_MIN_TOKENS_BEFORE, end - _CASE_MIN_TOKENS_AFTER + 1]
            )
            for i in titles[lo:hi].tolist():
                if i - sentence_start >= _CASE_MIN_TOKENS_BEFORE and self._opens_sentence(
                    doc, i, sentence_start
                ):
                    new_starts.append(i)
                    sentence_start = i
        if new_starts:
            _write_sent_starts(doc, np.concatenate((starts, np.asarray(new_starts, dtype=np.int64))))
        return doc

    @staticmethod
    def _opens_sentence(doc: Doc, i: int, sentence_start: int) -> bool:
        token, previous = doc[i], doc[i - 1]
        if not (previous.is_alpha and previous.is_lower) or previous.lower_ in _NO_CASE_BREAK_AFTER:
            return False
        if not previous.whitespace_ or "\n" in previous.whitespace_:
            return False  # glued tokens; line breaks are the sentence rules' business
        if token.text == "I":
            # The writer typed the pronoun as "i" since the sentence began, and no capital at all.
            before = [doc[j].text for j in range(sentence_start, i)]
            return "i" in before and not any(c.isupper() for text in before for c in text)
        return token.lower_ in _SENTENCE_OPENERS


@Language.factory(CHAT_COMPONENT)
def make_chat_cues(nlp: Language, name: str) -> ChatCues:
    return ChatCues(nlp)


class ChatCues:
    """Adds sentence starts at clause cues inside chat-style runs that punctuation did not cut.

    A run is chat-style when it starts in lowercase, or when the whole text has no terminal
    punctuation: in edited prose, cue words ("please", "when") sit inside sentences and
    splitting there would do harm, so punctuated, capitalised runs are left alone.
    """

    def __init__(self, nlp: Language) -> None:
        self.matcher = Matcher(nlp.vocab)
        for key, patterns in _cue_patterns().items():
            self.matcher.add(key, patterns)  # type: ignore[arg-type]

    def __call__(self, doc: Doc) -> Doc:
        if len(doc) < 2:
            return doc
        text = _doc_text(doc)
        starts = _sent_start_tokens(doc)
        bounds = np.append(starts, len(doc))
        unpunctuated_doc = not _PUNCT_IN_RUN.search(text)
        chat_runs: list[tuple[int, int]] = []
        for a, b in itertools.pairwise(bounds):
            if b - a < 2:
                continue
            run_start_char = doc[a].idx
            run_end_char = doc[b - 1].idx + len(doc[b - 1])
            first_alpha = _ALPHA.search(text, run_start_char, run_end_char)
            if first_alpha is None:
                continue
            if unpunctuated_doc:
                chat_runs.append((int(a), int(b)))
                continue
            # In punctuated text only lowercase runs the writer did not end with punctuation.
            tail = text[max(run_start_char, run_end_char - 8) : run_end_char].rstrip()
            if first_alpha.group().islower() and not _ENDS_PUNCTUATED.search(tail):
                chat_runs.append((int(a), int(b)))
        if not chat_runs:
            return doc
        new_starts: list[int] = []
        matches = sorted(self.matcher(doc), key=lambda m: m[1])
        run_of = (
            np.searchsorted(np.asarray([r[0] for r in chat_runs]), [m[1] for m in matches], side="right") - 1
        )
        strings = doc.vocab.strings
        last_start = -1  # start of the sentence the next cue would cut (the run start or the last cue)
        for (match_id, start, end), run_index in zip(matches, run_of, strict=True):
            if run_index < 0:
                continue
            run_start, run_end = chat_runs[run_index]
            if not run_start <= start < run_end:
                continue
            sentence_start = max(run_start, last_start)
            split = self._split_point(doc, strings[match_id], start, end, sentence_start, run_end)
            if split is not None and sentence_start < split < run_end:
                new_starts.append(split)
                last_start = split
        if new_starts:
            _write_sent_starts(doc, np.concatenate((starts, np.asarray(new_starts, dtype=np.int64))))
        return doc

    @staticmethod
    def _split_point(doc: Doc, key: str, start: int, end: int, run_start: int, run_end: int) -> int | None:
        """Token where the new sentence starts for this cue, or None when the cue does not apply here."""
        if key == "GREETING":
            # "hi i lost my card" -> "hi" | "i lost my card"; "hi there i need" -> "hi there" | "i need".
            if start != run_start:
                return None
            for i in range(end, min(end + 3, run_end)):
                if doc[i].lower_ in _GREETING_FOLLOWERS:
                    return i if run_end - i >= _CUE_MIN_WORDS_AFTER[key] else None
            return None
        if key == "ACK":
            # "sure i will send the receipt tonight" -> "sure" | "i will ..."; "yes i do" stays whole.
            if start != run_start or run_end - (start + 1) < _CUE_MIN_WORDS_AFTER[key]:
                return None
            return start + 1
        if start == run_start:
            return None
        if start - run_start < _CUE_MIN_WORDS_BEFORE.get(key, 1):
            return None
        if run_end - start < _CUE_MIN_WORDS_AFTER.get(key, 1):
            return None
        previous = doc[start - 1]
        if previous.is_punct or previous.is_space:
            return None
        blocked = _NO_SPLIT_BEFORE.get(key)
        if blocked is not None and previous.lower_ in blocked:
            return None
        return start


_GREETING_FOLLOWERS = frozenset(
    _words(
        "i i'm im my we our can could would please is do does how what when where why need want the "
        "there's thanks thank"
    )
)


# =============================================================================== long sentences

_CLAUSE_BREAKS = (
    re.compile(r"[;:]\s"),
    re.compile(r",\s"),
    re.compile(r"\s(?:and|but|or|so|because|which)\s"),
)


def _split_long(text: str, start: int, end: int, limit: int) -> Iterator[tuple[int, int]]:
    """Cut ``text[start:end]`` into pieces of at most ``limit`` chars at the latest good boundary."""
    while end - start > limit:
        window_start = start + limit // 3
        window_end = start + limit
        cut = None
        for pattern in _CLAUSE_BREAKS:
            found = list(pattern.finditer(text, window_start, window_end))
            if found:
                cut = found[-1].start() + 1
                break
        if cut is None:
            space = text.rfind(" ", window_start, window_end)
            if space < 0:
                space = max(text.rfind(c, window_start, window_end) for c in "\n\t")
            cut = space if space > start else window_end
        piece_start, piece_end = _trim(text, start, cut)
        if piece_start < piece_end:
            yield piece_start, piece_end
        start, end = _trim(text, cut, end)
    if start < end:
        yield start, end


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# =============================================================================== the stage


class Segmenter:
    """The segment stage: ``segment(text) -> list[Sentence]`` with offsets into ``text``."""

    def __init__(self, config: SegmenterConfig | None = None, english: Language | None = None) -> None:
        """``english``: the tokenizer and vocabulary to share (the process-wide one by default)."""
        self.config = config or SegmenterConfig()
        self.nlp = english_on(english or shared_english())
        self.nlp.add_pipe(
            RULES_COMPONENT,
            config={
                "split_on_newlines": self.config.split_on_newlines,
                "hard_wrap_min_line_chars": self.config.hard_wrap_min_line_chars,
            },
        )
        if self.config.case_breaks:
            self.nlp.add_pipe(CASE_COMPONENT)
        if self.config.chat_cues:
            self.nlp.add_pipe(CHAT_COMPONENT)

    def segment(self, text: str) -> list[Sentence]:
        """Sentences of ``text`` in order, trimmed, non-empty, covering all its non-space content."""
        if not text.strip():
            return []
        return self._sentences(self.nlp(self._make_doc(text)))

    def segment_many(self, texts: Iterable[str], batch_size: int | None = None) -> list[list[Sentence]]:
        """Segment many texts with ``nlp.pipe`` (same result as ``segment`` on each)."""
        docs = (self._make_doc(text) for text in texts)
        return [
            self._sentences(doc)
            for doc in self.nlp.pipe(docs, batch_size=batch_size or self.config.batch_size)
        ]

    def _make_doc(self, text: str) -> Doc:
        doc = self.nlp.make_doc(text)
        doc.user_data[_TEXT_KEY] = text
        return doc

    def _sentences(self, doc: Doc) -> list[Sentence]:
        text = _doc_text(doc)
        if not len(doc):
            return []
        starts = _sent_start_tokens(doc)
        token_idx = _token_starts(doc)
        char_starts = [*token_idx[starts].tolist(), len(text)]
        limit = self.config.max_sentence_chars
        sentences: list[Sentence] = []
        for a, b in itertools.pairwise(char_starts):
            a, b = _trim(text, a, b)
            if a >= b:
                continue
            if b - a <= limit:
                sentences.append(Sentence(a, b, text[a:b]))
            else:
                sentences.extend(Sentence(s, e, text[s:e]) for s, e in _split_long(text, a, b, limit))
        return sentences
