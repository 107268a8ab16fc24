"""Chapter 03 graders: solutions accepted, plausible mistakes rejected with a useful hint.

Every wrong answer below is one a learner could really write; each must be rejected.
"""

import math

import numpy as np
import pytest
import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.attention import scaled_dot_product_attention
from utils.checks import ch03 as check

# ---- exercise 1: stable softmax ----------------------------------------------------------


def stable_softmax(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def test_softmax_accepts_solution_library_and_stub_not_attempted():
    assert_accepts(check.softmax, stable_softmax)
    assert_accepts(check.softmax, lambda x: torch.softmax(x, dim=-1))
    assert_not_attempted(check.softmax, stub)


def test_softmax_rejects_naive_overflow():
    naive = lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    assert "maximum" in assert_rejects(check.softmax, naive)


def test_softmax_rejects_wrong_axis():
    assert "wrong axis" in assert_rejects(check.softmax, lambda x: torch.softmax(x, dim=0))
    # dim=1 is the last axis of a matrix, but not of a batch of score matrices
    assert "dim=-1" in assert_rejects(check.softmax, lambda x: torch.softmax(x, dim=min(1, x.dim() - 1)))


def test_softmax_rejects_missing_normalisation_and_none():
    assert "sum" in assert_rejects(check.softmax, lambda x: torch.exp(x - x.max(-1, True).values))
    assert "return" in assert_rejects(check.softmax, lambda x: None)


def test_softmax_rejects_global_maximum():
    def global_max(x):  # one maximum for the whole tensor: a row far below it underflows
        e = torch.exp(x - x.max())
        return e / e.sum(dim=-1, keepdim=True)
    assert "each row" in assert_rejects(check.softmax, global_max)


def test_softmax_rejects_missing_keepdim():
    def no_keepdim(x):  # [T, S] - [T] broadcasts along the wrong axis (silently if T == S)
        e = torch.exp(x - x.max(dim=-1).values)
        return e / e.sum(dim=-1, keepdim=True)
    assert "keepdim" in assert_rejects(check.softmax, no_keepdim)


def test_softmax_rejects_changing_the_input():
    def in_place(x):
        x -= x.max(dim=-1, keepdim=True).values
        e = x.exp()
        return e / e.sum(dim=-1, keepdim=True)
    assert "changed its input" in assert_rejects(check.softmax, in_place)


def test_softmax_rejects_clamping_instead_of_shifting():
    def clamped(x):
        e = torch.exp(x.clamp(-80, 80))
        return e / e.sum(dim=-1, keepdim=True)
    assert_rejects(check.softmax, clamped)


# ---- exercise 2: scaled dot-product attention --------------------------------------------


def attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def test_attention_accepts_solution_library_and_stub_not_attempted():
    assert_accepts(check.attention, attention)
    assert_accepts(check.attention, scaled_dot_product_attention)
    assert_not_attempted(check.attention, stub)


def test_attention_rejects_missing_scaling():
    def unscaled(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1), -1)
        return w @ v, w
    assert "√d_k" in assert_rejects(check.attention, unscaled)


def test_attention_rejects_softmax_over_wrong_axis():
    def wrong_axis(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), -2)
        return w @ v, w
    assert "wrong axis" in assert_rejects(check.attention, wrong_axis)


def test_attention_rejects_untransposed_k():
    def no_transpose(q, k, v):
        w = torch.softmax(q @ k / math.sqrt(q.size(-1)), -1)
        return w @ v, w
    assert "transposed" in assert_rejects(check.attention, no_transpose)


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_attention_rejects_scaling_by_d_k_and_2d_only_transpose():
    def by_d_k(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / q.size(-1), -1)
        return w @ v, w
    assert "instead of √d_k" in assert_rejects(check.attention, by_d_k)

    def matrix_only(q, k, v):  # k.T breaks on batched inputs
        w = torch.softmax(q @ k.T / math.sqrt(q.size(-1)), -1)
        return w @ v, w
    assert_rejects(check.attention, matrix_only)


