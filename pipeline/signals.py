"""The detect-signals stage: find the escalation and context signals of a policy, with evidence.

ROUTING_POLICY §4 routes a message to the top tier when the customer says something specific
("this is the third replacement card", "I have filed a complaint with the CFPB", "nobody ever
called me back"), whatever the ask. Those are phrasings, not topics: a rule lexicon finds them
more precisely than a classifier trained on a few hundred examples, and every hit can show
the words that triggered it. What makes rules hard is context, so the detector also knows
when a phrase does *not* count:

* **negation** — "I don't want to involve a lawyer";
* **hypotheticals** — "if my card is declined again" (a threat stays a threat when it is
  conditional: "if this is not fixed I will contact my lawyer" is a legal threat);
* **third parties and reported speech** — "my friend said she would sue", "the agent told me
  to contact the CFPB", "the collector threatened to sue me";
* **quoted email history** — read too, but reported with ``in_quoted_history`` set, so the
  router can decide what an earlier message is worth.

Everything a policy can change is *data*: the signals, their phrase lists and spaCy token
patterns, scores, co-occurrence requirements ("money taken" *and* "not delivered" in the same
or an adjacent sentence), and the cue lists of the modifiers, all in one YAML lexicon
(``pipeline/policies/consumer_finance/signals.yaml`` is the default; see its header for the
pattern syntax). Another company's policy writes its own file; nothing here knows the names
of the default signals.

The stage runs one blank English tokenizer, one ``Matcher`` and one ``PhraseMatcher`` over the
body and each quoted message; spaCy Docs never leave it. Spans index the ORIGINAL message
(through :class:`~pipeline.textmap.MappedText`), so ``original[start:end] == evidence``.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from spacy.attrs import IDX, LENGTH
from spacy.errors import MatchPatternError
from spacy.language import Language
from spacy.matcher import Matcher, PhraseMatcher
from spacy.tokens import Doc, Span, Token

from pipeline.english import shared_english
from pipeline.errors import ConfigError
from pipeline.normalise import NormalisedMessage, Normaliser
from pipeline.schema import Signal
from pipeline.segment import Segmenter, Sentence
from pipeline.textmap import MappedText
from pipeline.yamlfile import read_yaml_file

#: The lexicon that implements ROUTING_POLICY §4 for the default consumer-finance helpdesk.
DEFAULT_LEXICON_PATH = Path(__file__).resolve().parent / "policies" / "consumer_finance" / "signals.yaml"

#: Token extension holding a token's numeric value ("14", "fourteen", "3rd", "third"), -1 otherwise.
#: Patterns compare it ("#>=14" in the compact syntax), because "waited 3 days" and "waited 30
#: days" differ only in the number.
NUMBER_EXTENSION = "hearken_signal_number"

# =============================================================================== configuration


class SignalConfig(BaseModel):
    """How the signal detector reports what its lexicon finds."""

    model_config = ConfigDict(extra="forbid")

    read_quoted_history: bool = Field(
        default=True,
        description="Also read quoted earlier messages; their signals are reported with "
        "in_quoted_history=true so the router can weigh them separately.",
    )
    min_score: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Signals scored below this are dropped (lexicon rules carry their own scores; weak "
        "cues are scored under 0.5 so that they show only when this is lowered).",
    )
    max_per_signal: int = Field(
        default=3,
        ge=1,
        description="At most this many evidence spans per signal, best scored first; one is enough to "
        "route, a few help the agent.",
    )
    evidence: Literal["sentence", "match"] = Field(
        default="sentence",
        description="Evidence span: the whole sentence(s) that triggered the signal (what an agent reads), "
        "or only the matched words.",
    )


# =============================================================================== lexicon schema


class Modifier(BaseModel):
    """A context cue that cancels a match when it stands in the match's clause, before it.

    The detector walks back from the first word of a match, at most ``window`` tokens, and stops
    at the sentence start, at a scope breaker (punctuation, "but", "because"...) or at one of
    ``stop_words``. Meeting a cue on the way cancels the match, unless the cue starts one of
    ``cue_exceptions`` ("not only"). ``cleared_by`` words inside the match itself cancel the
    modifier ("my lawyer" is the customer's lawyer whoever else the sentence names).
    """

    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="What the modifier catches, for the people who maintain it.")
    cues: list[str] = Field(min_length=1, description="Words or short phrases (lower case) that trigger it.")
    window: int = Field(default=6, ge=1, le=50, description="How many tokens before a match are read.")
    stop_words: list[str] = Field(
        default_factory=list,
        description="Words that end the backward scan (e.g. a first-person subject for third_party).",
    )
    cue_exceptions: list[str] = Field(
        default_factory=list, description="Phrases starting with a cue that do not trigger it ('not only')."
    )
    cleared_by: list[str] = Field(
        default_factory=list, description="Words that, inside the match, switch this modifier off."
    )


PatternSpec = str | list[dict[str, Any]]


class MatchSpec(BaseModel):
    """Phrases and token patterns; shared by signal rules and cue groups."""

    model_config = ConfigDict(extra="forbid")

    phrases: list[str] = Field(
        default_factory=list, description="Literal phrases matched case-insensitively (PhraseMatcher)."
    )
    patterns: list[PatternSpec] = Field(
        default_factory=list,
        description="Token patterns: a compact string (see the lexicon header) or a spaCy Matcher pattern.",
    )
    ignore_in: list[str] | None = Field(
        default=None,
        description="Modifiers that cancel a match (names from `modifiers`); None inherits the signal's.",
    )
    exclude_before: list[str] = Field(
        default_factory=list,
        description="Drop a match when one of these words is among the few tokens before it.",
    )
    exclude_after: list[str] = Field(
        default_factory=list,
        description="Drop a match when one of these words is among the few tokens after it.",
    )
    exclude_window: int = Field(
        default=3, ge=1, le=20, description="How many tokens exclude_before / exclude_after look at."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> MatchSpec:
        if not self.phrases and not self.patterns:
            raise ValueError("give at least one of `phrases` or `patterns`")
        return self


class CueGroup(MatchSpec):
    """Named words that a rule may require nearby (e.g. money_taken for charged_not_delivered)."""

    description: str = Field(default="", description="What the cue group stands for.")


class Requirement(BaseModel):
    """A cue group that must also match near a rule's match."""

    model_config = ConfigDict(extra="forbid")

    cue: str = Field(description="Name of a cue group in `cues`.")
    window: int = Field(
        default=0, ge=0, le=3, description="Sentences either side that may hold the cue (0: same sentence)."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="With window 0: at most this many tokens between the match and the cue.",
    )
    position: Literal["any", "before", "after"] = Field(
        default="any",
        description="Where the cue must stand relative to the match: 'after' for 'filed a complaint with "
        "the CFPB' (the act, then the regulator), 'any' when the order does not matter.",
    )


class Rule(MatchSpec):
    """One way of saying a signal, with the score a match earns."""

    id: str = Field(description="Short name of the rule, unique within its signal (shown in debugging).")
    score: float = Field(ge=0.0, le=1.0, description="Score of a match of this rule.")
    requires: list[Requirement] = Field(
        default_factory=list, description="Cue groups that must all match near the rule's match."
    )


class SignalSpec(BaseModel):
    """One signal of the policy and the rules that detect it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Signal name as reported (snake_case).")
    description: str = Field(description="What the signal means, in the policy's words.")
    ignore_in: list[str] = Field(
        default_factory=list, description="Modifiers that cancel this signal's matches (rules may override)."
    )
    rules: list[Rule] = Field(min_length=1, description="Ways of saying it.")

    @field_validator("rules")
    @classmethod
    def _unique_rule_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice; give each rule its own id")
            seen.add(rule.id)
        return rules


class SignalLexicon(BaseModel):
    """A whole signal lexicon: what one policy's signals look like in text."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(description="Lexicon format version.")
    name: str = Field(description="Name of the policy this lexicon implements.")
    description: str = Field(default="", description="What the lexicon is for.")
    scope_breakers: list[str] = Field(
        default_factory=list,
        description="Tokens that end a modifier's backward scan: clause punctuation and conjunctions.",
    )
    words: dict[str, list[str]] = Field(
        default_factory=dict, description="Named word lists, used as @NAME in compact patterns."
    )
    modifiers: dict[str, Modifier] = Field(default_factory=dict, description="Context cues, by name.")
    cues: dict[str, CueGroup] = Field(default_factory=dict, description="Cue groups rules can require.")
    signals: list[SignalSpec] = Field(min_length=1, description="The signals, in report order.")

    @model_validator(mode="after")
    def _references(self) -> SignalLexicon:
        names = [s.name for s in self.signals]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"signal names {duplicates} are used more than once; each signal is listed once")

        def check_modifiers(where: str, listed: Iterable[str] | None) -> None:
            for name in listed or []:
                if name not in self.modifiers:
                    raise ValueError(
                        f"{where}: modifier {name!r} is not defined; define it under `modifiers` "
                        f"(defined: {sorted(self.modifiers)})"
                    )

        for name, group in self.cues.items():
            check_modifiers(f"cues.{name}.ignore_in", group.ignore_in)
        for i, signal in enumerate(self.signals):
            check_modifiers(f"signals[{i}].ignore_in", signal.ignore_in)
            for j, rule in enumerate(signal.rules):
                check_modifiers(f"signals[{i}].rules[{j}].ignore_in", rule.ignore_in)
                for req in rule.requires:
                    if req.cue not in self.cues:
                        raise ValueError(
                            f"signals[{i}].rules[{j}].requires: cue group {req.cue!r} is not defined; "
                            f"define it under `cues` (defined: {sorted(self.cues)})"
                        )
        return self

    @property
    def signal_names(self) -> list[str]:
        return [s.name for s in self.signals]


