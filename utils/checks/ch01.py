"""Graders for chapter 01 (tokenization): `from utils.checks import ch01 as check`."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from utils.checks.grading import Hint, attempt, expect_close, expect_equal, grader, require_value
from utils.tokenizers import get_pair_counts as _pair_counts
from utils.tokenizers import merge as _merge
from utils.tokenizers import split_chunks

# Exercise 4 encodes HAND_TEXT by hand with these merges (id: the pair it replaces).
HAND_TEXT = "the tree"
HAND_MERGES: dict[tuple[int, int], int] = {
    (116, 104): 256,  # 't' 'h'  -> 'th'
    (32, 116): 257,   # ' ' 't'  -> ' t'
    (114, 101): 258,  # 'r' 'e'  -> 're'
    (257, 114): 259,  # ' t' 'r' -> ' tr'
    (101, 101): 260,  # 'e' 'e'  -> 'ee'
}


@grader
def get_pair_counts(fn):
    """Exercise 1: count every pair of neighbouring ids."""
    for ids in ([1, 2, 3, 1, 2], [5, 6], [7], [], [1, 1, 1], [4, 2, 4, 2, 4]):
        before = list(ids)
        got = attempt(fn, ids)
        if ids != before:
            raise Hint(f"get_pair_counts({before}) changed its input list; only read it")
        expected = _pair_counts(ids)
        if not isinstance(got, dict):
            raise Hint(f"get_pair_counts({ids}) should return a dict {{pair: count}}, "
                       f"got {type(got).__name__}")
        got = {k: v for k, v in got.items() if v}  # a Counter/defaultdict with zeros is fine
        if ids == [1, 1, 1] and got == {(1, 1): 1}:
            raise Hint("get_pair_counts([1, 1, 1]): pairs overlap — positions 0-1 and 1-2 "
                       "are both (1, 1), so the count is 2")
        if len(ids) >= 2 and got == _pair_counts(ids[:-1]):
            raise Hint(f"get_pair_counts({ids}) misses the last pair: an off-by-one in the "
                       "loop range (a list of n ids has n - 1 pairs)")
        expect_equal(got, expected, f"get_pair_counts({ids})")


@grader
def merge(fn):
    """Exercise 2: replace every occurrence of `pair` in `ids` by `new_id`, left to right."""
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([3, 1, 2], (1, 2), 9), ([2, 1, 2, 1], (2, 1), 7),
             ([1, 1, 1], (1, 1), 9), ([1, 1, 1, 1], (1, 1), 9), ([4, 5, 6], (6, 4), 9),
             ([1], (1, 2), 9), ([], (1, 2), 9)]
    for ids, pair, new_id in cases:
        before = list(ids)
        got = attempt(fn, ids, pair, new_id)
        if ids != before:
            raise Hint(f"merge({before}, {pair}, {new_id}) changed its input list; build and "
                       "return a new list instead")
        got = list(got) if isinstance(got, tuple) else got
        what = f"merge({ids}, {pair}, {new_id})"
        if ids == [1, 1, 1] and got == [9, 9]:
            raise Hint(f"{what}: expected [9, 1] — once ids 0 and 1 are merged, id 1 is used "
                       "up; skip past both ids of a merged pair")
        expected = _merge(ids, pair, new_id)
        if got != expected and got == _merge(ids[:-1], pair, new_id) + ids[-1:]:
            raise Hint(f"{what}: the pair at the very end was not merged (off-by-one in the "
                       "loop that looks at ids[i] and ids[i + 1])")
        expect_equal(got, expected, what)


def _bytes_per_token(text: str, ids: list[int]) -> float:
    return len(text.encode("utf-8")) / len(ids) if ids else 0.0


@grader
def bytes_per_token(fn):
    """Exercise 3: UTF-8 bytes per token (higher = better compression); 0.0 for no tokens."""
    cases = [("hello", [1, 2]), ("to be or not", [5, 6, 7, 8]), ("héllo", [1, 2, 3]),
             ("🙂 ok", [1, 2]), ("", [])]
    for text, ids in cases:
        got = attempt(fn, text, ids)
        expected = _bytes_per_token(text, ids)
        what = f"bytes_per_token({text!r}, {ids})"
        if ids and isinstance(got, int | float) and abs(got - len(ids) / max(
                len(text.encode()), 1)) < 1e-9 and abs(expected - 1) > 1e-9:
            raise Hint(f"{what}: that is tokens per byte — divide the other way round")
        if ids and isinstance(got, int | float) and abs(got - len(text) / len(ids)) < 1e-9 \
                and len(text) != len(text.encode()):
            raise Hint(f"{what}: you counted characters; count UTF-8 bytes "
                       "(len(text.encode('utf-8'))) — 'é' is 2 bytes, '🙂' is 4")
        expect_close(got, expected, what)


def _encode_by_rank(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    out: list[int] = []
    for chunk in split_chunks(text):
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = _merge(ids, pair, merges[pair])
        out.extend(ids)
    return out


def _encode_leftmost_first(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """The classic mistake: merge the leftmost mergeable pair instead of the earliest-learned."""
    out: list[int] = []
    for chunk in split_chunks(text):
        ids = list(chunk.encode("utf-8"))
        while True:
            pairs = [p for p in pairwise(ids) if p in merges]
            if not pairs:
                break
            ids = _merge(ids, pairs[0], merges[pairs[0]])
        out.extend(ids)
    return out


def _decode_hand(ids: list[Any]) -> str | None:
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new in HAND_MERGES.items():
        vocab[new] = vocab[a] + vocab[b]
    try:
        return b"".join(vocab[int(i)] for i in ids).decode("utf-8", errors="replace")
    except (KeyError, TypeError, ValueError):
        return None


@grader
def hand_encoding(answer):
    """Exercise 4: the ids BPE gives HAND_TEXT with HAND_MERGES."""
    answer = require_value(answer, "hand_ids")
    if not isinstance(answer, list | tuple):
        raise Hint(f"give a list of ids, got {type(answer).__name__}")
    answer = list(answer)
    if answer == list(HAND_TEXT.encode()):
        raise Hint("those are the raw bytes of the text: now apply the merges")
    if answer == _encode_leftmost_first(HAND_TEXT, HAND_MERGES):
        raise Hint("you merged the leftmost pair first; BPE applies the merge learned "
                   "earliest (lowest new id) first, wherever it is in the chunk")
    decoded = _decode_hand(answer)
    if decoded != HAND_TEXT:
        raise Hint(f"your ids spell {decoded!r}, not {HAND_TEXT!r}: every id must stand for "
                   "a byte (0-255) or one of the merges' new ids, and together they must "
                   "spell the text")
    expected = _encode_by_rank(HAND_TEXT, HAND_MERGES)
    if len(answer) > len(expected):
        raise Hint(f"your {len(answer)} ids spell the text, but some merge that applies "
                   "was not made: keep merging until no pair of a chunk has a merge")
    expect_equal(answer, expected, f"the ids of {HAND_TEXT!r}")
