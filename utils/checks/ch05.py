"""Graders for chapter 05 (the transformer block): `from utils.checks import ch05 as check`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils import layers as _layers
from utils.attention import MultiHeadAttention
from utils.checks.grading import (
    Hint,
    attempt,
    compare_with_reference,
    expect_close,
    expect_shape,
    forbid_calls,
    grader,
    seeded_cases,
)
from utils.layers import FeedForward, LayerNorm
from utils.model import GPTConfig, parameter_breakdown


def _tensor(rng: np.random.Generator, *shape: int, scale: float = 1.0, shift: float = 0.0):
    return torch.tensor(rng.normal(shift, scale, size=shape), dtype=torch.float32)


def _compare_tensors(got, expected, what):
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: return a torch.Tensor, got {type(got).__name__}")
    expect_shape(got, tuple(expected.shape), what)
    if not torch.isfinite(got).all():
        raise Hint(f"{what}: your output contains nan or inf. A row whose entries are all "
                   "equal has variance 0: is eps added before taking the square root?")
    expect_close(got, expected, what, atol=1e-4, rtol=1e-3)


def _matches(got, candidate) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == candidate.shape
            and bool(torch.allclose(got, candidate, atol=1e-4, rtol=1e-3, equal_nan=True)))


# ---------------------------------------------------------------------- exercise 1: LayerNorm

def _btd() -> torch.Tensor:
    """A fresh [B, T, d] input on which to watch which torch functions an answer calls."""
    return torch.arange(24.0).view(2, 3, 4) - 7.0


def _layer_norm_mistakes(got, expected, x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    var = centred.pow(2).mean(-1, keepdim=True)
    scale_shift = (lambda y: y * weight + bias)
    candidates = {
        "the variance divides by d - 1 (Bessel's correction, unbiased=True); LayerNorm "
        "divides by d, i.e. var(unbiased=False)":
            scale_shift(centred / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps)),
        "eps is added outside the square root, (x - mean) / (std + eps); it belongs inside: "
        "sqrt(var + eps)": scale_shift(centred / (var.sqrt() + eps)),
        "the gain and bias (weight, bias) are not applied": centred / torch.sqrt(var + eps),
        "the bias is not added": centred / torch.sqrt(var + eps) * weight,
        "the gain (weight) is not applied": centred / torch.sqrt(var + eps) + bias,
        "eps is hard-coded: use the eps argument": scale_shift(centred / torch.sqrt(var + 1e-5)),
        "eps is missing: without it a row of equal values divides 0 by 0":
            scale_shift(centred / var.sqrt()),
    }
    for dim in range(x.dim() - 1):                  # every axis except the features
        m = x.mean(dim, keepdim=True)
        v = (x - m).pow(2).mean(dim, keepdim=True)
        candidates[f"the statistics are taken over the wrong axis (dim={dim}, across "
                   "tokens or batch); normalise each vector over its own features, "
                   "dim=-1"] = scale_shift((x - m) / torch.sqrt(v + eps))
    for mistake, candidate in candidates.items():
        if _matches(got, candidate) and not _matches(expected, candidate):
            return mistake
    return None


def _ln_case(rng: np.random.Generator):
    d = int(rng.choice([2, 3, 4, 8, 16, 64, 96]))
    shape = [int(rng.integers(1, 4)), int(rng.integers(1, 6)), d][int(rng.integers(0, 2)):]
    scale = float(10 ** rng.uniform(-3, 2))                 # rows from tiny to large
    x = _tensor(rng, *shape, scale=scale, shift=float(rng.normal(0, 3 * scale)))
    return x, _tensor(rng, d, shift=1.0, scale=0.5), _tensor(rng, d, scale=0.5), \
        float(rng.choice([1e-5, 1e-5, 1e-3]))


def _layer_norm_cases():
    weight, bias = torch.tensor([1.5, 0.5, -1.0, 2.0]), torch.tensor([0.1, -0.2, 0.3, 0.0])
    edge = [
        (torch.tensor([[1.0, 2.0, 3.0, 6.0]]), weight, bias, 1e-5),        # one token
        (torch.tensor([[1.0, 2.0, 3.0, 6.0], [4.0, 4.0, 4.0, 4.0]]), weight, bias, 1e-5),
        (torch.tensor([[1.0, 3.0], [10.0, 30.0], [0.001, 0.003]]),          # very different scales
         torch.tensor([2.0, 3.0]), torch.tensor([-1.0, 1.0]), 1e-5),
        (torch.tensor([[0.5, -0.5, 1.5, 0.0]]) * 1e-3, weight, bias, 1e-5),  # var near eps
        (torch.tensor([[1.0, 2.0, 3.0, 6.0], [2.0, 0.0, 1.0, 1.0]]), weight, bias, 0.1),
        (torch.arange(24.0).view(2, 3, 4) ** 1.5, weight, bias, 1e-5),       # [B, T, d]
        (torch.arange(12.0).view(4, 3).t() * 0.5, torch.ones(4) * 2, bias, 1e-5),  # non-contiguous
    ]
    return edge + seeded_cases(_ln_case, n=25, seed=500)


@grader
def layer_norm(fn):
    """Exercise 1: layer_norm(x, weight, bias, eps) over the last dimension, from scratch."""
    compare_with_reference(fn, _layers.layer_norm, _layer_norm_cases(), _compare_tensors,
                           name="layer_norm", diagnose=_layer_norm_mistakes)
    # Checked after the values (an answer right on the first case only still fails above):
    # F.layer_norm, torch.layer_norm and nn.LayerNorm all reach one of these.
    forbid_calls(fn, (_btd(), torch.ones(4), torch.zeros(4), 1e-5), dict.fromkeys(
        (F.layer_norm, torch.layer_norm, torch.native_layer_norm),
        "compute the mean and the variance over the last dimension yourself"))
    return ("Each vector now has mean 0 and variance 1 over its features, then gets its own "
            "learned scale and shift.")


# ------------------------------------------------------------------------ exercise 2: RMSNorm

def _rms_norm_mistakes(got, expected, x, weight, eps=1e-5):
    ms = x.pow(2).mean(-1, keepdim=True)
    centred = x - x.mean(-1, keepdim=True)
    candidates = {
        "you subtracted the mean: that is LayerNorm. RMSNorm divides x itself by "
        "sqrt(mean(x²) + eps)": centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True)
                                                       + eps) * weight,
        "eps is added outside the square root; it belongs inside: sqrt(mean(x²) + eps)":
            x / (ms.sqrt() + eps) * weight,
        "the gain (weight) is not applied": x / torch.sqrt(ms + eps),
        "you divided by the length sqrt(sum(x²)), not the root of the mean of squares":
            x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * weight,
        "you divided by the mean square without the square root":
            x / (ms + eps) * weight,
        "eps is hard-coded: use the eps argument": x / torch.sqrt(ms + 1e-5) * weight,
        "eps is missing: an all-zero vector would divide 0 by 0": x / ms.sqrt() * weight,
    }
    for dim in range(x.dim() - 1):
        candidates[f"the mean of squares is over the wrong axis (dim={dim}); use dim=-1"] = \
            x / torch.sqrt(x.pow(2).mean(dim, keepdim=True) + eps) * weight
    for mistake, candidate in candidates.items():
        if _matches(got, candidate) and not _matches(expected, candidate):
            return mistake
    return None


def _rms_case(rng: np.random.Generator):
    x, weight, _, eps = _ln_case(rng)
    return x, weight, eps


@grader
def rms_norm(fn):
    """Exercise 2: rms_norm(x, weight, eps) over the last dimension, from scratch."""
    weight = torch.tensor([1.5, 0.5, -1.0, 2.0])
    cases = [
        (torch.tensor([[3.0, -3.0, 3.0, -3.0]]), weight, 1e-5),
        (torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]]), weight, 1e-5),  # zeros
        (torch.tensor([[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0]]), weight, 1e-5),  # mean != 0
        (torch.tensor([[0.5, -0.5, 1.5, 0.0]]) * 1e-3, weight, 1e-5),
        (torch.tensor([[1.0, 2.0, 3.0, 6.0], [2.0, 0.0, 1.0, 1.0]]), weight, 0.1),
        (torch.arange(24.0).view(2, 3, 4) - 7.0, weight, 1e-5),
        (torch.arange(12.0).view(4, 3).t() - 5.0, torch.ones(4) * 2, 1e-5),  # non-contiguous
    ] + seeded_cases(_rms_case, n=25, seed=600)
    compare_with_reference(fn, _layers.rms_norm, cases, _compare_tensors, name="rms_norm",
                           diagnose=_rms_norm_mistakes)
    forbid_calls(fn, (_btd(), torch.ones(4), 1e-5), dict.fromkeys(  # F.rms_norm, nn.RMSNorm
        (F.rms_norm, torch.rms_norm), "compute the mean of the squares yourself"))
    return "Only the scale is normalised, not the mean: one reduction and no bias."


# --------------------------------------------------------------- exercise 3: a pre-norm block

def _block_parts(d: int, n_head: int, seed: int):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(d, n_head, use_sdpa=False).eval()
    mlp = FeedForward(d, "gelu").eval()
    norm1, norm2 = LayerNorm(d), LayerNorm(d)
    with torch.no_grad():
        for module in (mha, mlp):
            for p in module.parameters():
                p.normal_(0, 0.3)
        for norm in (norm1, norm2):                 # two different norms, not the identity
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)

    def attn(x):
        return mha(x, is_causal=True)

    return attn, mlp, norm1, norm2


def reference_block(x, attn, mlp, norm1, norm2):
    """x + attn(norm1(x)), then + mlp(norm2(...)): the library Block's forward."""
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def _block_mistakes(got, expected, x, attn, mlp, norm1, norm2):
    a = attn(norm1(x))
    h = x + a
    candidates = {
        "the residual around attention is missing: x = x + attn(norm1(x))":
            a + mlp(norm2(a)),
        "the residual around the feed-forward is missing: x = x + mlp(norm2(x))":
            mlp(norm2(h)),
        "both residual connections are missing": mlp(norm2(a)),
        "the norms are missing: each sublayer reads norm(x), not x":
            x + attn(x) + mlp(x + attn(x)),
        "the feed-forward reads norm2 of the block's input x instead of the output of the "
        "attention step (it must see what attention added)": h + mlp(norm2(x)),
        "the residual adds the normalised x, norm1(x) + attn(norm1(x)); add the raw x":
            norm1(x) + a + mlp(norm2(norm1(x) + a)),
        "norm1 and norm2 are swapped": x + attn(norm2(x)) + mlp(norm1(x + attn(norm2(x)))),
        "the same norm is used twice; the feed-forward has its own, norm2":
            h + mlp(norm1(h)),
        "the feed-forward comes before attention; attention (tokens talk) goes first":
            (x + mlp(norm2(x))) + attn(norm1(x + mlp(norm2(x)))),
    }
    post = norm1(x + attn(x))
    candidates["this is post-norm, norm(x + sublayer(x)); the block is pre-norm: "
               "x + sublayer(norm(x))"] = norm2(post + mlp(post))
    for mistake, candidate in candidates.items():
        if _matches(got, candidate) and not _matches(expected, candidate):
            return mistake
    return None