# =============================================================================== compact patterns


def _words(text: str) -> list[str]:
    """Word lists are written as one string: easier to read and extend than a column of literals."""
    return text.split()


_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty"
        )
    )
}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                      "ninety": 90, "hundred": 100, "once": 1, "twice": 2})  # fmt: skip
_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12,
}  # fmt: skip
_DIGITS = re.compile(r"^(\d{1,6})(?:st|nd|rd|th|\+)?$")


def number_value(text: str) -> float:
    """The numeric value of a token's text ("14", "fourteen", "3rd", "third"), or -1."""
    low = text.lower()
    m = _DIGITS.match(low)
    if m:
        return float(m.group(1))
    if low in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[low])
    return float(_ORDINAL_WORDS.get(low, -1))


def _token_number(token: Token) -> float:
    return number_value(token.text)


Token.set_extension(NUMBER_EXTENSION, getter=_token_number, force=True)

_QUANTIFIER = re.compile(r"(?P<body>.+?)(?P<op>[?*+]|\{\d*,?\d*\})$")
_COMPARISON = re.compile(r"^#(?P<op>>=|<=|==|>|<)(?P<value>\d+(?:\.\d+)?)$")


_MAX_VARIANTS = 16


def compile_pattern(spec: PatternSpec, words: dict[str, list[str]]) -> list[list[dict[str, Any]]]:
    """Turn a compact pattern string into spaCy Matcher patterns (dict patterns pass through).

    Tokens are separated by spaces; each may end in ``?``, ``*``, ``+`` or ``{n,m}``:

    * ``word`` one word (case-insensitive); ``a|b|c`` any of them; ``@NAME`` any word of the
      list ``NAME`` (may be mixed: ``@DET|this``); ``!a|b`` one token that is none of them;
    * ``_`` any token; ``~`` any token but punctuation; ``#`` a number; ``#>=14`` a number
      compared with 14 (digits, number words and ordinals); numbers mix with words
      (``#>=3|several|many``);
    * ``(a|b)?`` is the same as ``a|b?``; a slot is always ONE token, so a multi-word
      alternative is written as its own pattern or phrase.

    Usually one Matcher pattern; a slot that mixes words and numbers becomes one variant per kind.
    Raises ``ValueError`` naming the bad token; the loader turns it into a ``ConfigError``.
    """
    if isinstance(spec, list):
        return [spec]
    tokens = spec.split()
    if not tokens:
        raise ValueError("the pattern is empty")
    slots: list[list[dict[str, Any]]] = []
    for raw in tokens:
        body, op = raw, None
        m = _QUANTIFIER.match(raw)
        if m and len(raw) > 1:
            body, op = m.group("body"), m.group("op")
        if len(body) > 2 and body.startswith("(") and body.endswith(")"):
            body = body[1:-1]
        if len(body) > 1 and ("(" in body or ")" in body):
            raise ValueError(
                f"token {raw!r} has a parenthesis inside it: a slot is one token, so a multi-word "
                "alternative must be written as a separate pattern or a phrase"
            )
        slots.append([dict(t, **({"OP": op} if op else {})) for t in _slot_tokens(raw, body, words)])
    variants = [list(v) for v in itertools.product(*slots)]
    if len(variants) > _MAX_VARIANTS:
        raise ValueError(
            f"the pattern expands to {len(variants)} variants (more than {_MAX_VARIANTS}): mix numbers and "
            "words in fewer slots, or split it into several patterns"
        )
    for variant in variants:
        if all(t.get("OP") in ("?", "*") or str(t.get("OP", "")).startswith("{0") for t in variant):
            raise ValueError("every token of the pattern is optional, so it would match nothing useful")
    return variants