def test_attention_rejects_scaling_by_the_wrong_size():
    def by_d_v(q, k, v):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(v.size(-1)), -1)
        return w @ v, w
    assert "d_k" in assert_rejects(check.attention, by_d_v)

    def by_shape_1(q, k, v):  # q.shape[1] is d_k for a matrix, the head count for [B, h, T, d]
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[1]), -1)
        return w @ v, w
    assert "d_k" in assert_rejects(check.attention, by_shape_1)


def test_attention_rejects_output_only_and_swapped_pair():
    assert "pair" in assert_rejects(check.attention, lambda q, k, v: attention(q, k, v)[0])
    assert "order" in assert_rejects(check.attention, lambda q, k, v: attention(q, k, v)[::-1])


def test_attention_rejects_scaling_q_in_place():
    def in_place(q, k, v):
        q /= math.sqrt(q.size(-1))
        w = torch.softmax(q @ k.transpose(-2, -1), -1)
        return w @ v, w
    assert "changed its input" in assert_rejects(check.attention, in_place)


# ---- exercise 3: the "rate" weights -------------------------------------------------------

SCORES = torch.tensor(check.RATE_SCORES)
RATE_ANSWER = torch.softmax(SCORES / math.sqrt(64), -1)


def test_rate_weights_accepts_list_tensor_and_array():
    assert_accepts(check.rate_weights, RATE_ANSWER)
    assert_accepts(check.rate_weights, [round(w, 4) for w in RATE_ANSWER.tolist()])
    assert_accepts(check.rate_weights, RATE_ANSWER.numpy())
    assert_not_attempted(check.rate_weights, None)


def test_rate_weights_rejects_classic_mistakes():
    assert "√d_k" in assert_rejects(check.rate_weights, torch.softmax(SCORES, -1))
    assert "d_k = 64" in assert_rejects(check.rate_weights, torch.softmax(SCORES / 64, -1))
    assert "page" in assert_rejects(check.rate_weights, check.PAGE_WEIGHTS)
    assert "softmax" in assert_rejects(check.rate_weights, SCORES / 8)
    assert "multiplied" in assert_rejects(check.rate_weights, torch.softmax(SCORES * 8, -1))


def test_rate_weights_rejects_wrong_length_order_and_type():
    assert "6 weights" in assert_rejects(check.rate_weights, [0.5, 0.5])
    assert "order" in assert_rejects(check.rate_weights, RATE_ANSWER.flip(0))
    assert "order" in assert_rejects(check.rate_weights, RATE_ANSWER.sort(descending=True).values)
    assert "number" in assert_rejects(check.rate_weights, "0.16 0.17 0.18 0.18 0.16 0.17")


def test_rate_weights_rounded_hint_names_entry_and_does_not_leak():
    hint = assert_rejects(check.rate_weights, [round(w, 2) for w in RATE_ANSWER.tolist()])
    assert "decimals" in hint
    for w in RATE_ANSWER.tolist():
        assert f"{w:.4f}" not in hint and f"{w:.3f}" not in hint


# ---- exercise 4: the page's multiplier ----------------------------------------------------

def test_page_scale_accepts_fitted_multiplier_and_the_solution_methods():
    for c in (2.7, 2.8, 2.85):
        assert_accepts(check.page_scale, c)
    assert_accepts(check.page_scale, torch.tensor(2.8))
    # the method the exercise suggests: the slope of log(w) against s, over all six tokens
    slope = np.polyfit(check.RATE_SCORES, np.log(check.PAGE_WEIGHTS), 1)[0]
    assert_accepts(check.page_scale, float(slope))
    assert_accepts(check.page_scale, round(float(slope), 2))
    # the solution's scan, rounded to two decimals as the solution notebook does
    scores, page = torch.tensor(check.RATE_SCORES), torch.tensor(check.PAGE_WEIGHTS)
    cs = torch.linspace(0.5, 5.0, 451)
    worst = torch.stack([(torch.softmax(c * scores, -1) - page).abs().max() for c in cs])
    assert_accepts(check.page_scale, round(cs[worst.argmin()].item(), 2))
    assert_not_attempted(check.page_scale, None)


