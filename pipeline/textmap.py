"""Text that remembers where every character came from.

Every span Hearken reports (asks, mentions, signals, sections) must index the message *as
received*, yet the stages read a cleaned copy: HTML stripped, quotes straightened, quoted
history cut away, redaction tokens rewritten. ``MappedText`` is that cleaned copy plus, for
each of its characters, the slice of the original it stands for. Each edit composes the
map, so after any number of edits a span of the derived text still maps back exactly.

The map is two integer arrays: character ``i`` of ``text`` came from
``original[starts[i]:ends[i]]``. Characters copied unchanged map to a single original
character; all characters a replacement produced map to the whole region the replacement
consumed (an entity ``&amp;`` becomes ``&`` mapped to all five original characters). Both
arrays are non-decreasing, which is what makes ``to_original`` a pair of look-ups.

The arrays are NumPy and read-only; every operation builds its result in one vectorised
pass, so a 1 MB message with tens of thousands of edits costs milliseconds, not seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

#: One edit: replace ``text[start:end]`` of the derived text by ``replacement``.
Edit = tuple[int, int, str]


def _frozen(values: IntArray) -> IntArray:
    """Return ``values`` marked read-only, so a shared map cannot be changed behind a user's back."""
    values.flags.writeable = False
    return values


@dataclass(frozen=True, eq=False)
class MappedText:
    """A derived text with a per-character map back into ``original``.

    Build one with :meth:`identity`, then derive new ones with :meth:`sub`, :meth:`edit`,
    :meth:`slice`, :meth:`remove_ranges` or :meth:`concat`; instances are never mutated.
    ``anchor`` is the original offset an *empty* text stands at, so that even an empty
    result can say where it was.
    """

    text: str
    starts: IntArray
    ends: IntArray
    original: str
    anchor: int = 0

    def __post_init__(self) -> None:
        if len(self.starts) != len(self.text) or len(self.ends) != len(self.text):
            raise ValueError(
                f"map length ({len(self.starts)}, {len(self.ends)}) differs from text length "
                f"{len(self.text)}; "
                "build MappedText through identity() and its methods rather than directly"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, original: str) -> MappedText:
        """Wrap ``original`` unchanged: character ``i`` maps to ``original[i:i+1]``."""
        positions = np.arange(len(original), dtype=np.int64)
        return cls(original, _frozen(positions), _frozen(positions + 1), original, 0)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        preview = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"MappedText({preview!r}, {len(self.text)} chars of {len(self.original)})"

    def point(self, index: int) -> int:
        """Original offset of the gap *before* derived character ``index`` (``0 <= index <= len``)."""
        n = len(self.text)
        if not 0 <= index <= n:
            raise IndexError(f"position {index} is outside the text (length {n})")
        if n == 0:
            return self.anchor
        if index < n:
            return int(self.starts[index])
        return int(self.ends[n - 1])

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map the span ``text[start:end]`` to ``(original_start, original_end)``.

        An empty span maps to an empty span at the corresponding point of the original.
        """
        n = len(self.text)
        if not 0 <= start <= end <= n:
            raise IndexError(
                f"span ({start}, {end}) is not within the text (length {n}); pass 0 <= start <= end <= length"
            )
        if start == end:
            p = self.point(start)
            return p, p
        return int(self.starts[start]), int(self.ends[end - 1])

    def original_text(self, start: int, end: int) -> str:
        """The original characters behind ``text[start:end]`` (what a highlight would show)."""
        s, e = self.to_original(start, end)
        return self.original[s:e]

    def is_identity(self) -> bool:
        """True when every character was copied unchanged from the same original position."""
        return self.text == self.original and bool(np.array_equal(self.starts, np.arange(len(self.text))))

    # ------------------------------------------------------------------ derivation
    def edit(self, edits: Iterable[Edit]) -> MappedText:
        """Apply replacements ``(start, end, replacement)`` given in derived coordinates.

        Edits must be sorted and must not overlap (touching is fine). Copied characters keep
        their map; replacement characters map to the whole original region they replace; a
        pure insertion (``start == end``) maps to the gap at that point. Edits whose
        replacement equals the text they replace are dropped, keeping the finer map.
        """
        text = self.text
        n = len(text)
        kept: list[Edit] = []
        last_end = 0
        for start, end, repl in edits:
            if start < last_end or end < start or end > n:
                raise ValueError(
                    f"edit ({start}, {end}) overlaps the previous one, is reversed or leaves the text "
                    f"(length {n}); sort edits and merge overlapping ones first"
                )
            last_end = end
            if text[start:end] != repl:
                kept.append((start, end, repl))
        if not kept:
            return self
        return self._apply(kept)

    def _apply(self, edits: Sequence[Edit]) -> MappedText:
        """Build the edited text and map in one vectorised pass (edits already validated)."""
        text, n = self.text, len(self.text)
        starts, ends = self.starts, self.ends
        pieces: list[str] = []
        # Per output segment: length, copy flag, source offset (copy) or mapped (start, end) (replacement).
        seg_len: list[int] = []
        seg_copy: list[bool] = []
        seg_src: list[int] = []
        seg_s: list[int] = []
        seg_e: list[int] = []
        pos = 0
        for start, end, repl in edits:
            if start > pos:
                pieces.append(text[pos:start])
                seg_len.append(start - pos)
                seg_copy.append(True)
                seg_src.append(pos)
                seg_s.append(0)
                seg_e.append(0)
            if repl:
                if end > start:
                    s, e = int(starts[start]), int(ends[end - 1])
                else:  # insertion: the gap before `start`, widened so ends stay non-decreasing
                    s = self.point(start)
                    e = max(s, int(ends[start - 1])) if start > 0 else s
                pieces.append(repl)
                seg_len.append(len(repl))
                seg_copy.append(False)
                seg_src.append(0)
                seg_s.append(s)
                seg_e.append(e)
            pos = end
        if pos < n:
            pieces.append(text[pos:])
            seg_len.append(n - pos)
            seg_copy.append(True)
            seg_src.append(pos)
            seg_s.append(0)
            seg_e.append(0)
        new_text = "".join(pieces)
        anchor = self.point(edits[0][0]) if not new_text else self.anchor
        if not new_text:
            empty = np.zeros(0, dtype=np.int64)
            return MappedText("", _frozen(empty), _frozen(empty.copy()), self.original, anchor)
        lengths = np.asarray(seg_len, dtype=np.int64)
        seg_begin = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        seg_id = np.repeat(np.arange(len(lengths)), lengths)
        is_copy = np.asarray(seg_copy, dtype=bool)[seg_id]
        out_pos = np.arange(len(new_text), dtype=np.int64)
        # For copied characters: source index = src + (out_pos - seg_begin); others point at a pad slot.
        src = np.asarray(seg_src, dtype=np.int64)[seg_id] + out_pos - seg_begin[seg_id]
        src = np.where(is_copy, src, n)
        padded_starts = np.append(starts, 0)
        padded_ends = np.append(ends, 0)
        new_starts = np.where(is_copy, padded_starts[src], np.asarray(seg_s, dtype=np.int64)[seg_id])
        new_ends = np.where(is_copy, padded_ends[src], np.asarray(seg_e, dtype=np.int64)[seg_id])
        return MappedText(new_text, _frozen(new_starts), _frozen(new_ends), self.original, anchor)

    def translate(self, table: Mapping[int, str]) -> MappedText:
        """Replace characters one for one (``str.translate`` with single-character values).

        Each output character stands where its input character stood, so the map is shared
        unchanged: the cheap path for NFKC folding of full-width letters and the like.
        """
        if any(len(value) != 1 for value in table.values()):
            raise ValueError(
                "translate() needs single-character replacements; use sub() or edit() for the others"
            )
        new_text = self.text.translate(table)
        if new_text == self.text:
            return self
        return MappedText(new_text, self.starts, self.ends, self.original, self.anchor)

    def sub(
        self,
        pattern: re.Pattern[str],
        repl: str | Callable[[re.Match[str]], str],
        count: int = 0,
    ) -> MappedText:
        """Like ``pattern.sub(repl, text)``, keeping the map.

        A string ``repl`` may use group references (``\\1``, ``\\g<name>``) as in ``re.sub``.
        Matches whose replacement equals the matched text are left as copies.
        """
        if isinstance(repl, str):
            template = repl
            if "\\" in template:

                def expand(m: re.Match[str]) -> str:
                    return m.expand(template)

                func: Callable[[re.Match[str]], str] = expand
            else:

                def literal(m: re.Match[str]) -> str:
                    return template

                func = literal
        else:
            func = repl
        edits: list[Edit] = []
        text = self.text
        for m in pattern.finditer(text):
            new = func(m)
            a, b = m.span()
            if new != text[a:b]:
                edits.append((a, b, new))
            if count and len(edits) >= count:
                break
        if not edits:
            return self
        return self._apply(edits)

    def slice(self, start: int, end: int) -> MappedText:
        """The derived characters ``text[start:end]`` with their map."""
        n = len(self.text)
        if not 0 <= start <= end <= n:
            raise IndexError(f"slice ({start}, {end}) is not within the text (length {n})")
        if start == 0 and end == n:
            return self
        anchor = self.point(start) if start == end else self.anchor
        return MappedText(
            self.text[start:end], self.starts[start:end], self.ends[start:end], self.original, anchor
        )

    def strip(self) -> MappedText:
        """Drop leading and trailing whitespace (the map of the rest is unchanged)."""
        text = self.text
        stripped_left = len(text) - len(text.lstrip())
        end = len(text.rstrip())
        if end <= stripped_left:
            return self.slice(0, 0) if not text else self.slice(stripped_left, stripped_left)
        return self.slice(stripped_left, end)

    def remove_ranges(self, ranges: Iterable[tuple[int, int]]) -> MappedText:
        """Delete the given derived ranges (any order; overlapping ranges are merged)."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted(ranges):
            if end <= start:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return self.edit((s, e, "") for s, e in merged)

    @staticmethod
    def concat(parts: Sequence[MappedText], sep: str = "") -> MappedText:
        """Join texts derived from the same original; ``sep`` maps to the gap after the previous part.

        The map stays non-decreasing only if the parts come in original order without overlap,
        which is how the normaliser uses it (pieces of one message, in order).
        """
        if not parts:
            raise ValueError("concat needs at least one part; pass MappedText.identity('') for nothing")
        original = parts[0].original
        if any(p.original is not original and p.original != original for p in parts):
            raise ValueError("concat parts come from different originals; map each message separately")
        texts: list[str] = []
        starts: list[IntArray] = []
        ends: list[IntArray] = []
        for i, part in enumerate(parts):
            if i and sep:
                gap = parts[i - 1].point(len(parts[i - 1]))
                texts.append(sep)
                starts.append(np.full(len(sep), gap, dtype=np.int64))
                ends.append(np.full(len(sep), gap, dtype=np.int64))
            texts.append(part.text)
            starts.append(np.asarray(part.starts))
            ends.append(np.asarray(part.ends))
        return MappedText(
            "".join(texts),
            _frozen(np.concatenate(starts)),
            _frozen(np.concatenate(ends)),
            original,
            parts[0].anchor,
        )