def _slot_tokens(raw: str, body: str, words: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The Matcher token dict(s) one compact slot stands for (several when numbers and words mix)."""
    if body == "_":
        return [{}]
    if body == "~":
        return [{"IS_PUNCT": False}]
    negate = body.startswith("!")
    alternatives = body[1:] if negate else body
    values: list[str] = []
    numeric: list[dict[str, Any]] = []
    for alt in alternatives.split("|"):
        if not alt:
            raise ValueError(f"token {raw!r} has an empty alternative (a stray '|')")
        if alt == "#":
            numeric.append({"LIKE_NUM": True})
        elif alt.startswith("#") and (cmp := _COMPARISON.match(alt)):
            numeric.append({"_": {NUMBER_EXTENSION: {cmp.group("op"): float(cmp.group("value"))}}})
        elif alt.startswith("#") and len(alt) > 1:
            raise ValueError(f"token {raw!r}: {alt!r} is not a number test (write '#', '#>=14', '#<3'...)")
        elif alt.startswith("@"):
            if alt[1:] not in words:
                raise ValueError(
                    f"token {raw!r} uses word list {alt[1:]!r}, which is not defined under `words`"
                )
            values.extend(w.lower() for w in words[alt[1:]])
        else:
            values.append(alt.lower())
    if negate:
        if numeric:
            raise ValueError(f"token {raw!r}: '!' cannot be combined with number tests")
        return [{"LOWER": {"NOT_IN": values}}]
    tokens = list(numeric)
    if len(values) == 1:
        tokens.append({"LOWER": values[0]})
    elif values:
        tokens.append({"LOWER": {"IN": values}})
    return tokens


#: Words too frequent to be a useful anchor (they are in nearly every message).
_COMMON_WORDS = frozenset(
    _words(
        "i me my we our us you your he she they them it its the a an and or but to of in on at for with from "
        "by as is are was were be been am have has had do does did not n't nt no never this that these those "
        "will would can ca could should wo 's 've 'm m s ve . , ! ? - $ yet still so if"
    )
)


# Phrases are built as spaCy Docs at start-up (about 16 µs each), so expansion is a trade of start-up
# time against matching speed. Measured on the consumer-finance lexicon: at 400, 14,064 phrases and a
# 0.36 s build; at 200, 6,634 phrases (26 patterns left as gated Matchers) and a 0.14 s build, with
# detection about 0.15 ms a message slower (identical signals) — a better deal for a 3-second cold start.
_MAX_EXPANSION = 200


def _as_word_sequences(pattern: list[dict[str, Any]]) -> list[tuple[str, ...]] | None:
    """The word sequences a pattern of fixed words (optional or not) stands for, or None.

    None when the pattern uses anything else (wildcards, numbers, repeats, negation) or expands
    to more than ``_MAX_EXPANSION`` sequences.
    """
    slots: list[list[str]] = []
    total = 1
    for token in pattern:
        if set(token) - {"LOWER", "OP"} or token.get("OP") not in (None, "?"):
            return None
        value = token.get("LOWER")
        if isinstance(value, str):
            words = [value]
        elif isinstance(value, dict) and set(value) == {"IN"}:
            words = [str(w) for w in value["IN"]]
        else:
            return None
        options = [*words, ""] if token.get("OP") == "?" else words
        total *= len(options)
        if total > _MAX_EXPANSION:
            return None
        slots.append(options)
    sequences = {tuple(w for w in combo if w) for combo in itertools.product(*slots)}
    return sorted(seq for seq in sequences if seq)


def pattern_gates(pattern: list[dict[str, Any]]) -> tuple[frozenset[str], ...]:
    """Word sets a sentence must each share a word with for ``pattern`` to match there.

    One set per mandatory slot that names its words, leaving out slots made only of very common
    words (they would filter nothing). A sentence without "lawyer" or "attorney" never runs the
    legal patterns at all.
    """
    gates: list[frozenset[str]] = []
    for token in pattern:
        op = str(token.get("OP", ""))
        if op in ("?", "*", "!") or op.startswith("{0"):
            continue
        value = token.get("LOWER")
        if isinstance(value, str):
            words = frozenset([value])
        elif isinstance(value, dict) and isinstance(value.get("IN"), list):
            words = frozenset(str(w) for w in value["IN"])
        else:
            continue
        if words <= _COMMON_WORDS and len(words) > 3:
            continue
        gates.append(words)
    # Rarest first, so that a sentence lacking it is ruled out after one look-up.
    gates.sort(key=lambda g: (sum(1 for w in g if w in _COMMON_WORDS), len(g)))
    return tuple(gates)


# =============================================================================== loading


def _key_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _check_patterns(lexicon: SignalLexicon, source: str) -> None:
    """Compile every pattern so a bad one fails at load, by key.

    Compact patterns are checked by :func:`compile_pattern` itself, which builds only token forms
    spaCy accepts; of what it copies from the text, only the quantifiers (``{2,4}``) go through
    spaCy's validating Matcher, once per distinct form. Hand-written Matcher patterns (lists of
    dicts) are validated whole. Validating every compiled pattern with spaCy instead cost 0.3 s of
    each cold start (about 500 patterns, each through spaCy's pydantic schema).
    """
    nlp = shared_english()
    specs: list[tuple[str, MatchSpec]] = [(f"cues.{n}", g) for n, g in lexicon.cues.items()]
    for i, signal in enumerate(lexicon.signals):
        specs.extend((f"signals[{i}].rules[{j}]", rule) for j, rule in enumerate(signal.rules))
    checked_quantifiers: set[str] = set()
    for where, spec in specs:
        for k, pattern in enumerate(spec.patterns):
            key = f"{where}.patterns[{k}]"
            try:
                compiled = compile_pattern(pattern, lexicon.words)
                if isinstance(pattern, list):
                    Matcher(nlp.vocab, validate=True).add("check", compiled)
                    continue
                for token in (t for variant in compiled for t in variant):
                    op = token.get("OP")
                    if op is not None and op not in checked_quantifiers:
                        Matcher(nlp.vocab, validate=True).add("check", [[{"LOWER": "x", "OP": op}]])
                        checked_quantifiers.add(op)
            except (ValueError, MatchPatternError, TypeError, KeyError) as error:
                detail = " ".join(str(error).split())
                raise ConfigError(
                    f"Signal lexicon {source}: bad pattern at {key} ({pattern!r}): {detail}",
                    fix="fix the pattern (see the compact pattern syntax in the lexicon header) or write "
                    "it as a spaCy Matcher pattern",
                ) from error
        for k, phrase in enumerate(spec.phrases):
            if not phrase.strip():
                raise ConfigError(
                    f"Signal lexicon {source}: empty phrase at {where}.phrases[{k}].",
                    fix="remove the empty phrase",
                )


def load_signal_lexicon(path: Path | str, text: str | None = None) -> SignalLexicon:
    """Read and validate a signal lexicon YAML; every problem is a ``ConfigError`` naming file and key.

    ``text``: the file's content, already read (a policy bundle's), so what is used is what was hashed.
    """
    path = Path(path)
    raw = read_yaml_file(
        path,
        "Signal lexicon",
        text=text,
        missing_fix="point signals.lexicon at an existing YAML file, or leave it unset for the default "
        "lexicon",
        syntax_fix="fix the YAML syntax at the line shown (quote phrases that contain ':' or start with "
        "'@', '!', '#'; quote the words no, on, off and yes)",
    )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Signal lexicon {path} must be a mapping with version, name and signals "
            f"(it is a {type(raw).__name__}).",
            fix="start from pipeline/policies/consumer_finance/signals.yaml",
        )
    try:
        lexicon = SignalLexicon.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{_key_path(e['loc'])}: {e['msg']}" for e in error.errors()[:5])
        raise ConfigError(
            f"Signal lexicon {path} is invalid: {problems}",
            fix="fix or remove the keys named (unknown keys are errors, so check their spelling)",
        ) from error
    _check_patterns(lexicon, str(path))
    return lexicon


# =============================================================================== detection


@dataclass(frozen=True)
class _Compiled:
    """One rule or cue group ready to run: its spec and the modifier names that cancel its matches."""

    key: str
    spec: MatchSpec
    ignore_in: tuple[str, ...]
    signal: int = -1  # index into lexicon.signals; -1 for a cue group
    score: float = 0.0


@dataclass(frozen=True)
class _Hit:
    """A surviving match: which compiled entry, token span, sentence index."""

    entry: _Compiled
    start: int
    end: int
    sentence: int


@dataclass(frozen=True)
class _Text:
    """One text to read (the body or one quoted message) with its sentences."""

    mapped: MappedText
    sentences: Sequence[Sentence]
    quoted: bool


class _ModifierScan:
    """A modifier compiled for fast backward scans over lower-cased tokens."""

    def __init__(self, modifier: Modifier, breakers: frozenset[str]) -> None:
        self.window = modifier.window
        self.cues = [tuple(c.lower().split()) for c in modifier.cues]
        self.first_words = frozenset(c[0] for c in self.cues)
        self.exceptions = [tuple(e.lower().split()) for e in modifier.cue_exceptions]
        self.stops = breakers | frozenset(w.lower() for w in modifier.stop_words)
        self.cleared_by = frozenset(w.lower() for w in modifier.cleared_by)

    def applies(self, lowers: list[str], start: int, end: int, sentence_start: int) -> bool:
        """True when a cue stands in the clause before ``lowers[start:end]``."""
        if self.cleared_by and any(w in self.cleared_by for w in lowers[start:end]):
            return False
        lowest = max(sentence_start, start - self.window)
        for i in range(start - 1, lowest - 1, -1):
            word = lowers[i]
            if (
                word in self.first_words
                and self._cue_at(lowers, i, start)
                and not self._exception_at(lowers, i)
            ):
                return True
            if word in self.stops:
                return False
        return False

    def _cue_at(self, lowers: list[str], i: int, limit: int) -> bool:
        return any(tuple(lowers[i : i + len(c)]) == c and i + len(c) <= limit for c in self.cues)

    def _exception_at(self, lowers: list[str], i: int) -> bool:
        return any(tuple(lowers[i : i + len(e)]) == e for e in self.exceptions)


@dataclass(frozen=True)
class _TokenPattern:
    """One Matcher pattern and the word sets a sentence must contain (one word of each) to run it."""

    matcher: Matcher
    gates: tuple[frozenset[str], ...]


class _DocIndex:
    """Per-doc look-ups shared by all patterns: which sentences contain which words."""

    def __init__(self, doc: Doc, lowers: list[str], sent_bounds: list[int]) -> None:
        self.doc = doc
        self.bounds = sent_bounds
        self.n_sentences = len(sent_bounds) - 1
        self.word_sentences: dict[str, set[int]] = {}
        s = 0
        for i, word in enumerate(lowers):
            while s + 1 < len(sent_bounds) - 1 and i >= sent_bounds[s + 1]:
                s += 1
            self.word_sentences.setdefault(word, set()).add(s)
        # A set (not the dict) so that ``gate & words`` walks the smaller side: most gates are a few
        # words, most narratives a few hundred distinct ones.
        self.words = frozenset(self.word_sentences)
        self._spans: dict[int, Span] = {}
        self._with: dict[int, frozenset[int]] = {}  # id(pattern) -> its sentences, once per doc
        self._all = frozenset(range(self.n_sentences))

    def sentences_with(self, pattern: _TokenPattern) -> frozenset[int]:
        """Sentences that contain at least one word of each of the pattern's gates (cached per doc)."""
        key = id(pattern)
        cached = self._with.get(key)
        if cached is not None:
            return cached
        result: frozenset[int] | set[int] = self._all
        for gate in pattern.gates:
            found: set[int] = set()
            for word in gate & self.words:
                found |= self.word_sentences[word]
            result = found if result is self._all else result & found
            if not result:
                break
        frozen = frozenset(result)
        self._with[key] = frozen
        return frozen

    def sentence_of(self, token: int) -> int:
        return bisect.bisect_right(self.bounds, token) - 1

    def span(self, sentence: int) -> Span:
        span = self._spans.get(sentence)
        if span is None:
            span = self._spans[sentence] = self.doc[self.bounds[sentence] : self.bounds[sentence + 1]]
        return span


