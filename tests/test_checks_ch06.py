"""Chapter 06 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import math

import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils import masks
from utils.checks import ch06 as check

# ---- exercise 1: the causal mask -------------------------------------------------------------


def causal(T):
    i = torch.arange(T)
    return i[None, :] <= i[:, None]


def test_causal_mask_accepts_solutions_and_library():
    assert_accepts(check.causal_mask, causal)
    assert_accepts(check.causal_mask, lambda T: torch.ones(T, T, dtype=torch.bool).tril())
    assert_accepts(check.causal_mask, masks.causal_mask)
    assert_not_attempted(check.causal_mask, stub)


def test_causal_mask_rejects_classic_mistakes():
    ones = lambda T: torch.ones(T, T, dtype=torch.bool)
    assert "diagonal is masked" in assert_rejects(check.causal_mask, lambda T: ones(T).tril(-1))
    assert "one future token" in assert_rejects(check.causal_mask, lambda T: ones(T).tril(1))
    assert "swapped" in assert_rejects(check.causal_mask, lambda T: ~ones(T).tril())
    assert "future" in assert_rejects(check.causal_mask, lambda T: ones(T).triu())
    assert "boolean" in assert_rejects(check.causal_mask, lambda T: torch.ones(T, T).tril())
    assert "additive" in assert_rejects(
        check.causal_mask, lambda T: torch.zeros(T, T).masked_fill(~ones(T).tril(), float("-inf")))
    assert "shape" in assert_rejects(check.causal_mask, lambda T: ones(T).tril()[None])
    assert "torch tensor" in assert_rejects(check.causal_mask, lambda T: causal(T).tolist())


def test_causal_mask_grader_does_not_stop_at_its_first_case():
    wrong = lambda T: torch.ones(T, T, dtype=torch.bool).tril(1)
    assert_rejects(check.causal_mask, right_on_first_call_only(causal, wrong))


# ---- exercise 2: the padding mask ------------------------------------------------------------


def padding(lengths, T):
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]      # [B, T]: real keys
    return real[:, None, :].expand(len(lengths), T, T)


def test_padding_mask_accepts_solution_and_broadcastable_library_shape():
    assert_accepts(check.padding_mask, padding)
    assert_accepts(check.padding_mask, lambda lengths, T: masks.padding_mask(lengths, T))
    assert_not_attempted(check.padding_mask, stub)


def test_padding_mask_rejects_classic_mistakes():
    def on_queries(lengths, T):
        real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
        return real[:, :, None].expand(len(lengths), T, T)
    assert "wrong axis" in assert_rejects(check.padding_mask, on_queries)

    assert "swapped" in assert_rejects(check.padding_mask, lambda lengths, T: ~padding(lengths, T))

    def off_by_one(lengths, T):
        real = torch.arange(T)[None, :] <= torch.tensor(lengths)[:, None]
        return real[:, None, :].expand(len(lengths), T, T)
    assert "off by one" in assert_rejects(check.padding_mask, off_by_one)

    def both_axes(lengths, T):
        real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
        return real[:, None, :] & real[:, :, None]
    assert "padded queries" in assert_rejects(check.padding_mask, both_axes)

    def left_padding(lengths, T):
        return masks.padding_mask(lengths, T, side="left").expand(len(lengths), T, T)
    assert_rejects(check.padding_mask, left_padding)

    def same_length_for_all(lengths, T):  # uses the first sequence's length for every row
        return padding([lengths[0]] * len(lengths), T)
    assert_rejects(check.padding_mask, same_length_for_all)

    assert "torch tensor" in assert_rejects(
        check.padding_mask, lambda lengths, T: padding(lengths, T).tolist())


def test_padding_mask_negative_slice_is_named_not_called_swapped():
    def slice_from_the_end(lengths, T):    # [-(T - n):] is [0:] when there is no padding
        mask = torch.ones(len(lengths), T, T, dtype=torch.bool)
        for b, n in enumerate(lengths):
            mask[b, :, -(T - n):] = False
        return mask
    hint = assert_rejects(check.padding_mask, slice_from_the_end)
    assert "[-0:]" in hint and "swapped" not in hint


def test_padding_mask_grader_does_not_stop_at_its_first_case():
    def off_by_one(lengths, T):
        real = torch.arange(T)[None, :] <= torch.tensor(lengths)[:, None]
        return real[:, None, :].expand(len(lengths), T, T)
    assert_rejects(check.padding_mask, right_on_first_call_only(padding, off_by_one))


# ---- exercise 3: masked softmax --------------------------------------------------------------


def softmax_solution(scores, mask):
    masked = scores.masked_fill(~mask, float("-inf"))
    has_key = mask.any(dim=-1, keepdim=True)
    return torch.softmax(masked.masked_fill(~has_key, 0.0), dim=-1) * has_key


def test_masked_softmax_accepts_solutions():
    assert_accepts(check.masked_softmax, softmax_solution)
    assert_accepts(check.masked_softmax, masks.masked_softmax)
    # another correct way: softmax, then turn the NaN of empty rows into zeros
    assert_accepts(check.masked_softmax, lambda s, m: torch.softmax(
        s.masked_fill(~m, float("-inf")), -1).nan_to_num(0.0))
    assert_not_attempted(check.masked_softmax, stub)


def test_masked_softmax_rejects_classic_mistakes():
    assert "after the softmax" in assert_rejects(
        check.masked_softmax, lambda s, m: torch.softmax(s, -1).masked_fill(~m, 0.0))
    assert "NaN" in assert_rejects(
        check.masked_softmax, lambda s, m: torch.softmax(s.masked_fill(~m, float("-inf")), -1))
    assert "inverted" in assert_rejects(check.masked_softmax,
                                        lambda s, m: softmax_solution(s, ~m))
    assert "all-zero" in assert_rejects(
        check.masked_softmax, lambda s, m: torch.softmax(s.masked_fill(~m, -1e9), -1))
    assert "-inf" in assert_rejects(check.masked_softmax, lambda s, m: torch.softmax(s * m, -1))
    assert "wrong axis" in assert_rejects(
        check.masked_softmax,
        lambda s, m: torch.softmax(s.masked_fill(~m, float("-inf")), -2).nan_to_num(0.0))
    assert "not applied" in assert_rejects(check.masked_softmax, lambda s, m: torch.softmax(s, -1))


def test_masked_softmax_rejects_a_mask_that_must_have_the_scores_shape():
    def boolean_indexing(scores, mask):    # scores[~mask] needs mask.shape == scores.shape
        scores = scores.clone()
        scores[~mask] = -math.inf
        return torch.softmax(scores, -1).nan_to_num(0.0)
    assert "broadcasts" in assert_rejects(check.masked_softmax, boolean_indexing)

    def zero_empty_rows_by_index(scores, mask):
        weights = torch.softmax(scores.masked_fill(~mask, -math.inf), -1)
        weights[~mask.any(-1)] = 0.0        # with a [B, 1, S] mask this indexes the wrong rows
        return weights
    assert "broadcasts" in assert_rejects(check.masked_softmax, zero_empty_rows_by_index)


def test_masked_softmax_rejects_exp_without_subtracting_the_max():
    def overflowing(scores, mask):
        e = scores.masked_fill(~mask, -math.inf).exp()
        return e / e.sum(-1, keepdim=True).clamp_min(1e-30)   # empty rows handled
    assert "overflows" in assert_rejects(check.masked_softmax, overflowing)

    def max_over_masked_keys_too(scores, mask):
        e = (scores - scores.amax(-1, keepdim=True)).exp() * mask
        return e / e.sum(-1, keepdim=True).clamp_min(1e-30)
    assert "allowed keys only" in assert_rejects(check.masked_softmax, max_over_masked_keys_too)


def test_masked_softmax_rejects_a_finite_penalty():
    def minus_ten_thousand(scores, mask):  # BERT's old convention, empty rows handled
        weights = torch.softmax(scores - 1e4 * (~mask), -1)
        return weights * mask.any(-1, keepdim=True)
    assert "finite penalty" in assert_rejects(check.masked_softmax, minus_ten_thousand)

    def times_minus_inf(scores, mask):     # 0 * -inf = NaN on every allowed key
        return torch.softmax(scores + (~mask) * -math.inf, -1).nan_to_num(0.0)
    assert "0 * -inf" in assert_rejects(check.masked_softmax, times_minus_inf)


def test_masked_softmax_accepts_a_huge_finite_fill_with_empty_rows_handled():
    # masked_fill sets the score itself (no masked score can outweigh it): correct
    assert_accepts(check.masked_softmax, lambda s, m: torch.softmax(
        s.masked_fill(~m, -1e30), -1) * m.any(-1, keepdim=True))


def test_masked_softmax_list_answer_and_first_case_only_rejected():
    assert "torch tensor" in assert_rejects(check.masked_softmax,
                                            lambda s, m: softmax_solution(s, m).tolist())
    after = lambda s, m: torch.softmax(s, -1).masked_fill(~m, 0.0)
    assert_rejects(check.masked_softmax, right_on_first_call_only(softmax_solution, after))


def test_masked_softmax_rejects_changing_the_input():
    def in_place(scores, mask):
        scores.masked_fill_(~mask, float("-inf"))
        return torch.softmax(scores, -1).nan_to_num(0.0)
    assert "changed its input" in assert_rejects(check.masked_softmax, in_place)


# ---- exercise 4: sliding window --------------------------------------------------------------


def window_solution(T, window):
    i = torch.arange(T)
    distance = i[:, None] - i[None, :]
    return (distance >= 0) & (distance < window)


def test_sliding_window_accepts_solutions():
    assert_accepts(check.sliding_window_mask, window_solution)
    assert_accepts(check.sliding_window_mask, masks.sliding_window_mask)
    assert_accepts(check.sliding_window_mask, lambda T, w: torch.ones(T, T, dtype=torch.bool)
                   .tril() & torch.ones(T, T, dtype=torch.bool).triu(-(w - 1)))
    assert_not_attempted(check.sliding_window_mask, stub)


def test_sliding_window_rejects_classic_mistakes():
    ones = lambda T: torch.ones(T, T, dtype=torch.bool)
    assert "window + 1" in assert_rejects(check.sliding_window_mask,
                                          lambda T, w: ones(T).tril() & ones(T).triu(-w))
    assert "window - 1 keys" in assert_rejects(check.sliding_window_mask,
                                               lambda T, w: window_solution(T, w - 1))
    assert "future" in assert_rejects(
        check.sliding_window_mask, lambda T, w: masks.sliding_window_mask(T, w, causal=False))
    assert "plain causal" in assert_rejects(check.sliding_window_mask,
                                            lambda T, w: ones(T).tril())
    assert "swapped" in assert_rejects(check.sliding_window_mask,
                                       lambda T, w: ~window_solution(T, w))
    assert "torch tensor" in assert_rejects(check.sliding_window_mask,
                                            lambda T, w: window_solution(T, w).tolist())


def test_sliding_window_grader_does_not_stop_at_its_first_case():
    ones = lambda T: torch.ones(T, T, dtype=torch.bool)
    wider = lambda T, w: ones(T).tril() & ones(T).triu(-w)
    assert_rejects(check.sliding_window_mask, right_on_first_call_only(window_solution, wider))