def test_page_scale_rejects_sqrt_dk_temperature_and_nonsense():
    assert "flattens" in assert_rejects(check.page_scale, 1 / math.sqrt(64))
    assert "flattens" in assert_rejects(check.page_scale, 1.0)
    assert "temperature" in assert_rejects(check.page_scale, 1 / 2.8)
    assert "sharper" in assert_rejects(check.page_scale, 10.0)
    assert "number" in assert_rejects(check.page_scale, "two")
    assert "number" in assert_rejects(check.page_scale, "2.8")
    assert_rejects(check.page_scale, float("nan"))
    assert "negative" in assert_rejects(check.page_scale, -2.8)


def test_page_scale_single_pair_estimate_is_pointed_to_all_tokens():
    # 'rate' against 'The': log(0.35 / 0.03) / 0.8 = 3.07, just outside the page's rounding
    c = math.log(0.35 / 0.03) / (0.9 - 0.1)
    assert "all six" in assert_rejects(check.page_scale, c)
    assert "all six" in assert_rejects(check.page_scale, math.log(0.35 / 0.28) / (0.9 - 0.8))


# ---- exercise 5: causal attention --------------------------------------------------------


def causal_attend(q, k, v):
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return weights @ v, weights


def _with_weights(make_weights):
    def attend(q, k, v):
        w = make_weights(q, k)
        return w @ v, w
    return attend


def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))


def _future(q):
    T = q.size(-2)
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)


def test_causal_accepts_solution_library_and_stub_not_attempted():
    assert_accepts(check.causal_attention, causal_attend)
    assert_accepts(check.causal_attention,
                   lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True))
    assert_not_attempted(check.causal_attention, stub)


def test_causal_rejects_flipped_mask():
    past = _with_weights(lambda q, k: torch.softmax(_scores(q, k).masked_fill(
        _future(q).T, float("-inf")), -1))
    assert "flipped" in assert_rejects(check.causal_attention, past)


def test_causal_rejects_masking_the_diagonal():
    def no_self(q, k):
        T = q.size(-2)
        hide = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=0)
        return torch.softmax(_scores(q, k).masked_fill(hide, -1e9), -1)
    assert "diagonal" in assert_rejects(check.causal_attention, _with_weights(no_self))


def test_causal_rejects_zeroing_after_softmax():
    after = _with_weights(lambda q, k: torch.softmax(_scores(q, k), -1).masked_fill(_future(q), 0))
    assert "AFTER the softmax" in assert_rejects(check.causal_attention, after)


def test_causal_rejects_filling_with_zero():
    zero_fill = _with_weights(lambda q, k: torch.softmax(_scores(q, k).masked_fill(_future(q), 0.0), -1))
    assert "-inf" in assert_rejects(check.causal_attention, zero_fill)


def test_causal_rejects_no_mask_missing_scale_and_a_fixed_size_mask():
    assert "no mask" in assert_rejects(check.causal_attention,
                                       _with_weights(lambda q, k: torch.softmax(_scores(q, k), -1)))
    unscaled = _with_weights(lambda q, k: torch.softmax(
        (q @ k.transpose(-2, -1)).masked_fill(_future(q), float("-inf")), -1))
    assert "√d_k" in assert_rejects(check.causal_attention, unscaled)

    def fixed_six(q, k):   # written for the six-token example only
        mask = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
        return torch.softmax(_scores(q, k).masked_fill(mask, float("-inf")), -1)
    assert_rejects(check.causal_attention, _with_weights(fixed_six))


def test_causal_rejects_a_mask_built_from_the_key_width():
    def by_width(q, k):    # uses d instead of T for the mask size: works only when d == T
        d = q.size(-1)
        mask = torch.triu(torch.ones(d, d, dtype=torch.bool), diagonal=1)
        return torch.softmax(_scores(q, k).masked_fill(mask, float("-inf")), -1)
    assert_rejects(check.causal_attention, _with_weights(by_width))


