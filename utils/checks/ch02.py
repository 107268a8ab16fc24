"""Graders for chapter 02, embeddings and positional encodings.

    from utils.checks import ch02 as check
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from utils.checks.grading import Hint, attempt, expect_close, expect_shape, grader
from utils.embeddings import sinusoidal_positions as _sinusoidal
from utils.word_vectors import cosine_similarity as _cosine


def _close(a: Any, b: torch.Tensor, atol: float = 1e-4) -> bool:
    try:
        a = torch.as_tensor(a).double()
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b.double(), atol=atol))


@grader
def sinusoidal_positions(fn: Callable[[int, int], Any]) -> None:
    """Exercise 1: the [T, d] sinusoidal table, sin in even columns, cos in odd ones."""
    for T, d in [(4, 6), (1, 2), (50, 16)]:
        got = attempt(fn, T, d)
        what = f"sinusoidal_positions({T}, {d})"
        expect_shape(got, (T, d), what)
        expected = _sinusoidal(T, d)
        if _close(got, expected):
            continue
        angles = torch.arange(T)[:, None] * 10000.0 ** (-torch.arange(0, d, 2).double() / d)
        if _close(got, torch.stack([angles.cos(), angles.sin()], -1).flatten(-2)):
            raise Hint(f"{what}: sin and cos are swapped; column 2i holds sin, 2i+1 holds cos")
        if _close(got, torch.cat([angles.sin(), angles.cos()], -1)):
            raise Hint(f"{what}: you put all sines first and all cosines after; this course "
                       "interleaves them: sin in column 2i, cos in column 2i+1")
        slow = torch.arange(T)[:, None] * (10000.0 ** (-torch.arange(0, d // 2).double() / d))
        if _close(got, torch.stack([slow.sin(), slow.cos()], -1).flatten(-2)):
            raise Hint(f"{what}: the exponent should be 2i/d (i counts pairs), not i/d")
        expect_close(got, expected, what, atol=1e-4)
    return "Row p is a different mix of fast and slow waves for every position."


@grader
def rotate_pair(fn: Callable[..., Any]) -> None:
    """Exercise 2: rotate the pair (x1, x2) by `angle` radians, counter-clockwise."""
    cases = [
        (torch.tensor(1.0), torch.tensor(0.0), torch.tensor(math.pi / 2)),
        (torch.tensor(0.3), torch.tensor(-1.2), torch.tensor(0.0)),
        (torch.tensor([1.0, 2.0, -0.5]), torch.tensor([0.5, -1.0, 2.0]),
         torch.tensor([0.1, 2.0, -3.0])),
    ]
    for x1, x2, angle in cases:
        what = f"rotate_pair({x1.tolist()}, {x2.tolist()}, angle={angle.tolist()})"
        try:
            got = attempt(fn, x1, x2, angle)
        except Hint as hint:
            if "only one element tensors" in str(hint):  # math.cos on a tensor of 3 angles
                raise Hint(f"{what}: use torch.cos and torch.sin, which work element-wise; "
                           "math.cos only accepts a single number") from None
            raise
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Hint(f"{what}: return the rotated pair as a tuple (y1, y2), "
                       f"got {type(got).__name__}")
        y1, y2 = got
        c, s = angle.cos(), angle.sin()
        expected = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c])
        try:
            stacked = torch.stack([torch.as_tensor(y1), torch.as_tensor(y2)]).double()
        except (TypeError, RuntimeError):
            raise Hint(f"{what}: y1 and y2 should be tensors shaped like x1") from None
        if _close(stacked, torch.stack([x1 * c + x2 * s, -x1 * s + x2 * c])) and \
                not _close(stacked, expected):
            raise Hint(f"{what}: you rotated clockwise (by -angle); a positive angle turns "
                       "(1, 0) towards (0, 1): y1 = x1 cos - x2 sin, y2 = x1 sin + x2 cos")
        expect_close(stacked, expected, what)
        length_in = (x1**2 + x2**2).sqrt()
        if not _close((stacked**2).sum(0).sqrt(), length_in):
            raise Hint(f"{what}: a rotation must keep the pair's length")
    return "apply_rope does this to every pair, with angle = position * w_i."


@grader
def cosine_similarity(fn: Callable[[torch.Tensor, torch.Tensor], Any]) -> None:
    """Exercise 3: cosine similarity along the last dimension, broadcasting like `*`."""
    g = torch.Generator().manual_seed(2)
    cases = [
        (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])),
        (torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])),
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-2.0, -4.0, -6.0])),
        (torch.randn(5, 8, generator=g) * 3, torch.randn(8, generator=g)),
        (torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.1),
    ]
    for a, b in cases:
        what = f"cosine_similarity(a of shape {tuple(a.shape)}, b of shape {tuple(b.shape)})"
        got = attempt(fn, a.clone(), b.clone())
        expected = _cosine(a, b)
        if not _close(got, expected) and _close(got, (a * b).sum(-1)):
            raise Hint(f"{what}: that is the plain dot product; divide by both lengths")
        if not _close(got, expected) and (_close(got, (a * b).sum(-1) / a.norm(dim=-1)) or
                                         _close(got, (a * b).sum(-1) / b.norm(dim=-1))):
            raise Hint(f"{what}: you divided by one vector's length only; divide by both")
        expect_close(got, expected, what, atol=1e-5)
    return "Length no longer matters, only direction."


def _attention(x: torch.Tensor) -> torch.Tensor:
    """Parameter-light self-attention on [T, d]: every row mixes all rows."""
    scores = x @ x.T / math.sqrt(x.shape[-1])
    return torch.softmax(scores, dim=-1) @ x


def _layers() -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor], bool]]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=g)
    positions = torch.randn(5, 6, generator=g)
    return [
        ("self-attention", _attention, True),
        ("a per-token linear layer", lambda x: torch.tanh(x @ w), True),
        ("self-attention with position vectors added", lambda x: _attention(x + positions),
         False),
        ("a running mean over earlier tokens", lambda x: x.cumsum(0) / torch.arange(
            1, x.shape[0] + 1)[:, None], False),
        ("adding the mean of all tokens", lambda x: x + x.mean(0), True),
    ]


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return bool(value.item())
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise Hint(f"{what}: return True or False, got {type(value).__name__}")


@grader
def is_permutation_equivariant(fn: Callable[..., Any]) -> None:
    """Exercise 4: does shuffling the input rows shuffle the output rows the same way?"""
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    perm = torch.tensor([3, 0, 4, 1, 2])
    for name, layer, expected in _layers():
        what = f"is_permutation_equivariant({name}, x, perm={perm.tolist()})"
        got = _as_bool(attempt(fn, layer, x.clone(), perm), what)
        if got == expected:
            continue
        if name == "self-attention" and not _close(layer(x[perm]), layer(x)):
            raise Hint(f"{what}: expected True, got False. Did you compare layer(x[perm]) "
                       "with layer(x)? That tests invariance; equivariance compares it with "
                       "layer(x)[perm]: the same outputs, in the shuffled order")
        raise Hint(f"{what}: expected {expected}, got {got}")
    # with the identity permutation every layer passes: a check must not say False there
    identity = torch.arange(5)
    for name, layer, _ in _layers():
        what = f"is_permutation_equivariant({name}, x, perm={identity.tolist()})"
        if not _as_bool(attempt(fn, layer, x.clone(), identity), what):
            raise Hint(f"{what}: the identity permutation changes nothing, expected True")
    return "Attention alone cannot tell word order; positions must come from somewhere."
