"""One blank spaCy English tokenizer and vocabulary for every stage of a process.

Why shared: each ``spacy.blank("en")`` builds its tokenizer's special-case table again (60–100 ms)
and keeps its own StringStore. Segmenting, signal matching and catalogue matching all tokenise
with the same English rules, so they use this one object; stages that add pipeline components
(the segmenter) build their own ``Language`` on this vocabulary instead.
"""

from __future__ import annotations

from functools import lru_cache

import spacy
from spacy.language import Language


@lru_cache(maxsize=1)
def shared_english() -> Language:
    """The process-wide blank English pipeline (tokenizer only: add no components to it)."""
    return spacy.blank("en")
