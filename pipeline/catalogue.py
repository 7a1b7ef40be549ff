"""Product catalogue: the product names a policy knows, found in messages as evidence.

A customer who writes "I sent $400 by Zelle and it never arrived" has named the product. The
product classifier reads the whole message and usually gets there too, but when it is unsure a
named product is the strongest evidence a router has, and an agent wants to see *where* the
product was named. So a policy ships a catalogue (YAML): products with an id, one of the
policy's product labels, and the aliases customers write.

Matching is deliberately plain: spaCy's ``PhraseMatcher`` on lower-cased tokens over a blank
English tokenizer. Phrase patterns cost almost nothing per message (token patterns are ~15x
slower, see PERFORMANCE_NOTES), whole tokens never match inside longer words ("visa" does not
match "visas"), and there is no fuzzy matching: plural, hyphenated and misspelt variants are
listed as aliases, so what matches is exactly what a reviewer can read in the file. Where
aliases overlap ("visa" inside "visa debit card") the longest match wins, because the longer
name is the more specific product.

Every mention is reported with offsets into the message *as received*, through
:meth:`MappedText.to_original`, like every other span Hearken returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from pipeline.english import shared_english
from pipeline.errors import ConfigError
from pipeline.schema import Mention
from pipeline.textmap import MappedText
from pipeline.yamlfile import read_yaml_file

DEFAULT_CATALOGUE = Path(__file__).resolve().parent / "policies" / "consumer_finance" / "catalogue.yaml"

#: Validation context key under which the allowed product labels are passed to ``Catalogue``.
ALLOWED_LABELS_KEY = "allowed_labels"

_PRODUCT_ID = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def _alias_key(alias: str) -> str:
    """How two aliases are compared for duplicates: case and runs of whitespace do not count."""
    return " ".join(alias.lower().split())


class CatalogueEntry(BaseModel):
    """One product a customer can name, with the label it counts for."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable product id (lower-case letters, digits, underscores); in mentions.")
    label: str = Field(description="The policy's product label this product belongs to, e.g. credit_card.")
    aliases: list[str] = Field(
        min_length=1,
        description="What customers write, matched case-insensitively on whole tokens. List plural and "
        "hyphenated variants explicitly; single ambiguous words ('card', 'loan') do not belong here.",
    )
    description: str | None = Field(default=None, description="A note for the people who maintain it.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _PRODUCT_ID.match(value):
            raise ValueError(
                f"product id {value!r} must be lower-case letters, digits and underscores (e.g. debit_card)"
            )
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases_clean(cls, values: list[str]) -> list[str]:
        cleaned = [" ".join(v.split()) for v in values]
        if any(not v for v in cleaned):
            raise ValueError("an alias is empty; remove it or write the product name")
        seen: set[str] = set()
        for alias in cleaned:
            key = _alias_key(alias)
            if key in seen:
                raise ValueError(f"alias {alias!r} is listed twice")
            seen.add(key)
        return cleaned

    @field_validator("label")
    @classmethod
    def _label_allowed(cls, value: str, info: ValidationInfo) -> str:
        allowed = (info.context or {}).get(ALLOWED_LABELS_KEY)
        if allowed is not None and value not in allowed:
            raise ValueError(f"label {value!r} is not one of the policy's product labels {sorted(allowed)}")
        return value


class Catalogue(BaseModel):
    """A policy's product catalogue. Validate with ``context={"allowed_labels": [...]}`` to check labels."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, ge=1, description="Catalogue format version.")
    products: list[CatalogueEntry] = Field(min_length=1, description="The products, each with its aliases.")

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        ids: set[str] = set()
        owner: dict[str, str] = {}
        for entry in self.products:
            if entry.id in ids:
                raise ValueError(f"product id {entry.id!r} is used twice; ids must be unique")
            ids.add(entry.id)
            for alias in entry.aliases:
                key = _alias_key(alias)
                if key in owner:
                    raise ValueError(
                        f"alias {alias!r} belongs to both {owner[key]!r} and {entry.id!r}; "
                        "keep it under one product so a mention has one meaning"
                    )
                owner[key] = entry.id
        return self

    def entry(self, product_id: str) -> CatalogueEntry | None:
        """The entry with this id, or None."""
        for candidate in self.products:
            if candidate.id == product_id:
                return candidate
        return None

    @property
    def labels(self) -> set[str]:
        """The product labels the catalogue's products belong to."""
        return {entry.label for entry in self.products}

    @property
    def alias_count(self) -> int:
        return sum(len(entry.aliases) for entry in self.products)


def _location(loc: tuple[int | str, ...], raw: Any) -> str:
    """Turn a pydantic error location into a key a person can find in the YAML (with the product id)."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    label = f"[{item}] (id {node['id']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def parse_catalogue(raw: Any, source: str, allowed_labels: Iterable[str] | None = None) -> Catalogue:
    """Validate an already-parsed catalogue document; errors name ``source`` and the key."""
    context = {ALLOWED_LABELS_KEY: set(allowed_labels)} if allowed_labels is not None else None
    try:
        return Catalogue.model_validate(raw, context=context)
    except ValidationError as exc:
        problems = "; ".join(f"{_location(e['loc'], raw)}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"Catalogue {source} is invalid: {problems}.", fix="correct the named key in the catalogue file"
        ) from exc


def load_catalogue(
    path: Path | str | None = None, allowed_labels: Iterable[str] | None = None, text: str | None = None
) -> Catalogue:
    """Read and validate a catalogue YAML (the default consumer-finance one when ``path`` is None).

    ``allowed_labels`` is the policy's (or the model's) product label set; pass it so that a
    catalogue written for another policy fails here, at load time, rather than producing labels
    no queue knows. None skips that check. ``text``: the file's content, already read (a policy
    bundle's), so what is used is what was hashed.
    """
    path = Path(path) if path is not None else DEFAULT_CATALOGUE
    raw = read_yaml_file(
        path,
        "Catalogue file",
        text=text,
        missing_fix="point the policy at an existing catalogue YAML",
        syntax_fix="correct the YAML syntax",
    )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Catalogue file {path} must be a mapping with a 'products' list, not {type(raw).__name__}.",
            fix="start the file with 'products:' and list the products under it",
        )
    return parse_catalogue(raw, str(path), allowed_labels)


class MentionFinder:
    """Find catalogue products named in a message body; one instance serves every thread."""

    def __init__(self, catalogue: Catalogue, english: Language | None = None) -> None:
        """``english``: the tokenizer and vocabulary to match on (the process-wide one by default)."""
        self.catalogue = catalogue
        self.nlp = english or shared_english()  # tokenizer only: the same rules as the segmenter's
        self.matcher = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        for entry in catalogue.products:
            self.matcher.add(entry.id, list(self.nlp.tokenizer.pipe(entry.aliases)))

    def _doc(self, text: str) -> Doc:
        # A single line break is read as a space so a hard-wrapped "credit\ncard" still matches;
        # same length, so offsets are unchanged. A paragraph break ("\n\n") leaves a whitespace
        # token between the words, so names never match across paragraphs.
        return self.nlp.make_doc(text.replace("\n", " "))

    def _mentions(self, body: MappedText, doc: Doc) -> list[Mention]:
        spans: list[Span] = self.matcher(doc, as_spans=True)
        # filter_spans keeps the longest span of overlapping ones (earliest on ties).
        chosen = sorted(filter_spans(spans), key=lambda s: s.start_char)
        mentions = []
        for span in chosen:
            start, end = body.to_original(span.start_char, span.end_char)
            mentions.append(
                Mention(text=body.original[start:end], start=start, end=end, product_id=span.label_)
            )
        return mentions

    def find(self, body: MappedText) -> list[Mention]:
        """Mentions in ``body`` in text order, spans in the original message."""
        return self._mentions(body, self._doc(body.text))

    def find_many(self, bodies: Sequence[MappedText]) -> list[list[Mention]]:
        """``find`` for many bodies, tokenised in one ``pipe`` pass."""
        docs = self.nlp.tokenizer.pipe(body.text.replace("\n", " ") for body in bodies)
        return [self._mentions(body, doc) for body, doc in zip(bodies, docs, strict=True)]


def _quoted(texts: Sequence[str], limit: int = 3) -> str:
    distinct = list(dict.fromkeys(t for t in texts))
    shown = ", ".join(f"'{t}'" for t in distinct[:limit])
    return shown + (f" and {len(distinct) - limit} more" if len(distinct) > limit else "")


def mention_votes(mentions: Sequence[Mention], catalogue: Catalogue) -> list[tuple[str, list[Mention]]]:
    """Labels the mentions point to, best first: most mentions, then earliest first mention.

    Mentions whose product id the catalogue does not know are ignored (they came from another
    catalogue and carry no label here).
    """
    by_label: dict[str, list[Mention]] = {}
    for mention in mentions:
        entry = catalogue.entry(mention.product_id) if mention.product_id else None
        if entry is not None:
            by_label.setdefault(entry.label, []).append(mention)
    ranked = sorted(by_label.items(), key=lambda kv: (-len(kv[1]), min(m.start for m in kv[1])))
    return ranked


def settle_product(
    classifier_label: str | None,
    classifier_confidence: float | None,
    mentions: Sequence[Mention],
    catalogue: Catalogue,
    min_confidence: float,
) -> tuple[str | None, float | None, str | None]:
    """Decide the product label from the classifier and the catalogue mentions.

    Returns ``(label, confidence, reason)``. The classifier decides whenever it is confident
    (``classifier_confidence >= min_confidence``): it reads the whole message in context, and a
    message often names several products in passing ("I paid my credit card from my checking
    account") where a count of names would be wrong. Only when it is unsure (or has no label,
    e.g. a model without a product head) do the mentions decide: the label with the most
    mentions, ties going to the one named first, because an explicitly named product is the
    best remaining evidence and an agent can check it in the highlighted text.

    When the mentions overrule the classifier the confidence is None: a name match is evidence,
    not a calibrated probability, and inventing a number would mislead thresholds downstream.
    When they agree with an unsure classifier, its confidence is kept. ``reason`` is None when
    the classifier's label stands for the usual reasons (confident, or nothing was named);
    otherwise, and always when the label is None, it says in plain words what decided.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be within [0, 1], not {min_confidence}")
    confident = (
        classifier_label is not None
        and classifier_confidence is not None
        and classifier_confidence >= min_confidence
    )
    if confident:
        return classifier_label, classifier_confidence, None
    votes = mention_votes(mentions, catalogue)
    if not votes:
        if classifier_label is None:
            return None, None, "the model gave no product and the message names no catalogue product"
        return classifier_label, classifier_confidence, None
    label, supporting = votes[0]
    count = len(supporting)
    named = f"{_quoted([m.text for m in supporting])} ({count} mention{'s' if count != 1 else ''})"
    if classifier_label is None:
        unsure = "the model gave no product"
    else:
        unsure = (
            f"the product classifier was unsure ({classifier_label} at {classifier_confidence:.2f}, "
            f"below {min_confidence:.2f})"
            if classifier_confidence is not None
            else f"the product classifier gave {classifier_label} without a confidence"
        )
    if label == classifier_label:
        return (
            classifier_label,
            classifier_confidence,
            f"{unsure}; the message names {named}, a {label} product, which agrees",
        )
    return label, None, f"{unsure}, so the product named in the message decides: {named} is {label}"