@grader
def pre_norm_block(fn):
    """Exercise 3: a pre-norm transformer block from its parts."""
    shapes = [(1, 1, 8, 2), (2, 5, 8, 2), (1, 7, 12, 3), (3, 4, 16, 4), (2, 6, 32, 4)]

    def make(rng):
        B, T = int(rng.integers(1, 4)), int(rng.integers(1, 9))
        d, h = [(8, 2), (16, 4), (24, 3), (32, 8)][int(rng.integers(0, 4))]
        return _block_case(B, T, d, h, seed=int(rng.integers(0, 10_000)))

    cases = [_block_case(*s, seed=i) for i, s in enumerate(shapes)] + seeded_cases(make, 12, 700)
    with torch.no_grad():
        compare_with_reference(fn, reference_block, cases, _compare_tensors, name="block",
                               diagnose=_block_mistakes)
    return "Tokens talk (attention), then think (feed-forward), each in norm + residual."


def _block_case(B, T, d, h, seed):
    x = torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed)) * 2
    return (x, *_block_parts(d, h, seed))


# ------------------------------------------------------------- exercise 4: count the parameters

@grader
def count_gpt_params(fn):
    """Exercise 4: parameters of a GPT-2-style model from vocab_size, block_size, n_layer, n_embd."""
    cases = [(50257, 1024, 12, 768), (65, 64, 4, 64), (100, 8, 1, 4), (50257, 1024, 24, 1024),
             (50257, 1024, 48, 1600), (1000, 256, 6, 384), (2, 1, 1, 2)]
    rng = np.random.default_rng(800)
    cases += [(int(rng.integers(2, 60_000)), int(rng.integers(1, 4096)), int(rng.integers(1, 50)),
               int(rng.integers(1, 200)) * 4) for _ in range(15)]
    for vocab, block, n_layer, d in cases:
        what = f"count_gpt_params(vocab_size={vocab}, block_size={block}, n_layer={n_layer}, " \
               f"n_embd={d})"
        got = attempt(fn, vocab, block, n_layer, d)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)) and not (
                isinstance(got, float) and got.is_integer()):
            raise Hint(f"{what}: return a whole number (int), got {got!r}")
        cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=1, n_embd=d)
        expected = parameter_breakdown(cfg)["total"]
        if int(got) != expected:
            raise Hint(f"{what}: got {int(got):,}, expected {expected:,} "
                       f"({_count_mistake(int(got), expected, vocab, block, n_layer, d)})")
    return ("GPT-2 small: 124,439,808. Most of it sits in the blocks' feed-forward layers and "
            "the token embedding.")


