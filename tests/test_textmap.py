"""MappedText keeps every derived character tied to the original characters it came from."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.textmap import MappedText

# Originals are drawn from one alphabet and replacements from a disjoint one, so any result
# character outside the replacement alphabet must be a copied original character.
ORIGINAL_ALPHABET = "ab c\n.&"
REPLACEMENT_ALPHABET = "XYZ"
PATTERNS = [r"a", r"b+", r" +", r"\n", r"c?", r"&", r"a b", r"\.+", r"(?=c)", r"^", r"$"]


def assert_map_consistent(mapped: MappedText, replacement_chars: str = REPLACEMENT_ALPHABET) -> None:
    """The invariants every MappedText must keep, whatever edits produced it."""
    n = len(mapped.text)
    assert len(mapped.starts) == len(mapped.ends) == n
    starts, ends = np.asarray(mapped.starts), np.asarray(mapped.ends)
    if n:
        assert starts.min() >= 0 and ends.max() <= len(mapped.original)
        assert np.all(starts <= ends)
        assert np.all(np.diff(starts) >= 0), "starts must be non-decreasing"
        assert np.all(np.diff(ends) >= 0), "ends must be non-decreasing"
    for i, ch in enumerate(mapped.text):
        if ch not in replacement_chars:
            assert ends[i] - starts[i] == 1
            assert mapped.original[starts[i]] == ch


@st.composite
def substitution_chains(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    original = draw(st.text(alphabet=ORIGINAL_ALPHABET, max_size=60))
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(PATTERNS), st.text(alphabet=REPLACEMENT_ALPHABET, max_size=3)),
            max_size=6,
        )
    )
    return original, steps


@settings(max_examples=300, deadline=None)
@given(substitution_chains())
def test_any_chain_of_substitutions_keeps_copied_chars_and_monotonic_map(
    chain: tuple[str, list[tuple[str, str]]],
) -> None:
    original, steps = chain
    mapped = MappedText.identity(original)
    expected = original
    for pattern, repl in steps:
        compiled = re.compile(pattern)
        mapped = mapped.sub(compiled, repl)
        expected = compiled.sub(repl, expected)
        assert mapped.text == expected
        assert_map_consistent(mapped)


@settings(max_examples=200, deadline=None)
@given(substitution_chains(), st.data())
def test_spans_map_within_bounds_and_in_order(
    chain: tuple[str, list[tuple[str, str]]], data: st.DataObject
) -> None:
    original, steps = chain
    mapped = MappedText.identity(original)
    for pattern, repl in steps:
        mapped = mapped.sub(re.compile(pattern), repl)
    n = len(mapped)
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    c = data.draw(st.integers(b, n))
    s1, e1 = mapped.to_original(a, b)
    s2, e2 = mapped.to_original(b, c)
    assert 0 <= s1 <= e1 <= len(original)
    assert 0 <= s2 <= e2 <= len(original)
    if a < b and b < c:  # an empty span inside a replacement region has no better place than its start
        assert s1 <= s2 and e1 <= e2
    if a < c:  # a span split in two maps to the outer ends of its halves
        assert mapped.to_original(a, c) == (s1 if a < b else s2, e2 if b < c else e1)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=ORIGINAL_ALPHABET, max_size=60),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 10)), max_size=5),
)
def test_remove_ranges_and_slices_keep_the_map(original: str, ranges: list[tuple[int, int]]) -> None:
    mapped = MappedText.identity(original)
    n = len(original)
    spans = [(min(s, n), min(s + w, n)) for s, w in ranges]
    removed = mapped.remove_ranges(spans)
    keep = [i for i in range(n) if not any(s <= i < e for s, e in spans)]
    assert removed.text == "".join(original[i] for i in keep)
    assert list(removed.starts) == keep
    assert_map_consistent(removed)
    half = len(removed) // 2
    piece = removed.slice(half, len(removed))
    assert piece.text == removed.text[half:]
    assert_map_consistent(piece)


def test_replacement_maps_to_the_whole_matched_region() -> None:
    original = "Fish &amp; chips&nbsp;now"
    mapped = MappedText.identity(original).sub(
        re.compile(r"&amp;|&nbsp;"), lambda m: "&" if m[0] == "&amp;" else " "
    )
    assert mapped.text == "Fish & chips now"
    amp = mapped.text.index("&")
    assert mapped.original_text(amp, amp + 1) == "&amp;"
    chips = mapped.text.index("chips")
    assert mapped.original_text(chips, chips + len("chips")) == "chips"
    assert mapped.original_text(0, len(mapped)) == original


def test_backreferences_in_string_replacement() -> None:
    mapped = MappedText.identity("{$12.50} and {$3.00}").sub(re.compile(r"\{(\$[\d.]+)\}"), r"\1")
    assert mapped.text == "$12.50 and $3.00"
    assert mapped.original_text(0, 6) == "{$12.50}"


def test_empty_spans_and_empty_results_keep_a_position() -> None:
    mapped = MappedText.identity("abc def")
    assert mapped.to_original(3, 3) == (3, 3)
    assert mapped.to_original(7, 7) == (7, 7)
    emptied = mapped.slice(4, 7).remove_ranges([(0, 3)])
    assert emptied.text == ""
    assert emptied.to_original(0, 0) == (4, 4)
    with pytest.raises(IndexError):
        mapped.to_original(3, 9)


def test_edit_rejects_overlapping_edits_with_a_fix() -> None:
    mapped = MappedText.identity("abcdef")
    with pytest.raises(ValueError, match="sort edits"):
        mapped.edit([(2, 4, "x"), (3, 5, "y")])


def test_concat_joins_pieces_in_order() -> None:
    original = "one two three"
    mapped = MappedText.identity(original)
    joined = MappedText.concat([mapped.slice(0, 3), mapped.slice(8, 13)], sep="\n")
    assert joined.text == "one\nthree"
    assert joined.original_text(4, 9) == "three"
    assert_map_consistent(joined, replacement_chars="\n")


def test_strip_keeps_offsets() -> None:
    mapped = MappedText.identity("  hello world \n").strip()
    assert mapped.text == "hello world"
    assert mapped.to_original(0, len(mapped)) == (2, 13)


def test_map_is_read_only() -> None:
    mapped = MappedText.identity("abc")
    with pytest.raises(ValueError):
        mapped.starts[0] = 5


def test_one_megabyte_with_many_edits_is_fast() -> None:
    original = ("Dear team,  please\t\tcheck &amp; fix   the bill.\r\n" * 21000)[:1_000_000]
    start = time.perf_counter()
    mapped = MappedText.identity(original)
    mapped = mapped.sub(re.compile(r"\r\n"), "\n")
    mapped = mapped.sub(re.compile(r"[ \t]{2,}"), " ")
    mapped = mapped.sub(re.compile(r"&amp;"), "&")
    mapped = mapped.remove_ranges([(i, i + 5) for i in range(0, len(mapped) - 5, 1000)])
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"1 MB with ~80k edits took {elapsed:.2f}s"
    i = mapped.text.index("please")
    assert mapped.original_text(i, i + 6) == "please"
