"""Graders for chapter 03 (attention): `from utils.checks import ch03 as check`."""

from __future__ import annotations

import math

import torch

from utils.attention import scaled_dot_product_attention
from utils.checks.grading import Hint, attempt, expect_close, grader, require_value

# The worked example: "The merchant chargeback rate is high", scores of the query "rate".
RATE_TOKENS = ["The", "merchant", "chargeback", "rate", "is", "high"]
RATE_SCORES = [0.1, 0.4, 0.8, 0.9, 0.2, 0.7]
# The weights the reference explainer page prints for those scores.
PAGE_WEIGHTS = [0.03, 0.10, 0.28, 0.35, 0.05, 0.19]
EXERCISE_D_K = 64  # exercise 3 uses a realistic head width
PAGE_TOLERANCE = 0.02  # the page rounds to two decimals; allow a little more than that


def _tensor(answer, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(answer.detach() if isinstance(answer, torch.Tensor) else answer,
                               dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise Hint(f"{what}: expected a list or tensor of numbers, got "
                   f"{type(answer).__name__}") from None


@grader
def softmax(fn):
    """Exercise 1: a numerically stable softmax over the last dimension of a tensor."""
    cases = [
        ("a small vector", torch.tensor([1.0, 2.0, 3.0])),
        ("a 2x3 matrix (one softmax per row)", torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])),
        ("large scores [1000, 1001, 1002]", torch.tensor([1000.0, 1001.0, 1002.0])),
        ("very negative scores [-1000, -1001]", torch.tensor([-1000.0, -1001.0])),
        ("a masked score [0, -inf, 1]", torch.tensor([0.0, -math.inf, 1.0])),
    ]
    for what, x in cases:
        got = attempt(fn, x.clone())
        expected = torch.softmax(x, dim=-1)
        if not isinstance(got, torch.Tensor):
            got = torch.as_tensor(got)
        if got.shape != x.shape:
            raise Hint(f"softmax of {what}: expected shape {tuple(x.shape)}, got "
                       f"{tuple(got.shape)}")
        if not torch.isfinite(got.double()).all():
            raise Hint(f"softmax of {what} contains NaN or inf: exp() overflowed or underflowed "
                       "to 0/0. Subtract the row's maximum before exponentiating — it does not "
                       "change the result, since the factor cancels in the division")
        if x.dim() == 2 and torch.allclose(got.double(), torch.softmax(x, dim=0).double(),
                                           atol=1e-6):
            raise Hint(f"softmax of {what}: your columns sum to 1 — that is softmax over the "
                       "wrong axis; normalise over the last dimension (dim=-1)")
        if not torch.allclose(got.double().sum(-1), torch.ones(got.shape[:-1]).double(),
                              atol=1e-5):
            raise Hint(f"softmax of {what}: the result should sum to 1 along the last "
                       f"dimension, but sums to {got.double().sum(-1).tolist()} — did you "
                       "forget to divide by the sum?")
        expect_close(got, expected, f"softmax of {what}")
    return "Stable for huge and -inf scores, one distribution per row."


def _attention_variants(q, k, v):
    """Classic mistakes, so a hint can name the one the learner made."""
    d_k = q.size(-1)
    kt = k.transpose(-2, -1)
    variants = {
        "you forgot to divide the scores by √d_k": torch.softmax(q @ kt, -1) @ v,
        "you divided by d_k instead of √d_k": torch.softmax(q @ kt / d_k, -1) @ v,
        "the softmax runs over the wrong axis (use dim=-1: each query's row must sum to 1)":
            torch.softmax(q @ kt / math.sqrt(d_k), -2) @ v,
    }
    if k.size(-1) == k.size(-2) and q.size(-2) == k.size(-2):
        variants["K is not transposed (scores are q @ kᵀ, i.e. k.transpose(-2, -1))"] = (
            torch.softmax(q @ k / math.sqrt(d_k), -1) @ v)
    return variants


