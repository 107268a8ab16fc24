"""Graders for chapter 02, embeddings and positional encodings.

    from utils.checks import ch02 as check

Each grader compares the learner's code with the library on hand-picked cases aimed at the
mistakes named below and on seeded random cases of the sizes a model uses (hundreds of
positions, d up to 128, batches of vectors of very different lengths, zero vectors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from utils.checks.grading import (
    Hint,
    compare_with_reference,
    expect_close,
    expect_tensor,
    grader,
    seeded_cases,
)
from utils.embeddings import pair_frequencies
from utils.embeddings import sinusoidal_positions as _sinusoidal
from utils.word_vectors import cosine_similarity as _cosine


def _close(a: Any, b: torch.Tensor, atol: float = 1e-4) -> bool:
    try:
        a = torch.as_tensor(a).double()
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b.double(), atol=atol))


def _tensor(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape) * scale).float()


# ---- exercise 1 -------------------------------------------------------------------------

def _interleave(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return torch.stack([sin, cos], -1).flatten(-2)


def _table_mistake(got, expected, T: int, d: int) -> str | None:
    p = torch.arange(T, dtype=torch.float64)[:, None]
    angles = p * pair_frequencies(d).double()
    by_column = p * 10000.0 ** (-torch.arange(d, dtype=torch.float64) / d)
    half = p * 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) / d)
    growing = p * 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    named = [
        (_interleave(angles.cos(), angles.sin()),
         "sin and cos are swapped; column 2i holds sin, 2i+1 holds cos"),
        (torch.cat([angles.sin(), angles.cos()], -1),
         "you put all sines first and all cosines after; this course interleaves them: sin in "
         "column 2i, cos in column 2i+1"),
        (_interleave(half.sin(), half.cos()), "the exponent should be 2i/d (i counts pairs), not i/d"),
        (_interleave(growing.sin(), growing.cos()),
         "the exponent must be negative: w_i = 10000^(-2i/d) shrinks from 1 towards 1/10000"),
        (_interleave(by_column[:, 0::2].sin(), by_column[:, 1::2].cos()),
         "column 2i+1 (cos) must use the same frequency w_i as column 2i (sin): index the "
         "frequencies by pair i, not by column"),
        (_sinusoidal(T + 1, d)[1:], "positions start at 0: row p is position p, so the first "
                                    "row is sin 0 = 0 and cos 0 = 1"),
    ]
    for wrong, mistake in named:
        if not _close(expected, wrong) and _close(got, wrong):
            return mistake
    return None


def _compare_table(got, expected, what: str) -> None:
    got = expect_tensor(got, tuple(expected.shape), what)   # a nested list is not a table
    expect_close(got, expected, what, atol=1e-4)


@grader
def sinusoidal_positions(fn: Callable[[int, int], Any]) -> None:
    """Exercise 1: the [T, d] sinusoidal table, sin in even columns, cos in odd ones."""
    cases = [(4, 6), (1, 2), (50, 16), (0, 8), (128, 64)]
    cases += seeded_cases(lambda rng: (int(rng.integers(1, 200)), 2 * int(rng.integers(1, 65))),
                          n=12, seed=20)
    compare_with_reference(fn, _sinusoidal, cases, _compare_table, name="my_sinusoidal_positions",
                           diagnose=_table_mistake)
    return "Row p is a different mix of fast and slow waves for every position."


# ---- exercise 2 -------------------------------------------------------------------------

def _rotate(x1, x2, angle):
    c, s = torch.cos(angle), torch.sin(angle)
    return x1 * c - x2 * s, x1 * s + x2 * c


def _rope_case(rng: np.random.Generator) -> tuple:
    """The pairs RoPE rotates: [T, d/2] coordinates, angle = position * w_i."""
    T, d = int(rng.integers(1, 40)), 2 * int(rng.integers(1, 17))
    angle = torch.arange(T, dtype=torch.float32)[:, None] * pair_frequencies(d)
    return _tensor(rng, T, d // 2), _tensor(rng, T, d // 2), angle


def _compare_pair(got, expected, what: str) -> None:
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise Hint(f"{what}: return the rotated pair as a tuple (y1, y2), got "
                   f"{type(got).__name__}")
    shape = tuple(expected[0].shape)
    y1 = expect_tensor(got[0], shape, f"{what}: y1 (shaped like x1)")
    y2 = expect_tensor(got[1], shape, f"{what}: y2 (shaped like x1)")
    expect_close(torch.stack([y1, y2]).double(), torch.stack(expected), what)


def _rotate_mistake(got, expected, x1, x2, angle) -> str | None:
    if not isinstance(got, tuple | list) or len(got) != 2:
        return None
    try:
        got = torch.stack([torch.as_tensor(got[0]), torch.as_tensor(got[1])])
    except (TypeError, RuntimeError, ValueError):
        return None
    y1 = x1 * angle.cos() - x2 * angle.sin()
    named = [
        (_rotate(x1, x2, -angle), "you rotated clockwise (by -angle); a positive angle turns "
                                  "(1, 0) towards (0, 1): y1 = x1 cos - x2 sin, "
                                  "y2 = x1 sin + x2 cos"),
        (_rotate(x1, x2, angle * math.pi / 180), "the angle is already in radians; don't "
                                                 "convert it from degrees"),
        (_rotate(x1, x2, angle)[::-1], "y1 and y2 come back in the wrong order: return (y1, y2)"),
        ((y1, y1 * angle.sin() + x2 * angle.cos()),
         "y2 was computed from the new x1: keep the old x1 (compute both from the inputs, "
         "e.g. y1, y2 = ..., ... on one line)"),
        ((x1 * angle.sin() - x2 * angle.cos(), x1 * angle.cos() + x2 * angle.sin()),
         "cos and sin are swapped"),
    ]
    for wrong, mistake in named:
        if _close(got, torch.stack(wrong)):
            return mistake
    if not _close((got.double() ** 2).sum(0), (x1.double() ** 2 + x2.double() ** 2), atol=1e-3):
        return "a rotation must keep the pair's length: y1² + y2² = x1² + x2²"
    return None


@grader
def rotate_pair(fn: Callable[..., Any]) -> None:
    """Exercise 2: rotate the pair (x1, x2) by `angle` radians, counter-clockwise."""
    cases = [
        (torch.tensor(1.0), torch.tensor(0.0), torch.tensor(math.pi / 2)),
        (torch.tensor(0.3), torch.tensor(-1.2), torch.tensor(0.0)),
        (torch.tensor([1.0, 2.0, -0.5]), torch.tensor([0.5, -1.0, 2.0]),
         torch.tensor([0.1, 2.0, -3.0])),
    ]
    # the pairs of queries as a model hands them to RoPE: heads transposed out of [B, T, h, d],
    # then even and odd channels sliced apart, with one angle per (position, pair) expanded
    # over batch and heads. None of the three is contiguous, so a .view() on them fails
    q = torch.randn(2, 5, 2, 8, generator=torch.Generator().manual_seed(21)).transpose(1, 2)
    angle = (torch.arange(5.0)[:, None] * pair_frequencies(8)).expand(2, 2, 5, 4)
    cases.append((q[..., 0::2], q[..., 1::2], angle))
    cases += seeded_cases(_rope_case, n=12, seed=21)
    try:
        compare_with_reference(fn, _rotate, cases, _compare_pair, name="rotate_pair",
                               diagnose=_rotate_mistake)
    except Hint as hint:
        if "view size is not compatible" in str(hint):
            raise Hint(f"{hint} — the halves of a pair are slices of a larger tensor, not "
                       "contiguous in memory: use .reshape, or better, no reshaping at all "
                       "(cos, sin and * work element-wise on any shape)") from None
        if "only one element tensors" in str(hint):  # math.cos on a tensor of several angles
            raise Hint(f"{hint} — use torch.cos and torch.sin, which work element-wise; "
                       "math.cos only accepts a single number") from None
        raise
    return "apply_rope does this to every pair, with angle = position * w_i."


# ---- exercise 3 -------------------------------------------------------------------------

def _cosine_case(rng: np.random.Generator) -> tuple:
    """A query against a table of word vectors, or row by row, at very different lengths."""
    n, d = int(rng.integers(2, 9)), int(rng.integers(2, 12))
    rows = _tensor(rng, n, d) * torch.from_numpy(10.0 ** rng.uniform(-2, 2, (n, 1))).float()
    kind = rng.integers(0, 3)
    if kind == 0:
        return rows, _tensor(rng, d)
    if kind == 1:
        return _tensor(rng, d, scale=5.0), rows
    return rows, _tensor(rng, n, d) * 0.1


def _cosine_mistake(got, expected, a, b) -> str | None:
    try:
        got = torch.as_tensor(got).double()
    except (TypeError, ValueError, RuntimeError):
        return None
    a, b = a.double(), b.double()
    if got.shape == expected.shape and torch.isnan(got).any() and (
            (a.norm(dim=-1) == 0).any() or (b.norm(dim=-1) == 0).any()):
        return ("a zero vector gave NaN (0 / 0); its similarity to anything is 0: guard the "
                "division, e.g. lengths.clamp_min(1e-8)")
    dot = (a * b).sum(-1)
    squared = (a.float() * a.float()).sum(-1) * (b.float() * b.float()).sum(-1)   # in float32
    if not torch.isfinite(squared).all() and _close(got, dot.float() / squared.sqrt()):
        return ("the product of the squared lengths overflowed float32 (it is inf here, with "
                "entries near 1e12): take each length's square root first, "
                "a.norm(dim=-1) * b.norm(dim=-1), which stays finite")
    named = [
        (dot, "that is the plain dot product; divide by both lengths"),
        (dot / a.norm(dim=-1).clamp_min(1e-12), "you divided by one vector's length only; "
                                                "divide by both"),
        (dot / b.norm(dim=-1).clamp_min(1e-12), "you divided by one vector's length only; "
                                                "divide by both"),
        (dot / (a.norm() * b.norm()), "that divides by the length of the whole tensor; divide "
                                      "by the length of each vector (norm(dim=-1))"),
        (dot / ((a * a).sum(-1) * (b * b).sum(-1)).clamp_min(1e-12),
         "those are squared lengths; the length is the square root of the sum of squares"),
    ]
    for wrong, mistake in named:
        if not _close(expected, wrong, atol=1e-5) and _close(got, wrong, atol=1e-5):
            return mistake
    return None


def _compare_cosine(got, expected, what: str) -> None:
    got = expect_tensor(got, tuple(expected.shape), what)   # a list of floats is not enough
    expect_close(got, expected, what, atol=1e-5)


@grader
def cosine_similarity(fn: Callable[[torch.Tensor, torch.Tensor], Any]) -> None:
    """Exercise 3: cosine similarity along the last dimension, broadcasting like `*`."""
    g = torch.Generator().manual_seed(2)
    cases = [
        (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])),
        (torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])),
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-2.0, -4.0, -6.0])),
        (torch.randn(5, 8, generator=g) * torch.tensor([[0.01], [1.0], [100.0], [3.0], [0.5]]),
         torch.randn(8, generator=g)),
        (torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.1),
    ]
    cases += seeded_cases(_cosine_case, n=15, seed=22)
    cases.append((torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([3.0, -1.0])))  # a zero row
    # every query against every row of a table: [3, 1, d] with [4, d] broadcasts to [3, 4]
    cases.append((torch.randn(3, 1, 6, generator=g), torch.randn(4, 6, generator=g)))
    # cosine ignores length, so huge vectors are fair: their squared lengths multiplied
    # together overflow float32 (1e50 > 3e38), the two lengths multiplied do not
    cases.append((torch.randn(3, 8, generator=g) * 1e12, torch.randn(8, generator=g) * 1e13))
    compare_with_reference(fn, _cosine, cases, _compare_cosine, name="my_cosine_similarity",
                           diagnose=_cosine_mistake)
    return "Length no longer matters, only direction."


# ---- exercise 4 -------------------------------------------------------------------------

D = 6  # the width of every test input
_g = torch.Generator().manual_seed(0)
_W = torch.randn(D, D, generator=_g)
_POSITIONS = torch.randn(32, D, generator=_g)


class _Layer:
    """A named [T, d] -> [T, d] function, so a hint can say which layer it was."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name, self.fn = name, fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        return self.name


