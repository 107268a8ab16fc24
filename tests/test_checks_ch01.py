"""Chapter 01 graders: the solutions pass, plausible wrong answers get a hint, stubs are
reported as not attempted.

Every wrong answer below is one a learner could really write; several are right on small ids
(< 10, < 256) and only fail on the ids real merges produce.
"""

from collections import Counter
from itertools import pairwise

import numpy as np

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils import bpe
from utils.bpe_tokenizer import BPETokenizer
from utils.checks import ch01 as check


# -- exercise 1: get_pair_counts -----------------------------------------------------------
def test_pair_counts_accepts_library_counter_and_stub_not_attempted():
    assert_accepts(check.get_pair_counts, bpe.get_pair_counts)
    assert_accepts(check.get_pair_counts, lambda ids: Counter(pairwise(ids)))
    assert_not_attempted(check.get_pair_counts, stub)


def test_pair_counts_rejects_non_overlapping_counting():
    def non_overlapping(ids):
        counts, i = {}, 0
        while i + 1 < len(ids):
            pair = (ids[i], ids[i + 1])
            counts[pair] = counts.get(pair, 0) + 1
            i += 2 if pair[0] == pair[1] else 1
        return counts

    assert "overlap" in assert_rejects(check.get_pair_counts, non_overlapping)


def test_pair_counts_rejects_off_by_one():
    def off_by_one(ids):
        return dict(Counter((ids[i], ids[i + 1]) for i in range(len(ids) - 2)))

    assert "off-by-one" in assert_rejects(check.get_pair_counts, off_by_one)


def test_pair_counts_rejects_set_and_list_returns():
    assert "dict" in assert_rejects(check.get_pair_counts, lambda ids: set(pairwise(ids)))
    assert "dict" in assert_rejects(check.get_pair_counts, lambda ids: list(pairwise(ids)))


def test_pair_counts_rejects_bytes_route():
    def via_bytes(ids):  # right while every id is a byte; merged ids are >= 256
        data = bytes(ids)
        return Counter(zip(data, data[1:], strict=False))

    assert "256" in assert_rejects(check.get_pair_counts, via_bytes)


def test_pair_counts_rejects_order_blind_pairs():
    def unordered(ids):  # (a, b) and (b, a) are different pairs
        return Counter(tuple(sorted(p)) for p in pairwise(ids))

    assert "order" in assert_rejects(check.get_pair_counts, unordered)


def test_pair_counts_rejects_wrap_around():
    assert "wrap" in assert_rejects(check.get_pair_counts,
                                    lambda ids: Counter(zip(ids, np.roll(ids, -1).tolist(), strict=True)))


def test_pair_counts_rejects_emptying_the_input():
    def destructive(ids):
        counts = Counter()
        while len(ids) > 1:
            counts[(ids[0], ids[1])] += 1
            ids.pop(0)
        return counts

    assert "changed its input" in assert_rejects(check.get_pair_counts, destructive)


# -- exercise 2: merge ---------------------------------------------------------------------
def test_merge_accepts_library_and_stub_not_attempted():
    assert_accepts(check.merge, bpe.merge)
    assert_not_attempted(check.merge, stub)


def test_merge_rejects_double_use_of_an_id():
    def overlapping(ids, pair, new_id):
        out = []
        for i, x in enumerate(ids):
            if i + 1 < len(ids) and (x, ids[i + 1]) == pair:
                out.append(new_id)
            elif not (i > 0 and (ids[i - 1], x) == pair):
                out.append(x)
        return out

    assert "skip past both" in assert_rejects(check.merge, overlapping)


def test_merge_rejects_missing_last_pair():
    def off_by_one(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids):
            if i + 2 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    assert "off-by-one" in assert_rejects(check.merge, off_by_one)


def test_merge_rejects_in_place_edit_and_crash():
    def in_place(ids, pair, new_id):
        result = bpe.merge(ids, pair, new_id)
        ids[:] = result
        return result

    assert "changed its input" in assert_rejects(check.merge, in_place)
    assert_rejects(check.merge, lambda ids, pair, new_id: ids[0])