@grader
def attention(fn):
    """Exercise 2: scaled dot-product attention, returning (output, weights)."""
    g = torch.Generator().manual_seed(3)
    cases = [
        ("q, k, v of shape [4, 4] (square, so a missing transpose still runs)",
         torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g),
         torch.randn(4, 4, generator=g)),
        ("q [3, 8], k [5, 8], v [5, 2]", torch.randn(3, 8, generator=g) * 2,
         torch.randn(5, 8, generator=g), torch.randn(5, 2, generator=g)),
        ("a batch: q, k, v of shape [2, 3, 6, 16]", torch.randn(2, 3, 6, 16, generator=g),
         torch.randn(2, 3, 6, 16, generator=g), torch.randn(2, 3, 6, 16, generator=g)),
    ]
    for what, q, k, v in cases:
        got = attempt(fn, q.clone(), k.clone(), v.clone())
        if not (isinstance(got, tuple | list) and len(got) == 2):
            raise Hint(f"{what}: return a pair (output, weights), got {type(got).__name__}")
        out, weights = got
        ref_out, ref_w = scaled_dot_product_attention(q, k, v)
        out = torch.as_tensor(out)
        if out.shape == ref_out.shape and not torch.allclose(out.double(), ref_out.double(),
                                                             atol=1e-5):
            for mistake, wrong in _attention_variants(q, k, v).items():
                if torch.allclose(out.double(), wrong.double(), atol=1e-5):
                    raise Hint(f"{what}: {mistake}")
        expect_close(weights, ref_w, f"{what}: the weights")
        expect_close(out, ref_out, f"{what}: the output")
    return "softmax(QKᵀ/√d_k)V, batched over any leading dimensions."


@grader
def rate_weights(answer):
    """Exercise 3: the attention weights of "rate" for the page's scores with d_k = 64."""
    got = _tensor(require_value(answer, "rate_weights"), "rate_weights")
    scores = torch.tensor(RATE_SCORES, dtype=torch.float64)
    expected = torch.softmax(scores / math.sqrt(EXERCISE_D_K), -1)
    if got.numel() != 6:
        raise Hint(f"expected 6 weights, one per token of {RATE_TOKENS}, got {got.numel()}")
    if torch.allclose(got, torch.tensor(PAGE_WEIGHTS, dtype=torch.float64), atol=1e-3):
        raise Hint("those are the page's numbers: compute the weights yourself from the scores")
    if torch.allclose(got, torch.softmax(scores, -1), atol=1e-4):
        raise Hint("that is softmax of the raw scores: divide them by √d_k = 8 first")
    if torch.allclose(got, torch.softmax(scores / EXERCISE_D_K, -1), atol=1e-4):
        raise Hint("you divided by d_k = 64; the scale is √d_k = 8")
    if torch.allclose(got, scores / math.sqrt(EXERCISE_D_K), atol=1e-4):
        raise Hint("those are the scaled scores; now apply the softmax")
    expect_close(got, expected, "weights of 'rate' with d_k = 64", atol=1e-3, rtol=0)
    return (f"With d_k = 64 the weights are almost uniform ({expected.min():.3f} to "
            f"{expected.max():.3f}): scores this small barely separate after scaling.")


@grader
def page_scale(answer):
    """Exercise 4: the multiplier c with softmax(c · scores) ≈ the page's weights."""
    value = require_value(answer, "page_scale")
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise Hint(f"page_scale should be one number, got {type(value).__name__}") from None
    if not math.isfinite(c):
        raise Hint(f"page_scale should be a finite number, got {c}")
    scores = torch.tensor(RATE_SCORES, dtype=torch.float64)
    page = torch.tensor(PAGE_WEIGHTS, dtype=torch.float64)
    got = torch.softmax(c * scores, -1)
    error = (got - page).abs().max().item()
    if error <= PAGE_TOLERANCE:
        return (f"softmax({c:g} · scores) is within {error:.3f} of every printed weight: the page "
                f"multiplied its scores by about {c:.2g} (temperature {1 / c:.2f}), it did not "
                "divide by any √d_k ≥ 1.")
    if c > 0 and abs(1 / c - 2.8) < 0.4:
        raise Hint(f"{c:g} looks like a temperature (dividing by it); the exercise asks for the "
                   f"multiplier c in softmax(c · scores), i.e. 1/{c:g} = {1 / c:.2f}")
    if 0 < c <= 1:
        raise Hint(f"c = {c:g} gives weights {[round(w, 3) for w in got.tolist()]}: multiplying "
                   "by c ≤ 1 (which is what dividing by √d_k does) only flattens the weights, "
                   "but the page's are sharper than plain softmax. Try c > 1")
    shown = [round(w, 3) for w in got.tolist()]
    direction = "sharper" if got.max() > page.max() else "flatter"
    raise Hint(f"c = {c:g} gives {shown}, which is {direction} than the page's {PAGE_WEIGHTS} "
               f"(worst difference {error:.3f}; aim for ≤ {PAGE_TOLERANCE})")
