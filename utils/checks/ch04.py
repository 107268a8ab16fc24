"""Graders for chapter 04 (multi-head attention): `from utils.checks import ch04 as check`.

Inputs are made the way the chapter makes them: split_heads gets a slice of a fused QKV
projection, merge_heads gets a real attention output (`weights @ v`, contiguous in
[B, h, T, d/h] layout, so `.view` after the transpose fails as it would in the model), and
repeat_kv gets key heads straight from split_heads. Each grader mixes hand-picked cases aimed
at the named mistakes with seeded random sizes (one head, one token, d/h equal to T, GQA).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from utils.attention import (
    AttentionHead,
    MultiHeadAttention,
    attention_cost,
    merge_heads,
    repeat_kv,
    split_heads,
)
from utils.checks.grading import (
    Hint,
    attempt,
    compare_with_reference,
    expect_close,
    expect_equal,
    expect_number,
    expect_shape,
    grader,
    seeded_cases,
)


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _close(a, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and bool(
        torch.allclose(a.double(), b.double(), atol=atol))


# ---- exercise 1 -------------------------------------------------------------------------

def _projected(B: int, T: int, d: int, seed: int) -> torch.Tensor:
    """The queries of a fused QKV projection: a [B, T, d] slice of a [B, T, 3d] output."""
    qkv = _x(B, T, 3 * d, seed=seed)
    return qkv.split(d, dim=-1)[0]


def _attention_output(B: int, h: int, T: int, d_head: int, seed: int) -> torch.Tensor:
    """What merge_heads receives in the model: weights @ v, laid out as [B, h, T, d_head]."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(B, h, T, T, generator=g), dim=-1)
    return weights @ torch.randn(B, h, T, d_head, generator=g)


def _head_sizes(rng: np.random.Generator) -> tuple[int, int, int, int]:
    h, d_head = int(rng.choice([1, 2, 3, 4, 6])), int(rng.choice([1, 2, 3, 4, 8]))
    return int(rng.integers(1, 3)), int(rng.integers(1, 7)), h, d_head