def test_merge_rejects_bytes_replace():
    def via_bytes(ids, pair, new_id):  # right for ids < 256, i.e. never after the first merge
        return list(bytes(ids).replace(bytes(pair), bytes([new_id])))

    assert "bytes" in assert_rejects(check.merge, via_bytes)


def test_merge_rejects_string_replace():
    def via_text(ids, pair, new_id):  # '21 2' contains '1 2'
        text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
        return [int(t) for t in text.split()]

    assert_rejects(check.merge, via_text)

    def via_padded_text(ids, pair, new_id):  # separators fixed, but ' 1 2 1 2 ' loses a pair
        text = f" {' '.join(map(str, ids))} ".replace(f" {pair[0]} {pair[1]} ", f" {new_id} ")
        return [int(t) for t in text.split()]

    assert_rejects(check.merge, via_padded_text)


def test_merge_rejects_membership_test():
    def membership(ids, pair, new_id):  # (b, a) and (a, a) are not the pair (a, b)
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and ids[i] in pair and ids[i + 1] in pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    assert_rejects(check.merge, membership)


def test_merge_rejects_identity_comparison():
    def by_identity(ids, pair, new_id):  # `is` works for small ints only (CPython caches them)
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and ids[i] is pair[0] and ids[i + 1] is pair[1]:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    assert_rejects(check.merge, by_identity)


def test_merge_rejects_right_to_left_and_first_only():
    def right_to_left(ids, pair, new_id):
        return bpe.merge(ids[::-1], pair[::-1], new_id)[::-1]

    assert "left to right" in assert_rejects(check.merge, right_to_left)

    def first_only(ids, pair, new_id):
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == pair:
                return ids[:i] + [new_id] + ids[i + 2:]
        return list(ids)

    assert "every occurrence" in assert_rejects(check.merge, first_only)


# -- exercise 3: bytes_per_token -----------------------------------------------------------
def solution_bytes_per_token(text, ids):
    return len(text.encode("utf-8")) / len(ids) if ids else 0.0


def test_bytes_per_token_accepts_solution_and_stub_not_attempted():
    assert_accepts(check.bytes_per_token, solution_bytes_per_token)
    assert_not_attempted(check.bytes_per_token, stub)


def test_bytes_per_token_rejects_characters_and_inverted_ratio():
    chars = lambda text, ids: len(text) / len(ids) if ids else 0.0
    assert "UTF-8" in assert_rejects(check.bytes_per_token, chars)
    inverted = lambda text, ids: len(ids) / len(text.encode()) if ids else 0.0
    assert "other way" in assert_rejects(check.bytes_per_token, inverted)


def test_bytes_per_token_rejects_division_by_zero():
    assert "ZeroDivisionError" in assert_rejects(
        check.bytes_per_token, lambda text, ids: len(text.encode()) / len(ids))


def test_bytes_per_token_rejects_distinct_ids():
    wrong = lambda text, ids: len(text.encode()) / len(set(ids)) if ids else 0.0
    assert "distinct" in assert_rejects(check.bytes_per_token, wrong)


def test_bytes_per_token_rejects_rounding_and_integer_division():
    rounded = lambda text, ids: round(solution_bytes_per_token(text, ids), 2)
    assert "round" in assert_rejects(check.bytes_per_token, rounded)
    floor = lambda text, ids: len(text.encode()) // len(ids) if ids else 0.0
    assert "//" in assert_rejects(check.bytes_per_token, floor)


def test_bytes_per_token_rejects_a_string():
    as_text = lambda text, ids: f"{solution_bytes_per_token(text, ids):.2f}"
    assert "number" in assert_rejects(check.bytes_per_token, as_text)


def test_bytes_per_token_rejects_empty_text_test_instead_of_empty_ids():
    wrong = lambda text, ids: len(text.encode()) / len(ids) if text else 0.0
    assert "ZeroDivisionError" in assert_rejects(check.bytes_per_token, wrong)


# -- exercise 4: encoding by hand ----------------------------------------------------------
def test_hand_encoding_accepts_the_answer_a_tokenizer_gives():
    tok = BPETokenizer.from_merges(check.HAND_MERGES)
    assert_accepts(check.hand_encoding, tok.encode(check.HAND_TEXT))
    assert_accepts(check.hand_encoding, tuple(tok.encode(check.HAND_TEXT)))
    assert_not_attempted(check.hand_encoding, None)