def _attention(x: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Parameter-light self-attention on [T, d]: every row mixes all (or earlier) rows."""
    scores = x @ x.T / math.sqrt(x.shape[-1])
    if causal:
        T = x.shape[0]
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    return torch.softmax(scores, dim=-1) @ x


LAYERS = [
    _Layer("self-attention", _attention),
    _Layer("a per-token linear layer", lambda x: torch.tanh(x @ _W)),
    _Layer("adding the mean of all tokens", lambda x: x + x.mean(0)),
    _Layer("self-attention with position vectors added",
           lambda x: _attention(x + _POSITIONS[: len(x)])),
    _Layer("causal self-attention", lambda x: _attention(x, causal=True)),
    _Layer("a running mean over earlier tokens",
           lambda x: x.cumsum(0) / torch.arange(1, x.shape[0] + 1)[:, None]),
    _Layer("reversing the order of the tokens", lambda x: x.flip(0)),
    _Layer("sorting the tokens by their first feature", lambda x: x[x[:, 0].argsort()]),
    _Layer("adding the first token to every token", lambda x: x + x[0]),
]


def _is_equivariant(layer, x: torch.Tensor, perm: torch.Tensor) -> bool:
    return bool(torch.allclose(layer(x[perm]), layer(x)[perm], atol=1e-5))


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        return bool(value.item())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise Hint(f"{what}: return True or False, got {type(value).__name__} {value!r:.40}")


def _compare_bool(got, expected: bool, what: str) -> None:
    if _as_bool(got, what) != expected:
        raise Hint(f"{what}: expected {expected}, got {not expected}")


def _equivariance_mistake(got, expected, layer, x, perm) -> str | None:
    if not isinstance(got, bool | np.bool_ | torch.Tensor):
        return None  # not a bool: the comparison's own hint says so
    shuffled_out, out = layer(x[perm]), layer(x)
    if expected:
        invariance = ("Did you compare layer(x[perm]) with layer(x)? That tests invariance; "
                      "equivariance compares it with layer(x)[perm]: the same outputs, in the "
                      "shuffled order")
        if torch.equal(shuffled_out, out[perm]):
            return f"expected True, got False. {invariance}"
        return (f"expected True, got False. {invariance}. And compare with torch.allclose, "
                "not == or torch.equal: here the two sides differ by "
                f"{(shuffled_out - out[perm]).abs().max():.1e}, because floating-point sums in "
                "another order differ in the last bits")
    return (f"expected False, got True: {layer} does not shuffle its outputs the way its input "
            "was shuffled. Row i of layer(x[perm]) must equal row i of layer(x)[perm] for every "
            "i; comparing sorted values, sums, or only some rows can miss that")


def _equivariance_case(rng: np.random.Generator) -> tuple:
    T = int(rng.integers(3, 12))
    layer = LAYERS[int(rng.integers(0, len(LAYERS)))]
    x = _tensor(rng, T, D)
    kind = rng.integers(0, 3)
    if kind == 0:
        perm = rng.permutation(T)
    elif kind == 1:  # row 0 stays in place: a check of the first row only misses the rest
        perm = np.concatenate([[0], 1 + rng.permutation(T - 1)])
    else:            # swap two neighbours
        i = int(rng.integers(0, T - 1))
        perm = np.arange(T)
        perm[[i, i + 1]] = perm[[i + 1, i]]
    return layer, x, torch.from_numpy(perm)


@grader
def is_permutation_equivariant(fn: Callable[..., Any]) -> None:
    """Exercise 4: does shuffling the input rows shuffle the output rows the same way?"""
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1))
    fixed = [torch.tensor([3, 0, 4, 1, 2]), torch.tensor([0, 2, 1, 4, 3]), torch.arange(5)]
    cases = [(layer, x.clone(), perm) for perm in fixed for layer in LAYERS]
    x16 = torch.randn(16, D, generator=torch.Generator().manual_seed(2))
    cases.append((LAYERS[0], x16, torch.arange(16).flip(0)))  # long rows: rounding differs
    cases += seeded_cases(_equivariance_case, n=30, seed=23)
    compare_with_reference(fn, _is_equivariant, cases, _compare_bool,
                           name="is_permutation_equivariant", diagnose=_equivariance_mistake)
    return "Attention alone cannot tell word order; positions must come from somewhere."