def test_causal_rejects_flattening_heads_with_view():
    def flattened(q, k, v):                 # .view fails on heads transposed out of [B, T, h, d]
        shape = q.shape
        out, w = causal_attend(q.view(-1, *shape[-2:]), k.view(-1, *shape[-2:]),
                               v.view(-1, *v.shape[-2:]))
        return out.view(*shape[:-1], -1), w.view(*shape[:-1], shape[-2])
    assert_rejects(check.causal_attention, flattened)


# ---- every grader tries more than its first case --------------------------------------------
# Each wrong answer is right on the grader's first hand-picked case only: a grader thinned to
# that one case would accept it. (rate_weights and page_scale grade one value, not a function.)

def test_every_function_grader_goes_past_its_first_case():
    assert_rejects(check.softmax, right_on_first_call_only(
        stable_softmax, lambda x: torch.softmax(x, dim=0)))
    assert_rejects(check.attention, right_on_first_call_only(
        attention, lambda q, k, v: attention(q * 2, k, v)))
    assert_rejects(check.causal_attention, right_on_first_call_only(
        causal_attend, lambda q, k, v: scaled_dot_product_attention(q, k, v)))


# ---- answers of the wrong type, large scores, inputs made the way a model makes them ---------

def test_attention_answers_as_lists_are_rejected():
    as_lists = lambda q, k, v: tuple(t.tolist() for t in attention(q, k, v))
    assert "tensor" in assert_rejects(check.attention, as_lists)
    causal_lists = lambda q, k, v: tuple(t.tolist() for t in causal_attend(q, k, v))
    assert "tensor" in assert_rejects(check.causal_attention, causal_lists)


def _naive_softmax(scores):
    e = torch.exp(scores)
    return e / e.sum(-1, keepdim=True)


def test_attention_with_a_softmax_that_overflows_is_rejected():
    def naive(q, k, v):
        w = _naive_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)))
        return w @ v, w
    assert "overflows" in assert_rejects(check.attention, naive)

    def naive_causal(q, k, v):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        w = _naive_softmax(scores.masked_fill(_future(q), float("-inf")))
        return w @ v, w
    assert "overflows" in assert_rejects(check.causal_attention, naive_causal)


def test_attention_flattening_transposed_heads_with_view_is_rejected():
    def flattened(q, k, v):
        out, w = attention(q.view(-1, *q.shape[-2:]), k.view(-1, *k.shape[-2:]),
                           v.view(-1, *v.shape[-2:]))
        return out.view(*q.shape[:-1], -1), w.view(*q.shape[:-1], k.shape[-2])
    assert "view" in assert_rejects(check.attention, flattened)


def test_softmax_flattening_rows_with_view_is_rejected():
    def rows_flattened(x):  # x.view(-1, S) raises on one head sliced out of [B, h, T, S]
        rows = x.view(-1, x.shape[-1])
        return stable_softmax(rows).view(x.shape)
    assert "view" in assert_rejects(check.softmax, rows_flattened)


def test_rate_weights_names_the_widths_printed_in_the_chapter():
    assert "d_k = 16" in assert_rejects(check.rate_weights, torch.softmax(SCORES / 4, -1))
    assert "d_k = 4" in assert_rejects(check.rate_weights, torch.softmax(SCORES / 2, -1))
    # the table's three-decimal d_k = 16 row is still named, not passed
    assert_rejects(check.rate_weights, [round(w, 3) for w in torch.softmax(SCORES / 4, -1).tolist()])


def test_page_scale_hint_for_one_over_sqrt_dk_does_not_give_exercise_3_away():
    hint = assert_rejects(check.page_scale, 1 / 8)
    assert "flattens" in hint
    for w in RATE_ANSWER.tolist():
        assert f"{w:.3f}" not in hint and f"{w:.4f}" not in hint