def test_hand_encoding_rejects_raw_bytes_leftmost_first_and_misspelled():
    assert "raw bytes" in assert_rejects(check.hand_encoding, list(b"the tree"))
    assert "leftmost" in assert_rejects(check.hand_encoding, [256, 101, 259, 260])
    assert "spell" in assert_rejects(check.hand_encoding, [256, 101, 257, 258])
    assert "not made" in assert_rejects(check.hand_encoding, [256, 101, 32, 116, 258, 101])


def test_hand_encoding_rejects_wrong_types():
    assert "list" in assert_rejects(check.hand_encoding, "256 101")
    assert "one flat list" in assert_rejects(check.hand_encoding, [[256, 101], [257, 258, 101]])
    assert "ids" in assert_rejects(check.hand_encoding, ["th", "e", " t", "re", "e"])


def test_hand_encoding_hint_does_not_give_the_answer_away():
    hint = assert_rejects(check.hand_encoding, [256, 101, 257, 114, 260])  # 'e e' before 'r e'
    assert "257, 258, 101" not in hint and "earliest" in hint


# ---- exercise 5: encode one chunk ---------------------------------------------------------

from itertools import pairwise as _pairwise  # noqa: E402

from utils.bpe import merge as _lib_merge  # noqa: E402


def encode_chunk(ids, merges):
    ids = list(ids)
    while len(ids) >= 2:
        pair = min(_pairwise(ids), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            return ids
        ids = _lib_merge(ids, pair, merges[pair])
    return ids


def encode_in_learned_order(ids, merges):
    for pair, new_id in merges.items():           # dicts keep insertion order: learned order
        ids = _lib_merge(ids, pair, new_id)
    return list(ids)


def test_encode_chunk_accepts_both_correct_methods_and_stub_not_attempted():
    assert_accepts(check.encode_chunk, encode_chunk)
    assert_accepts(check.encode_chunk, encode_in_learned_order)
    assert_not_attempted(check.encode_chunk, stub)


def test_encode_chunk_rejects_leftmost_first():
    def leftmost(ids, merges):
        ids = list(ids)
        while True:
            found = [p for p in _pairwise(ids) if p in merges]
            if not found:
                return ids
            ids = _lib_merge(ids, found[0], merges[found[0]])
    assert "leftmost" in assert_rejects(check.encode_chunk, leftmost)


def test_encode_chunk_rejects_one_pass_over_bytes_only():
    def bytes_only(ids, merges):
        for pair, new_id in merges.items():
            if pair[0] < 256 and pair[1] < 256:
                ids = _lib_merge(ids, pair, new_id)
        return list(ids)
    assert "merged again" in assert_rejects(check.encode_chunk, bytes_only)


def test_encode_chunk_rejects_newest_first_and_most_frequent_first():
    def newest_first(ids, merges):
        for pair in reversed(list(merges)):
            ids = _lib_merge(ids, pair, merges[pair])
        return list(ids)
    assert "newest first" in assert_rejects(check.encode_chunk, newest_first)

    def most_frequent(ids, merges):
        from utils.bpe import get_pair_counts
        ids = list(ids)
        while True:
            counts = {p: c for p, c in get_pair_counts(ids).items() if p in merges}
            if not counts:
                return ids
            pair = max(counts, key=counts.get)
            ids = _lib_merge(ids, pair, merges[pair])
    assert "most frequent" in assert_rejects(check.encode_chunk, most_frequent)


def test_encode_chunk_rejects_single_merge_and_unchanged_and_mutation():
    def one_merge(ids, merges):           # stops after the first merge it finds
        ids = list(ids)
        if len(ids) >= 2:
            pair = min(_pairwise(ids), key=lambda p: merges.get(p, float("inf")))
            if pair in merges:
                ids = _lib_merge(ids, pair, merges[pair])
        return ids
    assert_rejects(check.encode_chunk, one_merge)
    assert "unchanged" in assert_rejects(check.encode_chunk, lambda ids, merges: list(ids))

    def in_place(ids, merges):            # right answer, but empties the caller's list
        out = encode_chunk(ids, merges)
        ids.clear()
        return out
    assert_rejects(check.encode_chunk, in_place)


# ---- exercise 6: the training loop --------------------------------------------------------


def train_bpe(text, n_merges):
    from utils.bpe import get_pair_counts
    from utils.pretokenize import split_chunks
    chunks = [list(c.encode("utf-8")) for c in split_chunks(text)]
    merges = {}
    for i in range(n_merges):
        counts = {}
        for chunk in chunks:
            get_pair_counts(chunk, counts)
        if not counts:
            break
        pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges[pair] = 256 + i
        chunks = [_lib_merge(chunk, pair, 256 + i) for chunk in chunks]
    return merges


def _train_with(*, split=True, tie=True, first_id=256, recount=True, stop=True):
    from collections import Counter

    from utils.pretokenize import split_chunks

    def train(text, n_merges):
        pieces = split_chunks(text) if split else [text]
        chunks = [list(c.encode("utf-8")) for c in pieces]
        merges = {}
        fixed = Counter(p for c in chunks for p in zip(c, c[1:], strict=False))
        for i in range(n_merges):
            counts = Counter(p for c in chunks for p in zip(c, c[1:], strict=False)) if recount else fixed
            counts = +counts
            if not counts:
                if stop:
                    break
                continue
            pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1])) if tie else \
                max(counts, key=counts.get)
            if pair in merges:
                break
            merges[pair] = first_id + i
            chunks = [_lib_merge(c, pair, first_id + i) for c in chunks]
        return merges
    return train