class SignalDetector:
    """The detect-signals stage: ``detect(normalised, body_sentences, history_sentences) -> [Signal]``.

    Built once, then thread-compatible: ``detect`` keeps no state between calls.

    Speed: spaCy's Matcher tests every pattern's first token at every position, in Python for
    word lists, so one Matcher holding a few hundred patterns reads a 300-word message at
    ~60/s. Here phrases go to one PhraseMatcher (C speed), and each token pattern gets its own
    small Matcher that runs only on the sentences containing a word of each of its mandatory
    slots, and only near a possible match of the cue groups its rule requires.
    """

    def __init__(
        self, lexicon: SignalLexicon, config: SignalConfig | None = None, english: Language | None = None
    ) -> None:
        """``english``: the tokenizer and vocabulary to match on (the process-wide one by default); the
        documents given to ``detect`` must come from the same vocabulary."""
        self.lexicon = lexicon
        self.config = config or SignalConfig()
        self.nlp = english or shared_english()
        self.phrase_matcher = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        self._entries: dict[int, _Compiled] = {}
        self._patterns: dict[str, list[_TokenPattern]] = {}
        breakers = frozenset(w.lower() for w in lexicon.scope_breakers)
        self._modifiers = {name: _ModifierScan(m, breakers) for name, m in lexicon.modifiers.items()}
        self._cues: dict[str, _Compiled] = {}
        self._rules: list[_Compiled] = []
        for name, group in lexicon.cues.items():
            self._cues[name] = self._add(_Compiled(f"cue:{name}", group, tuple(group.ignore_in or ())))
        for i, signal in enumerate(lexicon.signals):
            for rule in signal.rules:
                if rule.score < self.config.min_score:
                    continue  # never reported, so not worth matching
                ignore = rule.ignore_in if rule.ignore_in is not None else signal.ignore_in
                self._rules.append(
                    self._add(_Compiled(f"rule:{signal.name}:{rule.id}", rule, tuple(ignore), i, rule.score))
                )
        self._normaliser: Normaliser | None = None
        self._segmenter: Segmenter | None = None

    @classmethod
    def from_path(cls, path: Path | str | None = None, config: SignalConfig | None = None) -> SignalDetector:
        """Load a lexicon file (the default consumer-finance one when ``path`` is None)."""
        return cls(load_signal_lexicon(path or DEFAULT_LEXICON_PATH), config)

    def _add(self, entry: _Compiled) -> _Compiled:
        key = self.nlp.vocab.strings.add(entry.key)
        self._entries[key] = entry
        patterns = self._patterns.setdefault(entry.key, [])
        phrases = [self.nlp.make_doc(p) for p in entry.spec.phrases]
        for spec in entry.spec.patterns:
            for pattern in compile_pattern(spec, self.lexicon.words):
                expanded = _as_word_sequences(pattern)
                if expanded is not None:
                    # Fixed words only: as phrases they run inside the PhraseMatcher, at C speed.
                    phrases.extend(Doc(self.nlp.vocab, words=list(seq)) for seq in expanded)
                    continue
                matcher = Matcher(self.nlp.vocab)
                matcher.add(entry.key, [pattern])
                patterns.append(_TokenPattern(matcher, pattern_gates(pattern)))
        if phrases:
            self.phrase_matcher.add(entry.key, phrases)
        return entry

    # ------------------------------------------------------------------ public API
    def detect(
        self,
        normalised: NormalisedMessage,
        body_sentences: Sequence[Sentence],
        history_sentences: Sequence[Sequence[Sentence]] = (),
    ) -> list[Signal]:
        """Signals of one message, ordered by start, with spans in the original text.

        ``body_sentences`` index ``normalised.body.text``; ``history_sentences[i]`` index
        ``normalised.history[i].text`` (ignored unless ``read_quoted_history``).
        """
        texts = [_Text(normalised.body, body_sentences, quoted=False)]
        if self.config.read_quoted_history:
            if len(history_sentences) != len(normalised.history):
                raise ValueError(
                    f"history_sentences has {len(history_sentences)} lists for {len(normalised.history)} "
                    "quoted messages; segment each item of normalised.history"
                )
            texts.extend(
                _Text(item, sents, quoted=True)
                for item, sents in zip(normalised.history, history_sentences, strict=True)
            )
        texts = [t for t in texts if t.sentences and t.mapped.text]
        found: list[Signal] = []
        for text, doc in zip(texts, self.nlp.tokenizer.pipe(t.mapped.text for t in texts), strict=True):
            found.extend(self._detect_doc(text, doc))
        return self._select(found)

    def detect_text(self, text: str) -> list[Signal]:
        """Normalise and segment ``text`` with the default stages, then detect (tests, debugging)."""
        if self._normaliser is None or self._segmenter is None:
            self._normaliser, self._segmenter = Normaliser(), Segmenter(english=self.nlp)
        normalised = self._normaliser.normalise(text)
        body = self._segmenter.segment(normalised.body.text)
        history = self._segmenter.segment_many([h.text for h in normalised.history])
        return self.detect(normalised, body, history)

    # ------------------------------------------------------------------ one text
    def _detect_doc(self, text: _Text, doc: Doc) -> list[Signal]:
        if not len(doc):
            return []
        sentences = text.sentences
        raw = text.mapped.text
        starts_lengths = doc.to_array([IDX, LENGTH]).astype(np.int64)
        token_starts = starts_lengths[:, 0]
        token_ends = token_starts + starts_lengths[:, 1]
        lowers = [raw[a:b].lower() for a, b in zip(token_starts.tolist(), token_ends.tolist(), strict=True)]
        sent_starts = [s.start for s in sentences]
        sent_first_token = np.searchsorted(token_starts, np.asarray(sent_starts, dtype=np.int64), side="left")
        index = _DocIndex(doc, lowers, [*sent_first_token.tolist(), len(doc)])

        phrase_matches: dict[str, list[tuple[int, int]]] = {}
        for match_id, start, end in self.phrase_matcher(doc):
            phrase_matches.setdefault(self._entries[match_id].key, []).append((start, end))

        def accept(entry: _Compiled, start: int, end: int) -> _Hit | None:
            char_start, char_end = int(token_starts[start]), int(token_ends[end - 1])
            s = bisect.bisect_right(sent_starts, char_start) - 1
            if s < 0 or char_end > sentences[s].end:
                return None  # a match across a sentence boundary joins two unrelated fragments
            first = int(sent_first_token[s])
            if self._excluded(entry.spec, lowers, start, end, first):
                return None
            if any(self._modifiers[m].applies(lowers, start, end, first) for m in entry.ignore_in):
                return None
            return _Hit(entry, start, end, s)

        def run(entry: _Compiled, allowed: set[int] | None) -> list[_Hit]:
            matches = list(phrase_matches.get(entry.key, ()))
            for pattern in self._patterns.get(entry.key, ()):
                candidates = index.sentences_with(pattern)
                if allowed is not None:
                    candidates = candidates & allowed
                for s in sorted(candidates):
                    offset = index.bounds[s]
                    matches.extend((a + offset, b + offset) for _, a, b in pattern.matcher(index.span(s)))
            hits: list[_Hit] = []
            for start, end in sorted(set(matches)):
                hit = accept(entry, start, end)
                if hit is not None and (allowed is None or hit.sentence in allowed):
                    hits.append(hit)
            return hits

        def near(sentence_set: Iterable[int], window: int) -> set[int]:
            return {s + d for s in sentence_set for d in range(-window, window + 1)}

        possible: dict[str, set[int]] = {}  # cue -> sentences where it could match (word gates only)

        def cue_possible(name: str) -> set[int]:
            if name not in possible:
                found = {
                    index.sentence_of(start) for start, _ in phrase_matches.get(self._cues[name].key, ())
                }
                for pattern in self._patterns.get(self._cues[name].key, ()):
                    found |= index.sentences_with(pattern)
                possible[name] = found
            return possible[name]

        rule_hits: list[_Hit] = []
        for entry in self._rules:
            rule = entry.spec
            assert isinstance(rule, Rule)
            allowed: set[int] | None = None
            for req in rule.requires:
                reachable = near(cue_possible(req.cue), req.window)
                allowed = reachable if allowed is None else allowed & reachable
            if allowed is not None and not allowed:
                continue
            rule_hits.extend(run(entry, allowed))

        needed: dict[str, set[int]] = {}
        for hit in rule_hits:
            rule = hit.entry.spec
            assert isinstance(rule, Rule)
            for req in rule.requires:
                needed.setdefault(req.cue, set()).update(near([hit.sentence], req.window))
        cue_hits = {name: run(self._cues[name], sentence_set) for name, sentence_set in needed.items()}

        best: dict[tuple[int, int], tuple[float, int, int]] = {}  # (signal, sentence) -> score, span
        for hit in rule_hits:
            entry = hit.entry
            rule = entry.spec
            assert isinstance(rule, Rule)
            support = [self._supporting(req, hit, cue_hits) for req in rule.requires]
            if any(s is None for s in support):
                continue
            parts = [hit, *(s for s in support if s is not None)]
            if self.config.evidence == "sentence":
                lo = min(sentences[p.sentence].start for p in parts)
                hi = max(sentences[p.sentence].end for p in parts)
            else:
                lo = min(int(token_starts[p.start]) for p in parts)
                hi = max(int(token_ends[p.end - 1]) for p in parts)
            key = (entry.signal, hit.sentence)
            current = best.get(key)
            if current is None or entry.score > current[0]:
                best[key] = (entry.score, lo, hi)

        signals: list[Signal] = []
        original = text.mapped.original
        for (signal_index, _), (score, lo, hi) in best.items():
            start, end = text.mapped.to_original(lo, hi)
            evidence = original[start:end]
            signals.append(
                Signal(
                    name=self.lexicon.signals[signal_index].name,
                    text=evidence,
                    evidence=evidence,
                    start=start,
                    end=end,
                    score=score,
                    in_quoted_history=text.quoted,
                )
            )
        return signals

    @staticmethod
    def _excluded(spec: MatchSpec, lowers: list[str], start: int, end: int, sentence_start: int) -> bool:
        w = spec.exclude_window
        if spec.exclude_before and any(
            x in spec.exclude_before for x in lowers[max(sentence_start, start - w) : start]
        ):
            return True
        return bool(spec.exclude_after) and any(x in spec.exclude_after for x in lowers[end : end + w])

    @staticmethod
    def _supporting(req: Requirement, hit: _Hit, cue_hits: dict[str, list[_Hit]]) -> _Hit | None:
        """The nearest cue hit that satisfies ``req`` for ``hit``, or None."""
        best: _Hit | None = None
        best_distance = 1 << 30
        for cue in cue_hits.get(req.cue, ()):
            if abs(cue.sentence - hit.sentence) > req.window:
                continue
            if req.position == "after" and (cue.sentence, cue.start) < (hit.sentence, hit.end):
                continue
            if req.position == "before" and (cue.sentence, cue.end) > (hit.sentence, hit.start):
                continue
            gap = max(cue.start - hit.end, hit.start - cue.end, 0)
            if req.window == 0 and req.max_tokens is not None and gap > req.max_tokens:
                continue
            distance = abs(cue.sentence - hit.sentence) * 10_000 + gap
            if distance < best_distance:
                best, best_distance = cue, distance
        return best

    def _select(self, found: list[Signal]) -> list[Signal]:
        """Merge overlapping evidence of one signal, keep the best few per signal, order by start."""
        by_name: dict[tuple[str, bool], list[Signal]] = {}
        for signal in sorted(found, key=lambda s: (s.start, s.end)):
            group = by_name.setdefault((signal.name, signal.in_quoted_history), [])
            if group and signal.start < group[-1].end:
                # Overlapping evidence (a two-sentence co-occurrence next to a one-sentence hit) is one
                # finding: keep the better scored span, the earlier one on a tie.
                previous = group[-1]
                if signal.score > previous.score:
                    group[-1] = signal
                continue
            group.append(signal)
        kept: list[Signal] = []
        by_signal: dict[str, list[Signal]] = {}
        for (name, _), group in by_name.items():
            by_signal.setdefault(name, []).extend(group)
        for group in by_signal.values():
            # Body evidence first (it is the customer's message now), then by score, then earliest.
            ranked = sorted(group, key=lambda s: (s.in_quoted_history, -s.score, s.start))
            kept.extend(ranked[: self.config.max_per_signal])
        return sorted(kept, key=lambda s: (s.start, s.end, s.name))


# =============================================================================== conveniences


@lru_cache(maxsize=4)
def default_detector() -> SignalDetector:
    """The default-lexicon detector, built once per process (tests, CLI debugging)."""
    return SignalDetector.from_path()


def detect_text(text: str, detector: SignalDetector | None = None) -> list[Signal]:
    """Signals of a raw message text, read with the default normaliser and segmenter."""
    return (detector or default_detector()).detect_text(text)
