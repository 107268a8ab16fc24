"""Chapter 01 graders: the solutions pass, plausible wrong answers get a hint, stubs are
reported as not attempted.

Every wrong answer below is one a learner could really write; several are right on small ids
(< 10, < 256) and only fail on the ids real merges produce.
"""

from collections import Counter
from itertools import pairwise

import numpy as np

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils import tokenizers
from utils.checks import ch01 as check


# -- exercise 1: get_pair_counts -----------------------------------------------------------
def test_pair_counts_accepts_library_counter_and_stub_not_attempted():
    assert_accepts(check.get_pair_counts, tokenizers.get_pair_counts)
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
    assert_accepts(check.merge, tokenizers.merge)
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
        result = tokenizers.merge(ids, pair, new_id)
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
        return tokenizers.merge(ids[::-1], pair[::-1], new_id)[::-1]

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
    tok = tokenizers.BPETokenizer.from_merges(check.HAND_MERGES)
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
