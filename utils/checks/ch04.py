"""Graders for chapter 04 (multi-head attention): `from utils.checks import ch04 as check`."""

from __future__ import annotations

import torch
from torch import nn

from utils.attention import (
    AttentionHead,
    MultiHeadAttention,
    attention_cost,
    repeat_kv,
    split_heads,
)
from utils.checks.grading import Hint, attempt, expect_close, expect_equal, expect_shape, grader


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@grader
def split_merge(split_fn, merge_fn):
    """Exercise 1: split_heads [B, T, d] -> [B, h, T, d/h] and merge_heads back."""
    for B, T, d, h in [(2, 3, 8, 2), (1, 5, 12, 4), (2, 4, 6, 1), (1, 2, 6, 6)]:
        x = _x(B, T, d, seed=d + h)
        what = f"split_heads(x of shape {(B, T, d)}, n_heads={h})"
        got = attempt(split_fn, x.clone(), h)
        expect_shape(got, (B, h, T, d // h), what)
        expected = split_heads(x, h)
        if not torch.allclose(got, expected):
            if torch.allclose(got, x.reshape(B, h, T, d // h)):
                raise Hint(f"{what}: you reshaped straight to [B, h, T, d/h], which cuts the "
                           "sequence, not the channels, into heads. View as [B, T, h, d/h] "
                           "first, then swap T and h with .transpose(1, 2)")
            raise Hint(f"{what}: the shape is right but the values are not in place. Head i "
                       "must hold channels i*d/h to (i+1)*d/h of every token")
        merged = attempt(merge_fn, expected.clone())
        what = f"merge_heads(tensor of shape {tuple(expected.shape)})"
        expect_shape(merged, (B, T, d), what)
        if not torch.allclose(merged, x):
            if torch.allclose(merged, expected.reshape(B, T, d)):
                raise Hint(f"{what}: you reshaped [B, h, T, d/h] straight to [B, T, d], which "
                           "merges the heads in the wrong order. Transpose back to "
                           "[B, T, h, d/h] first (then .reshape, since the transpose is not "
                           "contiguous)")
            raise Hint(f"{what}: merge_heads(split_heads(x)) should give x back")
    return "Heads are slices of the channels; merge_heads(split_heads(x)) == x."


def _heads(d_model: int, n_heads: int, seed: int) -> tuple[list[AttentionHead], nn.Linear]:
    torch.manual_seed(seed)
    heads = [AttentionHead(d_model, d_model // n_heads) for _ in range(n_heads)]
    return heads, nn.Linear(d_model, d_model, bias=False)


@grader
def mha_from_heads(fn):
    """Exercise 2: multi-head attention from single heads: concatenate, then project with W_O."""
    for d_model, n_heads, T in [(8, 2, 4), (12, 3, 5), (16, 4, 1)]:
        heads, proj = _heads(d_model, n_heads, seed=d_model)
        x = _x(2, T, d_model, seed=n_heads)
        fused = MultiHeadAttention.from_heads(heads, proj)
        with torch.no_grad():
            got = attempt(fn, x.clone(), heads, proj)
            expected = fused(x)
            what = f"{n_heads} heads on x of shape {(2, T, d_model)}"
            if isinstance(got, tuple):
                raise Hint(f"{what}: return only the output tensor, not a tuple")
            expect_shape(got, (2, T, d_model), what)
            outs = [h(x)[0] for h in heads]
            if n_heads > 1 and torch.allclose(got, proj(torch.cat(outs[::-1], -1)), atol=1e-5):
                raise Hint(f"{what}: the heads are concatenated in reverse order; head 0's "
                           "output must come first, since W_O's columns follow the head order")
            if torch.allclose(got, torch.cat(outs, -1), atol=1e-5):
                raise Hint(f"{what}: you concatenated the heads but did not apply the output "
                           "projection W_O (`proj`)")
            expect_close(got, expected, f"{what}: compared with the fused MultiHeadAttention")
    return "Concatenating the heads then W_O is exactly the fused module."


@grader
def count_params(fn):
    """Exercise 3: parameters of MultiHeadAttention(d_model, n_heads, n_kv_heads, bias)."""
    cases = [(64, 4, 4, True), (64, 4, 4, False), (768, 12, 12, True), (64, 8, 2, False),
             (64, 8, 1, True), (4096, 32, 8, False)]
    for d_model, n_heads, n_kv, bias in cases:
        # attention_cost's count is tested against the real module in tests/test_attention.py
        expected = attention_cost(d_model, n_heads, 1, n_kv, bias)["params"]
        what = f"count_params({d_model}, {n_heads}, {n_kv}, bias={bias})"
        got = attempt(fn, d_model, n_heads, n_kv, bias)
        full = 4 * d_model * d_model + (4 * d_model if bias else 0)
        if n_kv != n_heads and got == full:
            raise Hint(f"{what}: expected {expected}, got {got} — that counts K and V at full "
                       "width; with grouped-query attention they only have n_kv_heads heads")
        if bias and got == expected - (n_heads + 2 * n_kv) * (d_model // n_heads) - d_model:
            raise Hint(f"{what}: expected {expected}, got {got} — you forgot the biases")
        if got == expected - d_model * d_model - (d_model if bias else 0):
            raise Hint(f"{what}: expected {expected}, got {got} — you forgot the output "
                       "projection W_O")
        expect_equal(got, expected, what)
    return "Four d×d matrices for standard attention; GQA shrinks only K and V."


@grader
def repeat_kv_heads(fn):
    """Exercise 4: repeat each key/value head n_rep times, in order (GQA)."""
    for B, n_kv, T, d, n_rep in [(1, 2, 3, 4, 2), (2, 3, 2, 2, 4), (1, 1, 4, 2, 8),
                                 (2, 4, 3, 2, 1)]:
        x = _x(B, n_kv, T, d, seed=n_kv * 10 + n_rep)
        what = f"repeat_kv(x of shape {(B, n_kv, T, d)}, n_rep={n_rep})"
        got = attempt(fn, x.clone(), n_rep)
        expect_shape(got, (B, n_kv * n_rep, T, d), what)
        expected = repeat_kv(x, n_rep)
        if n_kv > 1 and n_rep > 1 and torch.allclose(got, x.repeat(1, n_rep, 1, 1)):
            raise Hint(f"{what}: you tiled the heads (0, 1, 0, 1, ...) instead of repeating "
                       "each in place (0, 0, 1, 1, ...). Query heads are grouped in order, so "
                       "kv head j must serve query heads j*n_rep ... (j+1)*n_rep - 1")
        expect_close(got, expected, what, atol=0, rtol=0)
    return "Each key/value head now serves a contiguous group of query heads."