def test_train_bpe_accepts_solution_library_and_stub_not_attempted():
    from utils.bpe import train_bpe_naive
    assert_accepts(check.train_bpe, train_bpe)
    assert_accepts(check.train_bpe, train_bpe_naive)
    assert_accepts(check.train_bpe, _train_with())
    assert_not_attempted(check.train_bpe, stub)


def test_train_bpe_rejects_counting_across_chunks():
    assert "split_chunks" in assert_rejects(check.train_bpe, _train_with(split=False))


def test_train_bpe_rejects_first_seen_tie_breaking():
    assert "smallest pair" in assert_rejects(check.train_bpe, _train_with(tie=False))


def test_train_bpe_rejects_ids_from_255_or_0():
    assert "256" in assert_rejects(check.train_bpe, _train_with(first_id=255))
    assert "256" in assert_rejects(check.train_bpe, _train_with(first_id=0))


def test_train_bpe_rejects_counting_only_once():
    assert_rejects(check.train_bpe, _train_with(recount=False))


def test_train_bpe_rejects_a_list_of_pairs():
    assert "dict" in assert_rejects(check.train_bpe, lambda text, n: list(train_bpe(text, n)))


# -- every grader: cases beyond the first hand-picked one are needed -------------------------
# Each wrong answer is right on the grader's first case, so a grader thinned to that case
# would accept it.

def test_pair_counts_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.get_pair_counts, right_on_first_call_only(
        bpe.get_pair_counts, lambda ids: {}))


def test_merge_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.merge, right_on_first_call_only(bpe.merge, lambda ids, pair, new: ids))


def test_bytes_per_token_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.bytes_per_token, right_on_first_call_only(
        solution_bytes_per_token, lambda text, ids: len(text) / len(ids) if ids else 0.0))


def test_encode_chunk_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.encode_chunk, right_on_first_call_only(
        encode_chunk, lambda ids, merges: list(ids)))


def test_train_bpe_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.train_bpe, right_on_first_call_only(train_bpe, _train_with(tie=False)))


def test_id_lists_of_floats_are_rejected():
    # 9.0 == 9 in Python, so a comparison of lists alone would accept float ids
    assert "int" in assert_rejects(
        check.merge, lambda ids, pair, new: [float(i) for i in bpe.merge(ids, pair, new)])
    assert "int" in assert_rejects(
        check.encode_chunk, lambda ids, merges: [float(i) for i in encode_chunk(ids, merges)])
    assert "int" in assert_rejects(
        check.train_bpe, lambda text, n: {p: float(i) for p, i in train_bpe(text, n).items()})
