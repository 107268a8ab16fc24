"""Chapter 01 graders: the solutions pass, plausible wrong answers get a hint, stubs are
reported as not attempted."""

from collections import Counter
from itertools import pairwise

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils import tokenizers
from utils.checks import ch01 as check


# -- exercise 1: get_pair_counts -----------------------------------------------------------
def test_pair_counts_accepts_library_and_counter():
    assert_accepts(check.get_pair_counts, tokenizers.get_pair_counts)
    assert_accepts(check.get_pair_counts, lambda ids: Counter(pairwise(ids)))


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
    assert_rejects(check.get_pair_counts, lambda ids: set(pairwise(ids)))
    assert_rejects(check.get_pair_counts, lambda ids: list(pairwise(ids)))


def test_pair_counts_stub_not_attempted():
    assert_not_attempted(check.get_pair_counts, stub)


# -- exercise 2: merge ---------------------------------------------------------------------
def test_merge_accepts_library():
    assert_accepts(check.merge, tokenizers.merge)


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


def test_merge_stub_not_attempted():
    assert_not_attempted(check.merge, stub)


# -- exercise 3: bytes_per_token -----------------------------------------------------------
def solution_bytes_per_token(text, ids):
    return len(text.encode("utf-8")) / len(ids) if ids else 0.0


def test_bytes_per_token_accepts_solution():
    assert_accepts(check.bytes_per_token, solution_bytes_per_token)


def test_bytes_per_token_rejects_characters_and_inverted_ratio():
    chars = lambda text, ids: len(text) / len(ids) if ids else 0.0
    assert "UTF-8" in assert_rejects(check.bytes_per_token, chars)
    inverted = lambda text, ids: len(ids) / len(text.encode()) if ids else 0.0
    assert "other way" in assert_rejects(check.bytes_per_token, inverted)


def test_bytes_per_token_rejects_division_by_zero():
    assert "ZeroDivisionError" in assert_rejects(
        check.bytes_per_token, lambda text, ids: len(text.encode()) / len(ids))


def test_bytes_per_token_stub_not_attempted():
    assert_not_attempted(check.bytes_per_token, stub)


# -- exercise 4: encoding by hand ----------------------------------------------------------
def test_hand_encoding_accepts_the_answer_a_tokenizer_gives():
    tok = tokenizers.BPETokenizer.from_merges(check.HAND_MERGES)
    assert_accepts(check.hand_encoding, tok.encode(check.HAND_TEXT))


def test_hand_encoding_rejects_raw_bytes_leftmost_first_and_misspelled():
    assert "raw bytes" in assert_rejects(check.hand_encoding, list(b"the tree"))
    assert "leftmost" in assert_rejects(check.hand_encoding, [256, 101, 259, 260])
    assert "spell" in assert_rejects(check.hand_encoding, [256, 101, 257, 258])
    assert "not made" in assert_rejects(check.hand_encoding, [256, 101, 32, 116, 258, 101])
    assert_rejects(check.hand_encoding, "256 101")


def test_hand_encoding_stub_not_attempted():
    assert_not_attempted(check.hand_encoding, None)
