"""Graders for chapter 03 (attention): `from utils.checks import ch03 as check`."""

from __future__ import annotations

import math

import numpy as np
import torch

from utils.attention import scaled_dot_product_attention
from utils.checks.grading import (
    Hint,
    compare_with_reference,
    expect_close,
    expect_number,
    expect_tensor,
    expect_value,
    grader,
    require_value,
    seeded_cases,
)

# The worked example: "The merchant chargeback rate is high", scores of the query "rate".
RATE_TOKENS = ["The", "merchant", "chargeback", "rate", "is", "high"]
RATE_SCORES = [0.1, 0.4, 0.8, 0.9, 0.2, 0.7]
# The weights the reference explainer page prints for those scores.
PAGE_WEIGHTS = [0.03, 0.10, 0.28, 0.35, 0.05, 0.19]
EXERCISE_D_K = 64  # exercise 3 uses a realistic head width
PAGE_TOLERANCE = 0.02  # the page rounds to two decimals; allow a little more than that


def _scores(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    """Attention-like scores: each row has its own scale and offset (rows of very different
    size), and some rows are causally masked with -inf."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-1, 3, (*shape[:-1], 1))
    x = x + rng.uniform(-2000, 2000, (*shape[:-1], 1)) * (rng.random((*shape[:-1], 1)) < 0.3)
    x = torch.from_numpy(x).float()
    if len(shape) >= 2 and rng.random() < 0.4:   # causal: row t sees keys 0..t
        T, S = shape[-2:]
        x = x.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), -math.inf)
    return x


def _softmax_case(rng: np.random.Generator) -> tuple[torch.Tensor]:
    kind = rng.integers(0, 3)
    S = int(rng.integers(1, 9))
    if kind == 0:
        return (_scores(rng, S),)
    if kind == 1:
        return (_scores(rng, S, S),)   # square: a broadcasting slip runs without an error
    return (_scores(rng, int(rng.integers(1, 4)), S, S),)


def _softmax_mistake(got, expected, x) -> str | None:
    try:
        got = torch.as_tensor(got).double()
    except (TypeError, ValueError, RuntimeError):
        return None
    x = x.double()
    if got.shape != x.shape:
        return None
    if not torch.isfinite(got).all():
        shifted = torch.exp(x - x.max())
        if torch.isnan(shifted / shifted.sum(-1, keepdim=True)).any() and x.dim() > 1:
            return ("contains NaN: the tensor's rows have very different sizes, and subtracting "
                    "one maximum for the whole tensor leaves a row far below it, whose exps all "
                    "underflow to 0 (0/0). Subtract each row's own maximum: "
                    "x.max(dim=-1, keepdim=True).values")
        return ("contains NaN or inf: exp() overflowed or underflowed to 0/0. Subtract the row's "
                "maximum before exponentiating — it does not change the result, since the "
                "factor cancels in the division")
    if x.dim() >= 2:
        if torch.allclose(got, torch.softmax(x, dim=0), atol=1e-6):
            return ("the first axis sums to 1 — that is softmax over the wrong axis; normalise "
                    "over the last dimension (dim=-1)")
        for dim in range(x.dim() - 1):
            if torch.allclose(got, torch.softmax(x, dim=dim), atol=1e-6):
                return (f"that is a softmax over dim={dim}; for a batch of score matrices "
                        "the last dimension is the one to normalise: use dim=-1")
        if x.shape[-1] == x.shape[-2]:
            e = torch.exp(x - x.max(dim=-1).values)
            wrong = [e / e.sum(dim=-1, keepdim=True), e / e.sum(dim=-1)]
            e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
            wrong.append(e / e.sum(dim=-1))
            if any(torch.allclose(got, w, atol=1e-6, equal_nan=True) for w in wrong):
                return ("the row maxima or row sums were broadcast along the wrong axis: keep "
                        "one value per row with keepdim=True (x.max(dim=-1, keepdim=True), "
                        "e.sum(dim=-1, keepdim=True)) so it lines up with its row")
    if not torch.allclose(got.sum(-1), torch.ones(got.shape[:-1], dtype=got.dtype), atol=1e-5):
        return ("the result should sum to 1 along the last dimension — did you forget to "
                "divide by the sum?")
    return None


def _compare_softmax(got, expected, what: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: return a tensor, got {type(got).__name__}")
    expect_close(got, expected, what, atol=1e-6)


@grader
def softmax(fn):
    """Exercise 1: a numerically stable softmax over the last dimension of a tensor."""
    cases = [
        (torch.tensor([1.0, 2.0, 3.0]),),
        (torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]),),             # one softmax per row
        (torch.tensor([1000.0, 1001.0, 1002.0]),),                       # exp overflows
        (torch.tensor([-1000.0, -1001.0]),),                             # exp underflows
        (torch.tensor([0.0, -math.inf, 1.0]),),                          # a masked score
        (torch.tensor([[0.0, 1.0, 2.0], [-1000.0, -999.0, -998.0]]),),   # rows far apart
        (torch.tensor([[1.0, 2.0], [0.0, 5.0]]),),                       # square
        (torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]]),),           # a batch [1, 2, 3]
        (torch.tensor([7.0]),),                                          # one key
        # one head's scores sliced out of [B, h, T, S]: not contiguous, so .view(-1, S) fails
        (torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(30)).mul(20)[:, 1],),
    ]
    cases += seeded_cases(_softmax_case, n=25, seed=30)
    try:
        compare_with_reference(fn, lambda x: torch.softmax(x, dim=-1), cases, _compare_softmax,
                               name="softmax", diagnose=_softmax_mistake)
    except Hint as hint:
        if "must match the size of tensor" in str(hint):  # [T, S] - [T]: no keepdim
            raise Hint(f"{hint} — a row maximum or row sum lost its dimension: keep one value "
                       "per row with keepdim=True (x.max(dim=-1, keepdim=True), "
                       "e.sum(dim=-1, keepdim=True)) so it lines up with its row") from None
        raise
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
        "the scores are multiplied by √d_k; divide by it":
            torch.softmax(q @ kt * math.sqrt(d_k), -1) @ v,
    }
    for size, name in [(v.size(-1), "d_v (the values' width)"), (q.size(-2), "T (the number "
                       "of queries)"), (q.shape[1], "q.shape[1]")]:
        if size != d_k:
            variants[f"the scale uses √{name}; it must be √d_k = √q.size(-1), the width of "
                     "the queries and keys"] = torch.softmax(q @ kt / math.sqrt(size), -1) @ v
    if k.size(-1) == k.size(-2) and q.size(-2) == k.size(-2):
        variants["K is not transposed (scores are q @ kᵀ, i.e. k.transpose(-2, -1))"] = (
            torch.softmax(q @ k / math.sqrt(d_k), -1) @ v)
    return variants


def _attention_case(rng: np.random.Generator) -> tuple:
    batch = [(), (int(rng.integers(1, 3)),), (int(rng.integers(1, 3)), int(rng.integers(1, 5)))]
    lead = batch[int(rng.integers(0, 3))]
    T, S = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    d_k, d_v = int(rng.choice([2, 4, 8, 16, 32])), int(rng.choice([2, 3, 8]))
    t = lambda *shape: torch.from_numpy(rng.standard_normal(shape)).float()  # noqa: E731
    return t(*lead, T, d_k), t(*lead, S, d_k), t(*lead, S, d_v)


def _compare_attention(got, expected, what: str) -> None:
    if not (isinstance(got, tuple | list) and len(got) == 2):
        raise Hint(f"{what}: return a pair (output, weights), got {type(got).__name__}")
    out, weights = got
    ref_out, ref_w = expected
    if _close(out, ref_w) and _close(weights, ref_out):
        raise Hint(f"{what}: the pair is in the wrong order; return (output, weights)")
    # tensors, not lists: the model goes on computing with them
    weights = expect_tensor(weights, tuple(ref_w.shape), f"{what}: the weights")
    out = expect_tensor(out, tuple(ref_out.shape), f"{what}: the output")
    expect_close(weights, ref_w, f"{what}: the weights")
    expect_close(out, ref_out, f"{what}: the output")


def _close(a, b: torch.Tensor, atol: float = 1e-5) -> bool:
    try:
        a = torch.as_tensor(a).double()
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b.double(), atol=atol))


def _attention_mistake(got, expected, q, k, v) -> str | None:
    if not (isinstance(got, tuple | list) and len(got) == 2):
        return None
    try:
        out = torch.as_tensor(got[0]).double()
    except (TypeError, ValueError, RuntimeError):
        return None
    for mistake, wrong in _attention_variants(q, k, v).items():
        if out.shape == wrong.shape and torch.allclose(out, wrong.double(), atol=1e-5):
            return mistake
    if not torch.isfinite(out).all() and torch.isfinite(expected[0]).all():
        return ("the result contains NaN or inf: with large scores exp() overflows. Subtract "
                "each row's maximum before exponentiating (or use torch.softmax)")
    return None


@grader
def attention(fn):
    """Exercise 2: scaled dot-product attention, returning (output, weights)."""
    g = torch.Generator().manual_seed(3)
    cases = [
        # square, so a missing transpose still runs
        (torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g),
         torch.randn(4, 4, generator=g)),
        (torch.randn(3, 8, generator=g) * 2, torch.randn(5, 8, generator=g),
         torch.randn(5, 2, generator=g)),
        # a batch of heads: [B, h, T, d]
        (torch.randn(2, 3, 6, 16, generator=g), torch.randn(2, 3, 6, 16, generator=g),
         torch.randn(2, 3, 6, 16, generator=g)),
        # one query, one key
        (torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g),
         torch.randn(1, 3, generator=g)),
        # large scores (about ±100 after scaling): a softmax without the max shift overflows
        (10 * torch.randn(2, 5, 16, generator=g), 10 * torch.randn(2, 5, 16, generator=g),
         torch.randn(2, 5, 4, generator=g)),
    ]
    # heads split from [B, T, h, d] and transposed, as a model hands them over: not contiguous
    qkv = torch.randn(3, 2, 6, 3, 4, generator=g).transpose(2, 3)      # 3 x [B, h, T, d]
    cases.append((qkv[0], qkv[1], qkv[2]))
    cases += seeded_cases(_attention_case, n=20, seed=31)
    compare_with_reference(fn, scaled_dot_product_attention, cases, _compare_attention,
                           name="attend", diagnose=_attention_mistake)
    return "softmax(QKᵀ/√d_k)V, batched over any leading dimensions."


def _weights_answer(answer) -> list:
    if isinstance(answer, torch.Tensor | np.ndarray):
        answer = answer.tolist()
    if not isinstance(answer, list | tuple):
        raise Hint(f"`rate_weights` should be a list or tensor of 6 numbers, got "
                   f"{type(answer).__name__} {answer!r:.40}")
    return list(answer)


@grader
def rate_weights(answer):
    """Exercise 3: the attention weights of "rate" for the page's scores with d_k = 64."""
    values = _weights_answer(require_value(answer, "rate_weights"))
    if len(values) != len(RATE_TOKENS):
        raise Hint(f"expected 6 weights, one per token of {RATE_TOKENS}, got {len(values)}")
    got = torch.tensor([expect_number(w, f"rate_weights[{i}] ({RATE_TOKENS[i]!r})")
                        for i, w in enumerate(values)], dtype=torch.float64)
    scores = torch.tensor(RATE_SCORES, dtype=torch.float64)
    expected = torch.softmax(scores / math.sqrt(EXERCISE_D_K), -1)
    named = [
        (torch.tensor(PAGE_WEIGHTS, dtype=torch.float64), 1e-3,
         "those are the page's numbers: compute the weights yourself from the scores"),
        (torch.softmax(scores, -1), 1e-4, "that is softmax of the raw scores: divide them by "
                                          "√d_k = 8 first"),
        (torch.softmax(scores / EXERCISE_D_K, -1), 1e-4, "you divided by d_k = 64; the scale "
                                                         "is √d_k = 8"),
        (torch.softmax(scores * math.sqrt(EXERCISE_D_K), -1), 1e-4,
         "you multiplied the scores by √d_k; divide them by it"),
        (scores / math.sqrt(EXERCISE_D_K), 1e-4, "those are the scaled scores; now apply the "
                                                 "softmax"),
        (torch.softmax(scores / 2, -1), 1e-3, "those are the weights for d_k = 4 (÷ 2) from "
                                              "section 2; the exercise asks for d_k = 64"),
        (torch.softmax(scores / 4, -1), 1e-3, "those are the weights for d_k = 16 (÷ 4) from "
                                              "section 3's table; the exercise asks for d_k = 64"),
        (expected.flip(0), 1e-3, "the weights are in the wrong order: give them in sentence "
                                 f"order, {RATE_TOKENS}"),
        (expected.sort(descending=True).values, 1e-3,
         "the weights are sorted; give them in sentence order, one per token of "
         f"{RATE_TOKENS}"),
    ]
    for wrong, atol, mistake in named:
        if not torch.allclose(expected, wrong, atol=atol) and torch.allclose(got, wrong, atol=atol):
            raise Hint(mistake)
    for decimals in (1, 2):
        if torch.allclose(got, expected.mul(10**decimals).round().div(10**decimals), rtol=0,
                          atol=1e-9):
            raise Hint(f"you rounded the weights to {decimals} decimals, too coarse to tell them "
                       "apart: keep at least 3 (within 0.001 is accepted)")
    worst = int((got - expected).abs().argmax())  # name the entry most off, never the answer
    expect_value(float(got[worst]), float(expected[worst]),
                 f"rate_weights[{worst}] (the weight of {RATE_TOKENS[worst]!r})", tol=1e-3)
    return (f"With d_k = 64 the weights are almost uniform ({expected.min():.3f} to "
            f"{expected.max():.3f}): scores this small barely separate after scaling.")


def _pair_estimates() -> list[float]:
    """c from each pair of tokens: log(w_i / w_j) / (s_i - s_j). Rounding makes them disagree."""
    n = len(RATE_SCORES)
    return [math.log(PAGE_WEIGHTS[i] / PAGE_WEIGHTS[j]) / (RATE_SCORES[i] - RATE_SCORES[j])
            for i in range(n) for j in range(n) if RATE_SCORES[i] != RATE_SCORES[j]]


@grader
def page_scale(answer):
    """Exercise 4: the multiplier c with softmax(c · scores) ≈ the page's weights."""
    c = expect_number(require_value(answer, "page_scale"), "page_scale")
    scores = torch.tensor(RATE_SCORES, dtype=torch.float64)
    page = torch.tensor(PAGE_WEIGHTS, dtype=torch.float64)
    got = torch.softmax(c * scores, -1)
    error = (got - page).abs().max().item()
    if error <= PAGE_TOLERANCE:
        return (f"softmax({c:g} · scores) is within {error:.3f} of every printed weight: the page "
                f"multiplied its scores by about {c:.2g} (temperature {1 / c:.2f}), it did not "
                "divide by any √d_k ≥ 1.")
    if c < 0:
        raise Hint(f"c = {c:g} is negative, which reverses the order of the weights (the "
                   "highest score would get the smallest weight); c must be positive")
    if c > 0 and abs(1 / c - 2.8) < 0.4:
        raise Hint(f"{c:g} looks like a temperature (dividing by it); the exercise asks for the "
                   f"multiplier c in softmax(c · scores), i.e. 1/{c:g} = {1 / c:.2f}")
    if any(abs(c - e) < 0.01 for e in _pair_estimates()):
        raise Hint(f"c = {c:g} fits one pair of tokens, but the page rounds its weights to two "
                   "decimals, so different pairs give different c (from about 2.1 to 5.1). Use "
                   "all six tokens at once: fit the slope of log(w) against s, or scan c and "
                   f"keep the one whose worst difference is smallest (it must be ≤ {PAGE_TOLERANCE})")
    if 0 < c <= 1:
        # (only the largest weight, to two decimals: the weights for c = 1/8 are exercise 3)
        raise Hint(f"c = {c:g} gives 'rate' a weight of {got.max():.2f}, the page {page.max():.2f}: "
                   "multiplying by c ≤ 1 (which is what dividing by √d_k does) only flattens the "
                   "weights, but the page's are sharper than plain softmax. Try c > 1")
    shown = [round(w, 3) for w in got.tolist()]
    direction = "sharper" if got.max() > page.max() else "flatter"
    size = "too big" if direction == "sharper" else "too small"
    raise Hint(f"c = {c:g} is {size}: it gives {shown}, which is {direction} than the page's "
               f"{PAGE_WEIGHTS} (worst difference {error:.3f}; aim for ≤ {PAGE_TOLERANCE})")


def _causal_reference(q, k, v):
    return scaled_dot_product_attention(q, k, v, is_causal=True)


def _causal_case(rng: np.random.Generator) -> tuple:
    lead = [(), (int(rng.integers(1, 3)),), (int(rng.integers(1, 3)), int(rng.integers(1, 4)))][
        int(rng.integers(0, 3))]
    T = int(rng.integers(2, 8))
    d_k, d_v = int(rng.choice([2, 4, 8, 16])), int(rng.choice([2, 3, 8]))
    t = lambda *shape: torch.from_numpy(rng.standard_normal(shape)).float()  # noqa: E731
    return t(*lead, T, d_k), t(*lead, T, d_k), t(*lead, T, d_v)


def _causal_variants(q, k, v) -> dict[str, torch.Tensor]:
    """Weights of classic causal-mask mistakes, so a hint can name the one made."""
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    past = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    allowed_weights = torch.softmax(scores.masked_fill(future, -math.inf), -1)
    plain = torch.softmax(scores, -1)
    variants = {
        "the mask is flipped: a query may look at itself and EARLIER positions (key j ≤ query "
        "i), so hide the upper triangle (torch.triu(..., diagonal=1))":
            torch.softmax(scores.masked_fill(past, -math.inf), -1),
        "the mask hides the diagonal too: a token may attend to itself (use diagonal=1 in "
        "torch.triu, so only keys after the query are hidden)":
            torch.softmax(scores.masked_fill(future | torch.eye(T, dtype=torch.bool),
                                             -1e9), -1),
        "the future was zeroed AFTER the softmax, so the rows no longer sum to 1: fill the "
        "scores with -inf before the softmax instead":
            plain.masked_fill(future, 0.0),
        "masked scores were set to 0, not -inf: e^0 = 1 still gives the future weight; use "
        "float('-inf')": torch.softmax(scores.masked_fill(future, 0.0), -1),
        "no mask was applied: every query still sees the future": plain,
        "you forgot to divide the scores by √d_k": torch.softmax(
            (q @ k.transpose(-2, -1)).masked_fill(future, -math.inf), -1),
    }
    return {name: w for name, w in variants.items()
            if not torch.allclose(w, allowed_weights, atol=1e-6)}


def _causal_mistake(got, expected, q, k, v) -> str | None:
    if not (isinstance(got, tuple | list) and len(got) == 2):
        return None
    try:
        weights = torch.as_tensor(got[1]).double()
    except (TypeError, ValueError, RuntimeError):
        return None
    for mistake, wrong in _causal_variants(q, k, v).items():
        if weights.shape == wrong.shape and torch.allclose(weights, wrong.double(), atol=1e-5):
            return mistake
    if not torch.isfinite(weights).all():
        return ("the weights contain NaN or inf: with large scores exp() overflows. Subtract "
                "each row's maximum before exponentiating (or use torch.softmax)")
    return None


@grader
def causal_attention(fn):
    """Exercise 5: scaled dot-product attention where query i sees only keys 0..i."""
    g = torch.Generator().manual_seed(5)
    cases = [
        # the six "rate" tokens, one head of width 4
        (torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g),
         torch.randn(6, 3, generator=g)),
        # one token: it can only see itself, weight exactly 1
        (torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g),
         torch.randn(1, 2, generator=g)),
        # a batch of heads [B, h, T, d], with large scores so a 0 fill still matters
        (3 * torch.randn(2, 2, 5, 8, generator=g), 3 * torch.randn(2, 2, 5, 8, generator=g),
         torch.randn(2, 2, 5, 8, generator=g)),
        # scores of about ±100: a softmax without the max shift overflows
        (10 * torch.randn(6, 16, generator=g), 10 * torch.randn(6, 16, generator=g),
         torch.randn(6, 3, generator=g)),
    ]
    # heads split from [B, T, h, d] and transposed, as a model hands them over: not contiguous,
    # so a .view() on them fails
    qkv = torch.randn(3, 2, 7, 2, 4, generator=g).transpose(2, 3)      # 3 x [B, h, T, d]
    cases.append((qkv[0], qkv[1], qkv[2]))
    cases += seeded_cases(_causal_case, n=20, seed=53)
    compare_with_reference(fn, _causal_reference, cases, _compare_attention,
                           name="causal_attend", diagnose=_causal_mistake)
    return "Each query sees itself and the past: the future gets weight exactly 0."