def _split_mistake(got, expected, x, n_heads) -> str | None:
    B, T, d = x.shape
    if _close(got, x.reshape(B, n_heads, T, d // n_heads)):
        return ("you reshaped straight to [B, h, T, d/h], which cuts the sequence, not the "
                "channels, into heads. View as [B, T, h, d/h] first, then swap T and h with "
                ".transpose(1, 2)")
    return ("the shape is right but the values are not in place. Head i must hold channels "
            "i*d/h to (i+1)*d/h - 1 of every token, in order")


def _merge_mistake(got, expected, x) -> str | None:
    B, h, T, d_head = x.shape
    if _close(got, x.reshape(B, T, h * d_head)):
        return ("you reshaped [B, h, T, d/h] straight to [B, T, d], which merges the heads in "
                "the wrong order. Transpose back to [B, T, h, d/h] first (then .reshape, since "
                "the transpose is not contiguous)")
    return "the shape is right but head i must land in channels i*d/h to (i+1)*d/h - 1"


def _explain_view(hint: Hint) -> Hint:
    if "view size is not compatible" in str(hint):
        return Hint(f"{hint} — after .transpose the tensor is not contiguous in memory, so .view "
                    "cannot flatten it: use .reshape (or .contiguous().view)")
    return hint


def _compare_exact(got, expected, what: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: return a tensor, got {type(got).__name__}")
    expect_shape(got, tuple(expected.shape), what)
    expect_close(got, expected, what, atol=0, rtol=0)


@grader
def split_merge(split_fn, merge_fn):
    """Exercise 1: split_heads [B, T, d] -> [B, h, T, d/h] and merge_heads back."""
    sizes = [(2, 3, 2, 4), (1, 5, 4, 3), (2, 4, 1, 6), (1, 2, 6, 1), (1, 4, 4, 4), (1, 1, 2, 3)]
    sizes += seeded_cases(_head_sizes, n=12, seed=40)
    split_cases = [(_projected(B, T, h * dh, seed=i), h) for i, (B, T, h, dh) in enumerate(sizes)]
    merge_cases = [(_attention_output(B, h, T, dh, seed=i),) for i, (B, T, h, dh) in
                   enumerate(sizes)]
    try:
        compare_with_reference(split_fn, split_heads, split_cases, _compare_exact,
                               name="split_heads", diagnose=_split_mistake)
        compare_with_reference(merge_fn, merge_heads, merge_cases, _compare_exact,
                               name="merge_heads", diagnose=_merge_mistake)
        for (x, h) in split_cases[:4]:   # and the two undo each other
            what = f"merge_heads(split_heads(x of shape {tuple(x.shape)}, {h}))"
            _compare_exact(attempt(merge_fn, attempt(split_fn, x, h)), x, what)
    except Hint as hint:
        raise _explain_view(hint) from None
    return "Heads are slices of the channels; merge_heads(split_heads(x)) == x."


# ---- exercise 2 -------------------------------------------------------------------------

def _heads(d_model: int, n_heads: int, seed: int, bias: bool = False
           ) -> tuple[list[AttentionHead], nn.Linear]:
    torch.manual_seed(seed)
    heads = [AttentionHead(d_model, d_model // n_heads, bias=bias) for _ in range(n_heads)]
    return heads, nn.Linear(d_model, d_model, bias=bias)


def _mha_mistake(got, expected, x, heads, proj) -> str | None:
    outs = [h(x)[0] for h in heads]
    joined = torch.cat(outs, -1)
    named = [
        (proj(torch.cat(outs[::-1], -1)), "the heads are concatenated in reverse order; head "
         "0's output must come first, since W_O's columns follow the head order"),
        (joined, "you concatenated the heads but did not apply the output projection W_O "
                 "(`proj`)"),
        (joined @ proj.weight.T, "the projection's bias is missing: call proj(...) rather "
                                 "than multiplying by proj.weight"),
        (joined @ proj.weight + (0 if proj.bias is None else proj.bias),
         "nn.Linear stores its weight as [out, in]: proj(y) is y @ proj.weight.T + bias; "
         "just call proj(...)"),
        (x + proj(joined), "there is no residual connection here (chapter 05 adds it around "
                           "the whole block): return the projection only"),
    ]
    for wrong, mistake in named:
        if _close(got, wrong) and not _close(expected, wrong):
            return mistake
    if isinstance(got, torch.Tensor) and got.shape == (x.shape[0], len(heads) * x.shape[1],
                                                       x.shape[2] // len(heads)):
        return "the heads were concatenated along the positions; join them along the last " \
               "(feature) dimension, dim=-1"
    return None


@grader
def mha_from_heads(fn):
    """Exercise 2: multi-head attention from single heads: concatenate, then project with W_O."""
    configs = [(8, 2, 4, False), (12, 3, 5, True), (16, 4, 1, False), (6, 6, 3, True),
               (8, 1, 3, True)]
    rng = np.random.default_rng(41)
    for _ in range(4):
        h = int(rng.choice([1, 2, 4]))
        configs.append((h * int(rng.choice([2, 4, 8])), h, int(rng.integers(1, 8)),
                        bool(rng.random() < 0.5)))
    for i, (d_model, n_heads, T, bias) in enumerate(configs):
        heads, proj = _heads(d_model, n_heads, seed=d_model + i, bias=bias)
        x = _x(2, T, d_model, seed=n_heads + i)
        fused = MultiHeadAttention.from_heads(heads, proj)
        with torch.no_grad():
            what = f"mha_from_heads on x of shape {(2, T, d_model)}, {n_heads} heads, " \
                   f"proj with{'' if bias else 'out'} bias"
            before = x.clone()
            got = attempt(fn, x, heads, proj)
            if not torch.equal(x, before):
                raise Hint(f"{what}: your function changed x; only read it")
            if isinstance(got, tuple):
                raise Hint(f"{what}: return only the output tensor, not a tuple")
            expected = fused(x)
            try:
                if not isinstance(got, torch.Tensor):
                    raise Hint(f"{what}: return a tensor, got {type(got).__name__}")
                expect_shape(got, (2, T, d_model), what)
                expect_close(got, expected, f"{what}: compared with the fused MultiHeadAttention")
            except Hint:
                mistake = _mha_mistake(got, expected, x, heads, proj)
                if mistake:
                    raise Hint(f"{what}: {mistake}") from None
                raise
    return "Concatenating the heads then W_O is exactly the fused module."


# ---- exercise 3 -------------------------------------------------------------------------

def _params(d_model: int, n_heads: int, n_kv: int, bias: bool) -> int:
    # attention_cost's count is tested against the real module in tests/test_attention.py
    return attention_cost(d_model, n_heads, 1, n_kv, bias)["params"]


def _params_case(rng: np.random.Generator) -> tuple[int, int, int, bool]:
    n_heads = int(rng.choice([1, 2, 4, 6, 8, 12, 16, 32]))
    n_kv = int(rng.choice([k for k in range(1, n_heads + 1) if n_heads % k == 0]))
    d_head = int(rng.choice([8, 16, 32, 64, 128]))
    return n_heads * d_head, n_heads, n_kv, bool(rng.random() < 0.5)


def _params_mistake(got, expected, d_model, n_heads, n_kv, bias) -> str | None:
    d_head = d_model // n_heads
    qkv_out = (n_heads + 2 * n_kv) * d_head
    weights = d_model * qkv_out + d_model * d_model
    named = [
        (4 * d_model * d_model + (4 * d_model if bias else 0),
         "that counts K and V at full width; with grouped-query attention they only have "
         "n_kv_heads heads of width d_model / n_heads"),
        (weights, "you forgot the biases"),
        (weights + (4 * d_model if bias else 0),
         "the biases of K and V shrink with n_kv_heads too: one bias per output of each "
         "projection"),
        (weights + (qkv_out if bias else 0), "the output projection W_O has a bias too"),
        (expected - d_model * d_model - (d_model if bias else 0),
         "you forgot the output projection W_O"),
        (d_model * (d_model + 2 * n_kv * d_model) + d_model * d_model
         + ((d_model + 2 * n_kv * d_model) + d_model if bias else 0),
         "each key/value head is d_head = d_model / n_heads wide, not d_model"),
    ]
    for wrong, mistake in named:
        if got == wrong and wrong != expected:
            return f"expected {expected}, got {got} — {mistake}"
    return None


def _compare_count(got, expected, what: str) -> None:
    value = expect_number(got, what)
    expect_equal(value, expected, what)


@grader
def count_params(fn):
    """Exercise 3: parameters of MultiHeadAttention(d_model, n_heads, n_kv_heads, bias)."""
    cases = [(64, 4, 4, True), (64, 4, 4, False), (768, 12, 12, True), (64, 8, 2, False),
             (64, 8, 1, True), (4096, 32, 8, False), (64, 8, 2, True), (32, 1, 1, True)]
    cases += seeded_cases(_params_case, n=20, seed=42)
    compare_with_reference(fn, _params, cases, _compare_count, name="count_params",
                           diagnose=_params_mistake)
    return "Four d×d matrices for standard attention; GQA shrinks only K and V."


# ---- exercise 4 -------------------------------------------------------------------------

def _kv_heads(B: int, n_kv: int, T: int, d: int, seed: int) -> torch.Tensor:
    """Key heads as the model makes them: split_heads of a slice of the fused projection."""
    return split_heads(_projected(B, T, n_kv * d, seed=seed), n_kv)


def _kv_case(rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    B, n_kv, T, d = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 6)),
                     int(rng.choice([1, 2, 4])))
    return _kv_heads(B, n_kv, T, d, seed=int(rng.integers(0, 10**6))), int(rng.integers(1, 5))


def _repeat_mistake(got, expected, x, n_rep) -> str | None:
    if x.shape[1] > 1 and n_rep > 1 and _close(got, x.repeat(1, n_rep, 1, 1)):
        return ("you tiled the heads (0, 1, 0, 1, ...) instead of repeating each in place "
                "(0, 0, 1, 1, ...). Query heads are grouped in order, so kv head j must serve "
                "query heads j*n_rep ... (j+1)*n_rep - 1")
    return None


@grader
def repeat_kv_heads(fn):
    """Exercise 4: repeat each key/value head n_rep times, in order (GQA)."""
    cases = [(_kv_heads(B, n_kv, T, d, seed=i), n_rep) for i, (B, n_kv, T, d, n_rep) in enumerate(
        [(1, 2, 3, 4, 2), (2, 3, 2, 2, 4), (1, 1, 4, 2, 8), (2, 4, 3, 2, 1), (1, 2, 1, 4, 3),
         (1, 3, 2, 2, 2)])]
    cases += seeded_cases(_kv_case, n=15, seed=43)
    try:
        compare_with_reference(fn, repeat_kv, cases, _compare_exact, name="repeat_kv",
                               diagnose=_repeat_mistake)
    except Hint as hint:
        raise _explain_view(hint) from None
    return "Each key/value head now serves a contiguous group of query heads."
