"""One blank spaCy English tokenizer and vocabulary for every stage of a process.

Why shared: each ``spacy.blank("en")`` builds its tokenizer's special-case table again (60–100 ms)
and keeps its own StringStore. Segmenting, signal matching and catalogue matching all tokenise
with the same English rules, so they use this one object; stages that add pipeline components
(the segmenter) build their own ``Language`` on this vocabulary instead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import spacy
from spacy.language import Language
from spacy.tokenizer import Tokenizer

_PLACEHOLDER_TOKENIZER = "hearken.placeholder_tokenizer.v1"


@spacy.registry.tokenizers(_PLACEHOLDER_TOKENIZER)
def _placeholder_tokenizer() -> Callable[[Language], Tokenizer]:
    """A rule-less tokenizer, replaced at once by :func:`english_on`; building the English one is
    the expensive part of ``spacy.blank("en")`` and would be thrown away."""
    return lambda nlp: Tokenizer(nlp.vocab)


@lru_cache(maxsize=1)
def shared_english() -> Language:
    """The process-wide blank English pipeline (tokenizer only: add no components to it)."""
    return spacy.blank("en")


def english_on(english: Language) -> Language:
    """A new blank English pipeline that shares ``english``'s vocabulary and tokenizer.

    For stages that add components of their own: they get their own ``Language`` (so their
    components never run in another stage) without rebuilding the tokenizer's special-case table
    (about 50 ms at start-up, more on a cold process).
    """
    nlp = spacy.blank(
        "en", vocab=english.vocab, config={"nlp": {"tokenizer": {"@tokenizers": _PLACEHOLDER_TOKENIZER}}}
    )
    nlp.tokenizer = english.tokenizer
    return nlp