def _count_mistake(got: int, expected: int, vocab: int, block: int, L: int, d: int) -> str:
    diff = expected - got
    named = {
        vocab * d: "the output layer is tied to the token embedding: do not count it twice"
        if diff < 0 else "the token embedding (vocab_size × n_embd) is missing",
        block * d: "the position embedding (block_size × n_embd) is missing",
        L * 4 * d + 2 * d: "the LayerNorms (a gain and a bias each: 2 per block plus the "
                           "final one) are missing",
        L * 4 * d: "the blocks' LayerNorms are missing (2 per block, gain + bias each)",
        2 * d: "the final LayerNorm (gain + bias) is missing",
        L * (3 * d + d + 4 * d + d): "the biases of the linear layers are missing",
        L * 4 * d * d: "the feed-forward is 4 × n_embd wide: two matrices of n_embd × 4·n_embd",
        L * (d * d + d): "the attention output projection W_O (plus bias) is missing",
    }
    for amount, hint in named.items():
        if abs(diff) == amount and amount:
            return hint
    if diff == _per_layer(d):
        return "one block too few: there are n_layer blocks"
    if diff == -_per_layer(d):
        return "one block too many: there are n_layer blocks"
    hint = "too many" if got > expected else "too few"
    return hint + ("; count each part: embeddings, per block (2 LayerNorms, attention qkv + W_O, "
                   "feed-forward up + down, all with biases), final norm")


def _per_layer(d: int) -> int:
    return 12 * d * d + 13 * d
