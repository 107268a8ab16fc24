"""Byte-pair encoding: count neighbouring pairs, merge the most frequent, repeat (chapter 01).

The algorithm, on lists of ids (bytes 0..255 and the merged tokens after them), in the steps
the chapter writes one by one:

    get_pair_counts   how often each pair of neighbouring ids occurs
    merge             replace every occurrence of a pair by a new id, left to right
    train_bpe_naive   the textbook loop: after each merge, re-count every pair of the text
    train_bpe_fast    the same merges, re-counting only the chunks a merge touched

`BPETokenizer` (utils.bpe_tokenizer) learns its merges with `train_bpe_fast` and applies them
with `merge`; `utils.pretokenize` cuts the text into the chunks that merges stay inside.

**Ties.** When several pairs are equally frequent, the merge goes to the smallest pair of ids,
comparing the first ids, then the second, which is also the rule of Hugging Face's BpeTrainer.
Any fixed rule would do: a fixed one makes training independent of dict order, so both
trainers here learn the same merges in the same order. (Hugging Face numbers the 256 bytes by
their printable stand-ins, see `bytes_to_unicode`, so the space byte comes after the letters
there and first here; where a tie involves such a byte, the two libraries merge in a
different order: on the text below, Hugging Face merges 'ab' and then 'cd'.)

>>> train_bpe_naive("ab ab cd cd", 2)  # 'ab', ' c' and 'cd' tie; ' c' has the smallest ids
{(32, 99): 256, (97, 98): 257}
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from itertools import pairwise

from utils.pretokenize import split_chunks, utf8

Pair = tuple[int, int]


def get_pair_counts(ids: Sequence[int], counts: dict[Pair, int] | None = None,
                    weight: int = 1) -> dict[Pair, int]:
    """Count each pair of neighbouring ids (overlapping pairs count: [1, 1, 1] has two (1, 1)).

    Pass `counts` to add into an existing dict, `weight` to count a chunk that occurs many times.

    >>> get_pair_counts([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, scanning left to right, by `new_id`.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 9)
    [9, 3, 9]
    >>> merge([1, 1, 1], (1, 1), 9)  # left to right: the first two merge, the third is left
    [9, 1]
    """
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _best_pair(counts: dict[Pair, int]) -> Pair:
    """The most frequent pair; ties go to the smallest pair, comparing the first ids, then the
    second: (32, 116) before (104, 101) before (104, 105) (see the module's docstring)."""
    return max(counts, key=lambda p: (counts[p], -p[0], -p[1]))


def train_bpe_naive(text: str, n_merges: int) -> dict[Pair, int]:
    """The textbook algorithm: after every merge, re-count every pair in the whole text.

    Correct and short, but each merge costs a full pass over the text. It is kept as the
    reference that `train_bpe_fast` must agree with, and as the benchmark's baseline.

    >>> train_bpe_naive("aaab aab", 2)  # 'aa' first; then four pairs tie, the smallest wins
    {(97, 97): 256, (32, 256): 257}
    """
    chunks = [list(utf8(c)) for c in split_chunks(text)]
    merges: dict[Pair, int] = {}
    for i in range(n_merges):
        counts: dict[Pair, int] = {}
        for chunk in chunks:
            get_pair_counts(chunk, counts)
        if not counts:  # every chunk is a single token: nothing left to merge
            break
        pair = _best_pair(counts)
        merges[pair] = 256 + i
        chunks = [merge(chunk, pair, 256 + i) for chunk in chunks]
    return merges


def train_bpe_fast(chunk_counts: Mapping[str, int], n_merges: int,
                   verbose: bool = False) -> dict[Pair, int]:
    """Learn `n_merges` merges from chunks and how often each occurs: the merges of
    `train_bpe_naive`, in the same order, but much faster.

    Three ideas make it fast. Each distinct chunk is counted once, with its number of
    occurrences as a weight (the course's training text has 284,439 chunks, only 15,644 of
    them distinct). The pair counts are kept between merges, with an index from each pair to
    the chunks that contain it, so a merge re-counts only the chunks it touched. And a heap
    hands out the most frequent pair without scanning all of them; ties go to the smallest
    pair of ids, as in `train_bpe_naive`.

    >>> from collections import Counter
    >>> train_bpe_fast(Counter(split_chunks("aaab aab")), 2) == train_bpe_naive("aaab aab", 2)
    True
    """
    start = time.perf_counter()
    chunks = [list(utf8(c)) for c in chunk_counts]
    weights = list(chunk_counts.values())
    counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}  # pair -> indices of the chunks that contain it
    for i, (chunk, w) in enumerate(zip(chunks, weights, strict=True)):
        get_pair_counts(chunk, counts, w)
        for pair in pairwise(chunk):
            where.setdefault(pair, set()).add(i)
    # Smallest (-count, pair) first: the most frequent pair, ties to the smallest pair.
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: dict[Pair, int] = {}
    vocab = {i: bytes([i]) for i in range(256)}  # only for the verbose printout
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair) != -neg:  # stale entry: the count changed since it was pushed
            continue
        new_id = 256 + len(merges)
        merges[pair] = new_id
        changed: set[Pair] = set()
        for i in where.pop(pair, ()):
            old, w = chunks[i], weights[i]
            new = merge(old, pair, new_id)
            for p in pairwise(old):  # take the chunk's old pairs out ...
                counts[p] -= w
                changed.add(p)
            for p in pairwise(new):  # ... and put its new pairs in
                counts[p] = counts.get(p, 0) + w
                changed.add(p)
            old_pairs, new_pairs = set(pairwise(old)), set(pairwise(new))
            for p in old_pairs - new_pairs:
                if p != pair:
                    where[p].discard(i)
            for p in new_pairs - old_pairs:
                where.setdefault(p, set()).add(i)
            chunks[i] = new
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
        if verbose:
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            print(f"merge {len(merges):4d}/{n_merges}: {pair} -> {new_id} "
                  f"{vocab[new_id]!r} ({-neg} occurrences)")
    if verbose:
        print(f"trained {len(merges)} merges in {time.perf_counter() - start:.2f} s")
    return merges
