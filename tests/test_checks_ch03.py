"""Chapter 03 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import math

import pytest
import torch

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils.attention import scaled_dot_product_attention
from utils.checks import ch03 as check

# ---- exercise 1: stable softmax ----------------------------------------------------------


def stable_softmax(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def test_softmax_accepts_solution_and_library():
    assert_accepts(check.softmax, stable_softmax)
    assert_accepts(check.softmax, lambda x: torch.softmax(x, dim=-1))


def test_softmax_rejects_naive_overflow():
    naive = lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    hint = assert_rejects(check.softmax, naive)
    assert "maximum" in hint


def test_softmax_rejects_wrong_axis():
    hint = assert_rejects(check.softmax, lambda x: torch.softmax(x, dim=0))
    assert "wrong axis" in hint


def test_softmax_rejects_missing_normalisation_and_none():
    assert "sum" in assert_rejects(check.softmax, lambda x: torch.exp(x - x.max(-1, True).values))
    assert "return" in assert_rejects(check.softmax, lambda x: None)


def test_softmax_not_attempted():
    assert_not_attempted(check.softmax, stub)


# ---- exercise 2: scaled dot-product attention --------------------------------------------


def attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def test_attention_accepts_solution_and_library():
    assert_accepts(check.attention, attention)
    assert_accepts(check.attention, scaled_dot_product_attention)


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


def test_attention_rejects_output_only():
    assert "pair" in assert_rejects(check.attention, lambda q, k, v: attention(q, k, v)[0])


def test_attention_not_attempted():
    assert_not_attempted(check.attention, stub)


# ---- exercises 3 and 4: the "rate" numbers -----------------------------------------------

SCORES = torch.tensor(check.RATE_SCORES)


def test_rate_weights_accepts_list_and_tensor():
    answer = torch.softmax(SCORES / math.sqrt(64), -1)
    assert_accepts(check.rate_weights, answer)
    assert_accepts(check.rate_weights, [round(w, 4) for w in answer.tolist()])


def test_rate_weights_rejects_classic_mistakes():
    assert "√d_k" in assert_rejects(check.rate_weights, torch.softmax(SCORES, -1))
    assert "d_k = 64" in assert_rejects(check.rate_weights, torch.softmax(SCORES / 64, -1))
    assert "page" in assert_rejects(check.rate_weights, check.PAGE_WEIGHTS)
    assert "softmax" in assert_rejects(check.rate_weights, SCORES / 8)
    assert assert_rejects(check.rate_weights, [0.5, 0.5])
    assert_not_attempted(check.rate_weights, None)


def test_page_scale_accepts_fitted_multiplier():
    for c in (2.7, 2.8, 2.85):
        assert_accepts(check.page_scale, c)
    assert_accepts(check.page_scale, torch.tensor(2.8))


def test_page_scale_rejects_sqrt_dk_temperature_and_nonsense():
    assert "flattens" in assert_rejects(check.page_scale, 1 / math.sqrt(64))
    assert "flattens" in assert_rejects(check.page_scale, 1.0)
    assert "temperature" in assert_rejects(check.page_scale, 1 / 2.8)
    assert "sharper" in assert_rejects(check.page_scale, 10.0)
    assert_rejects(check.page_scale, "two")
    assert_rejects(check.page_scale, float("nan"))
    assert_not_attempted(check.page_scale, None)
