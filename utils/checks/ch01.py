"""Graders for chapter 01 (tokenization): `from utils.checks import ch01 as check`."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np

from utils.bpe import get_pair_counts as _pair_counts
from utils.bpe import merge as _merge
from utils.checks.grading import (
    Hint,
    compare_with_reference,
    expect_equal,
    expect_number,
    grader,
    require_value,
    seeded_cases,
)
from utils.pretokenize import split_chunks

# Exercise 4 encodes HAND_TEXT by hand with these merges (id: the pair it replaces).
HAND_TEXT = "the tree"
HAND_MERGES: dict[tuple[int, int], int] = {
    (116, 104): 256,  # 't' 'h'  -> 'th'
    (32, 116): 257,   # ' ' 't'  -> ' t'
    (114, 101): 258,  # 'r' 'e'  -> 're'
    (257, 114): 259,  # ' t' 'r' -> ' tr'
    (101, 101): 260,  # 'e' 'e'  -> 'ee'
}


def _is_id(i: Any) -> bool:
    """A token id: an int (NumPy ints too), not a float, a bool or a string."""
    return isinstance(i, int | np.integer) and not isinstance(i, bool)


def _ids_case(rng: np.random.Generator) -> list[int]:
    """A realistic id list: ids from a small pool (so pairs repeat and runs like a a a occur),
    mixing bytes and merged ids (>= 256, as every id is after the first merges)."""
    pool = rng.choice(1000, size=int(rng.integers(1, 6)), replace=False)
    return [int(i) for i in rng.choice(pool, size=int(rng.integers(0, 30)))]


# Hand-picked id lists: overlapping runs, (a, b) next to (b, a), multi-digit ids that share
# digits ('21 2' contains '1 2'), ids beyond a byte, empty and one-element lists.
_EDGE_IDS = [[1, 2, 3, 1, 2], [5, 6], [7], [], [1, 1, 1], [1, 1, 1, 1], [4, 2, 4, 2, 4],
             [1, 2, 1], [21, 2, 1, 2], [300, 301, 300, 301], [256, 256, 256], [97, 1000, 97]]


def _compare_counts(got, expected, what: str) -> None:
    if not isinstance(got, dict):
        raise Hint(f"{what}: return a dict {{pair: count}}, got {type(got).__name__}")
    got = {k: v for k, v in got.items() if v}  # a Counter/defaultdict with zeros is fine
    if got == expected:
        return
    for pair in sorted(set(expected) | set(got), key=str):
        if got.get(pair, 0) != expected.get(pair, 0):
            raise Hint(f"{what}: pair {pair!r} should be counted {expected.get(pair, 0)} "
                       f"time(s), got {got.get(pair, 0)}")


def _pair_counts_mistake(got, expected, ids) -> str | None:
    if not isinstance(got, dict):
        return None
    got = {k: v for k, v in got.items() if v}
    wrong = {p for p in set(got) | set(expected) if got.get(p, 0) != expected.get(p, 0)}
    if all(a == b and got.get((a, b), 0) < expected[(a, b)] for a, b in wrong):
        return ("pairs overlap — in [a, a, a] positions 0-1 and 1-2 are both (a, a), so the "
                "count is 2; move one id at a time")
    if len(ids) >= 2 and got == _pair_counts(ids[:-1]):
        return ("the last pair is missing: an off-by-one in the loop range (a list of n ids "
                "has n - 1 pairs)")
    if got == _pair_counts(ids + ids[:1]) and len(ids) >= 2:
        return ("there is an extra pair (last id, first id): the list does not wrap around, "
                "so don't pair the end with the start (np.roll does)")
    if any((b, a) in expected and (a, b) in got and (a, b) not in expected for a, b in got):
        return "pairs are ordered: (a, b) and (b, a) are different pairs, count them apart"
    return None


@grader
def get_pair_counts(fn):
    """Exercise 1: count every pair of neighbouring ids."""
    # fresh copies: a learner's function that edits its input must not spoil the next run
    cases = [(list(ids),) for ids in _EDGE_IDS]
    cases += seeded_cases(lambda rng: (_ids_case(rng),), 30, seed=1)
    try:
        compare_with_reference(fn, _pair_counts, cases, _compare_counts, name="get_pair_counts",
                               diagnose=_pair_counts_mistake)
    except Hint as hint:
        raise _explain_bytes(hint) from None
    return "Counting pairs is the inner loop of BPE training."


def _explain_bytes(hint: Hint) -> Hint:
    """bytes(ids) works for ids < 256 only; merged ids are 256 and up."""
    if "bytes must be in range" in str(hint):
        return Hint(f"{hint} — ids of merged tokens are 256 and up, so they do not fit in "
                    "bytes(...); work on the list of ints directly")
    return hint


def _merge_case(rng: np.random.Generator) -> tuple[list[int], tuple[int, int], int]:
    ids = _ids_case(rng)
    if len(ids) >= 2 and rng.random() < 0.8:   # usually a pair that occurs
        i = int(rng.integers(0, len(ids) - 1))
        pair = (ids[i], ids[i + 1])
    else:
        pair = (int(rng.integers(0, 1000)), int(rng.integers(0, 1000)))
    return ids, pair, 1000 + int(rng.integers(0, 500))   # a new id above every id in use


_EDGE_MERGES = [([1, 2, 1, 2, 3], (1, 2), 9), ([1, 2, 3, 1, 2], (1, 2), 9), ([3, 1, 2], (1, 2), 9),
                ([2, 1, 2, 1], (2, 1), 7),
                ([1, 1, 1], (1, 1), 9), ([1, 1, 1, 1], (1, 1), 9), ([4, 5, 6], (6, 4), 9),
                ([1], (1, 2), 9), ([], (1, 2), 9), ([2, 1], (1, 2), 9), ([1, 2, 1, 2], (1, 2), 9),
                ([1, 1, 2], (1, 2), 9), ([21, 2, 1, 2], (1, 2), 300),
                ([300, 301, 300, 301, 7], (300, 301), 512), ([5, 5, 5, 5, 5], (5, 5), 300),
                ([257, 258, 259], (258, 259), 400)]


def _compare_merge(got, expected, what: str) -> None:
    got = list(got) if isinstance(got, tuple) else got
    if not isinstance(got, list):
        raise Hint(f"{what}: return a list of ids, got {type(got).__name__}")
    odd = next((i for i in got if not _is_id(i)), None)
    if odd is not None:   # 9.0 == 9 in Python, but a float id cannot index an embedding
        raise Hint(f"{what}: ids are whole numbers (int), got a {type(odd).__name__} {odd!r}")
    expect_equal(got, expected, what)


def _merge_reusing_ids(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """The classic mistake: merge wherever the pair starts, without skipping the used-up id."""
    out = []
    for i, x in enumerate(ids):
        if i + 1 < len(ids) and (x, ids[i + 1]) == pair:
            out.append(new_id)
        elif not (i > 0 and (ids[i - 1], x) == pair):
            out.append(x)
    return out


def _merge_mistake(got, expected, ids, pair, new_id) -> str | None:
    got = list(got) if isinstance(got, tuple) else got
    if not isinstance(got, list) or not all(_is_id(i) for i in got):
        return None  # the comparison's own hint (a list of int ids) says it best

    def made(wrong: list[int]) -> bool:   # this mistake, where it changes the answer
        return wrong != expected and got == wrong

    if made(_merge_reusing_ids(ids, pair, new_id)):
        return ("an id was used twice: once two ids are merged they are used up, so "
                "merge([a, a, a], (a, a), new) is [new, a]; skip past both ids of a merged pair")
    if made(_merge(ids[:-1], pair, new_id) + ids[-1:]):
        return ("the pair at the very end was not merged (off-by-one in the loop that looks "
                "at ids[i] and ids[i + 1])")
    if made(_merge(ids[::-1], pair[::-1], new_id)[::-1]):
        return "you scanned right to left; BPE merges left to right, so [a, a, a] gives [new, a]"
    if got.count(new_id) == 1 and expected.count(new_id) > 1:
        return "only the first occurrence was replaced; replace every occurrence"
    return None


@grader
def merge(fn):
    """Exercise 2: replace every occurrence of `pair` in `ids` by `new_id`, left to right."""
    cases = [(list(ids), pair, new_id) for ids, pair, new_id in _EDGE_MERGES]  # fresh copies
    cases += seeded_cases(_merge_case, 30, seed=2)
    try:
        compare_with_reference(fn, _merge, cases, _compare_merge, name="merge",
                               diagnose=_merge_mistake)
    except Hint as hint:
        raise _explain_bytes(hint) from None
    return "Merging is how every BPE token is born."


def _bytes_per_token(text: str, ids: list[int]) -> float:
    return len(text.encode("utf-8")) / len(ids) if ids else 0.0


_PIECES = ["the", " king", "é", "ß", "🙂", "水", " ", "\n", "ok", "!", "naïve", "😀👍🏽"]


def _text_case(rng: np.random.Generator) -> tuple[str, list[int]]:
    text = "".join(rng.choice(_PIECES, size=int(rng.integers(1, 12))))
    n_bytes = len(text.encode("utf-8"))
    n_ids = int(rng.integers(1, n_bytes + 1))
    pool = rng.choice(1000, size=int(rng.integers(1, 4)), replace=False)  # ids repeat
    return text, [int(i) for i in rng.choice(pool, size=n_ids)]


def _compare_ratio(got, expected, what: str) -> None:
    value = expect_number(got, what)
    if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
        raise Hint(f"{what}: expected {expected:.6g}, got {value:.6g}")


def _ratio_mistake(got, expected, text, ids) -> str | None:
    if not isinstance(got, int | float | np.number) or isinstance(got, bool):
        return None  # the comparison's own hint (a number is needed) says it best
    value = float(got)
    n_bytes = len(text.encode("utf-8"))
    if not ids:
        return "with no tokens, return 0.0"
    named = [
        (len(ids) / max(n_bytes, 1), "that is tokens per byte — divide the other way round"),
        (len(text) / len(ids), "you counted characters; count UTF-8 bytes "
                               "(len(text.encode('utf-8'))) — 'é' is 2 bytes, '🙂' is 4"),
        (n_bytes / len(set(ids)), "you divided by the number of distinct ids; divide by the "
                                  "number of tokens, len(ids), repeats included"),
        (n_bytes // len(ids), "integer division (//) drops the fraction; use /"),
    ]
    for wrong, mistake in named:
        if math.isclose(value, wrong, rel_tol=1e-9) and not math.isclose(value, expected,
                                                                          rel_tol=1e-9):
            return mistake
    for decimals in range(0, 4):
        if value == round(expected, decimals):
            return (f"the value is rounded to {decimals} decimals; return the exact ratio "
                    "(round only when you print it)")
    return None


@grader
def bytes_per_token(fn):
    """Exercise 3: UTF-8 bytes per token (higher = better compression); 0.0 for no tokens."""
    cases = [("hello", [1, 2]), ("to be or not", [5, 6, 7, 8]), ("héllo", [1, 2, 3]),
             ("🙂 ok", [1, 2]), ("", []), ("abc", []), ("aaaa", [300, 300, 300]),
             ("naïve café", [256, 257, 256, 258, 259, 260, 261])]
    cases += seeded_cases(_text_case, 25, seed=3)
    compare_with_reference(fn, _bytes_per_token, cases, _compare_ratio, name="bytes_per_token",
                           diagnose=_ratio_mistake)
    return "Bytes per token: the compression a tokenizer buys."


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
    if any(isinstance(i, list | tuple) for i in answer):
        raise Hint("give one flat list of ids for the whole text, the chunks' ids one after "
                   "the other, not a list per chunk")
    if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in answer):
        odd = next(i for i in answer if not isinstance(i, int | np.integer) or isinstance(i, bool))
        raise Hint(f"give the ids (whole numbers), not {type(odd).__name__} values such as "
                   f"{odd!r}")
    answer = [int(i) for i in answer]
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
    if answer != expected:  # name the first wrong position, not the answer
        first = next(i for i, (a, b) in enumerate(zip(answer, expected, strict=True)) if a != b)
        raise Hint(f"your ids spell the text, but from position {first} (id {answer[first]}) "
                   "they are not what BPE gives: in each chunk, apply the merge learned "
                   "earliest (lowest new id) among those that apply, then look again")
    return "That is exactly what BPETokenizer.encode does, merge by merge."


# ---- exercise 5: encode a chunk; exercise 6: the training loop ----------------------------

def _corpus_merges(n_merges: int) -> dict[tuple[int, int], int]:
    """Merges learned by the library on the start of the corpus: real pairs, ids >= 256,
    later merges built from earlier ones."""
    from utils.bpe import train_bpe_naive
    from utils.data import load_corpus

    return train_bpe_naive(load_corpus()[:20_000], n_merges)


def _encode_chunk_reference(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    ids = list(ids)
    while len(ids) >= 2:
        pair = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = _merge(ids, pair, merges[pair])
    return ids


def _encode_variants(ids, merges) -> dict[str, list[int]]:
    """What classic mistakes produce, so a hint can name the one made."""
    leftmost = list(ids)
    while True:
        pairs = [p for p in pairwise(leftmost) if p in merges]
        if not pairs:
            break
        leftmost = _merge(leftmost, pairs[0], merges[pairs[0]])
    one_pass = list(ids)
    for pair in merges:                            # each merge once, but only on the bytes
        if all(i < 256 for i in pair):
            one_pass = _merge(one_pass, pair, merges[pair])
    newest_first = list(ids)
    for pair in reversed(list(merges)):
        newest_first = _merge(newest_first, pair, merges[pair])
    counts_first = list(ids)
    while True:
        counts = _pair_counts(counts_first)
        known = {p: c for p, c in counts.items() if p in merges}
        if not known:
            break
        pair = max(known, key=known.get)
        counts_first = _merge(counts_first, pair, merges[pair])
    return {
        "you merged the leftmost pair first; apply the merge learned earliest (the lowest new "
        "id) among the pairs present, wherever it is": leftmost,
        "the merges were applied newest first; the earliest-learned merge (lowest new id) "
        "must come first": newest_first,
        "you picked the most frequent pair of the chunk; encoding follows the order in which "
        "merges were learned, not counts in the text being encoded": counts_first,
        "merged pairs can be merged again: a later merge may combine ids >= 256 made by earlier "
        "ones, so keep going until no pair of the list has a merge": one_pass,
    }


def _encode_mistake(got, expected, ids, merges) -> str | None:
    if not isinstance(got, list | tuple):
        return None
    got = list(got)
    # On a given chunk two mistakes can give the same ids: name every one that fits.
    fits = [mistake for mistake, wrong in _encode_variants(ids, merges).items()
            if wrong != expected and got == wrong]
    if fits:
        return "; or ".join(fits)
    if got == list(ids) and expected != list(ids):
        return "no merge was applied: the ids came back unchanged"
    return None


def _compare_ids(got, expected, what: str) -> None:
    if not isinstance(got, list | tuple):
        raise Hint(f"{what}: return a list of ids, got {type(got).__name__}")
    odd = next((i for i in got if not _is_id(i)), None)
    if odd is not None:
        raise Hint(f"{what}: ids are whole numbers (int), got a {type(odd).__name__} {odd!r}")
    expect_equal([int(i) for i in got], expected, what)


@grader
def encode_chunk(fn):
    """Exercise 5: apply learned merges to one chunk, earliest-learned first."""
    merges = _corpus_merges(60)
    from utils.data import load_corpus

    text = load_corpus()
    chunks = split_chunks(text[500_000:503_000]) + split_chunks("Café, naïve 🙂 thee!")
    candidates = [list(c.encode("utf-8")) for c in chunks]
    long_chunks = sorted(candidates, key=len, reverse=True)[:8]
    # The longest real chunks come first: there the classic mistakes give different answers,
    # so the hint can name the one made; short and empty chunks follow.
    cases = [(ids, merges) for ids in long_chunks]
    cases += [([], merges), ([116], merges), (list(b" the"), merges), (list(b"theethee"), merges)]
    cases += [(ids, merges) for ids in candidates[::37][:25]]

    def random_chunk(rng):          # a seeded random window of the corpus, as one chunk's bytes
        start = int(rng.integers(0, len(text) - 40))
        return (list(text[start:start + int(rng.integers(2, 40))].encode("utf-8")), merges)
    cases += seeded_cases(random_chunk, n=15, seed=15)
    compare_with_reference(fn, _encode_chunk_reference, cases, _compare_ids,
                           name="encode_chunk", diagnose=_encode_mistake)
    return "Earliest-learned merge first, until none applies: BPETokenizer's encoding."


def _train_reference(text: str, n_merges: int) -> dict[tuple[int, int], int]:
    from utils.bpe import train_bpe_naive

    return train_bpe_naive(text, n_merges)


def _compare_merges(got, expected, what: str) -> None:
    if not isinstance(got, dict):
        raise Hint(f"{what}: return a dict {{pair: new_id}} in the order learned, got "
                   f"{type(got).__name__}")
    odd = next((x for pair, i in got.items() for x in (*pair, i) if not _is_id(x)), None)
    if odd is not None:
        raise Hint(f"{what}: pairs and new ids are whole numbers (int), got a "
                   f"{type(odd).__name__} {odd!r}")
    got_items = [(tuple(int(x) for x in pair), int(i)) for pair, i in got.items()]
    expected_items = list(expected.items())
    if len(got_items) != len(expected_items):
        raise Hint(f"{what}: expected {len(expected_items)} merges, got {len(got_items)} (stop "
                   "early only when no chunk has a pair left)")
    for n, (g, e) in enumerate(zip(got_items, expected_items, strict=True)):
        if g != e:
            raise Hint(f"{what}: merge number {n} should be {e[0]} -> {e[1]}, got "
                       f"{g[0]} -> {g[1]}")


def _train_mistake(got, expected, text, n_merges) -> str | None:
    if not isinstance(got, dict) or not got or not expected:
        return None
    ids = list(got.values())
    if ids[0] != 256:
        return f"new ids start at 256 (the first id after the 256 bytes), yours start at {ids[0]}"
    whole = [list(text.encode("utf-8"))]
    merges_whole: dict = {}
    for i in range(n_merges):
        counts: dict = {}
        for chunk in whole:
            _pair_counts(chunk, counts)
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges_whole[pair] = 256 + i
        whole = [_merge(c, pair, 256 + i) for c in whole]
    if merges_whole != expected and list(got.items()) == list(merges_whole.items()):
        return ("pairs were counted across chunk boundaries: pre-split the text with "
                "split_chunks and count pairs inside each chunk only")
    # Replay the right training up to the first merge that differs: was it a tie?
    got_items, expected_items = list(got.items()), list(expected.items())
    n = next((i for i, (g, e) in enumerate(zip(got_items, expected_items, strict=False))
              if g[0] != e[0]), None)
    if n is None:
        return None
    chunks = [list(c.encode("utf-8")) for c in split_chunks(text)]
    for pair, new_id in expected_items[:n]:
        chunks = [_merge(c, pair, new_id) for c in chunks]
    counts: dict = {}
    for chunk in chunks:
        _pair_counts(chunk, counts)
    top = max(counts.values())
    tied = sorted(p for p, c in counts.items() if c == top)
    if len(tied) > 1 and got_items[n][0] in tied:
        return (f"at merge number {n}, {len(tied)} pairs tie for most frequent; the rule is "
                f"that the smallest pair wins (here {tied[0]}): use max with the key "
                "(count, -first, -second)")
    return None


@grader
def train_bpe(fn):
    """Exercise 6: the naive training loop, merge by merge."""
    from utils.data import load_corpus

    text = load_corpus()
    cases = [
        ("aaab aab", 2),                         # a run, then a tie
        ("abab cdcd", 3),                        # ties everywhere: the smallest pair wins
        ("to be or not to be", 40),              # asks for more merges than there are pairs
        ("", 3),
        ("Café, naïve thee", 6),                 # multi-byte characters
        (text[:3_000], 30),                      # real text: ids >= 256 merged again
        (text[700_000:702_000], 25),
    ]

    def random_slice(rng):          # seeded random stretches of the corpus and merge counts
        start = int(rng.integers(0, len(text) - 1500))
        return (text[start:start + int(rng.integers(50, 1500))], int(rng.integers(1, 30)))
    cases += seeded_cases(random_slice, n=8, seed=16)
    compare_with_reference(fn, _train_reference, cases, _compare_merges, name="train_bpe",
                           diagnose=_train_mistake)
    return "The same merges, in the same order, as utils.bpe.train_bpe_naive."
