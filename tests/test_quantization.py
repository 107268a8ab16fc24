"""utils/quantization.py: int8 per-channel and NF4 blockwise quantisation, and whole models."""

import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from utils.model import GPT, GPTConfig
from utils.quantization import (
    NF4_LEVELS,
    Int8Linear,
    NF4Linear,
    dequantize_int8,
    dequantize_nf4,
    model_size_bytes,
    nf4_max_error_fraction,
    quantize_int8,
    quantize_model_int8,
    quantize_model_nf4,
    quantize_nf4,
)


def rows_of_different_scale(out=16, inp=24, seed=0):
    """A weight whose rows differ by orders of magnitude, plus an outlier and a zero row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.logspace(-3, 1, out)[:, None]
    w[3, 5] = 50.0          # one outlier: must only coarsen its own row
    w[7] = 0.0              # an all-zero row: no division by zero
    return w


@pytest.fixture(scope="module")
def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


# ------------------------------------------------------------------------------------ int8

def test_int8_round_trip_within_half_a_step_per_row():
    w = rows_of_different_scale()
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (w.shape[0], 1)
    error = (w - dequantize_int8(q, scale)).abs()
    assert (error <= scale / 2 * (1 + 1e-5)).all()
    # per channel: the small rows are reproduced to a small absolute error, which one global
    # scale (set by the outlier, 50 / 127 = 0.39) could not do
    assert error[0].max() < 1e-4
    assert torch.isfinite(scale).all() and (dequantize_int8(q, scale)[7] == 0).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.floats(1e-6, 1e4), st.integers(0, 10_000))
def test_int8_bound_holds_for_random_matrices(out, inp, magnitude, seed):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * magnitude
    q, scale = quantize_int8(w)
    assert (q.abs() <= 127).all()
    assert ((w - dequantize_int8(q, scale)).abs() <= scale / 2 * (1 + 1e-5) + 1e-12).all()
    # the largest entry of each row lands exactly on +-127
    assert (q.abs().amax(dim=1) == 127).all()


def test_int8_rejects_bad_weights():
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(torch.randn(4))
    with pytest.raises(ValueError, match="inf or nan"):
        quantize_int8(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="floating"):
        quantize_int8(torch.ones(2, 2, dtype=torch.long))
    q, scale = quantize_int8(torch.randn(3, 4))
    with pytest.raises(ValueError, match="scale must have shape"):
        dequantize_int8(q, scale.flatten())


def test_int8_linear_matches_dequantised_float_layer():
    torch.manual_seed(1)
    linear = nn.Linear(24, 16)
    with torch.no_grad():
        linear.weight.copy_(rows_of_different_scale())
    layer = Int8Linear.from_linear(linear)
    assert (layer.in_features, layer.out_features) == (24, 16)
    assert not list(layer.parameters())
    assert {name for name, _ in layer.named_buffers()} == {"weight_q", "scale", "bias"}
    for shape in [(2, 5, 24), (4, 20, 24)]:      # few tokens (scale the output), many (weight)
        x = torch.randn(shape)
        expected = x @ dequantize_int8(layer.weight_q, layer.scale).T + linear.bias
        torch.testing.assert_close(layer(x), expected.detach(), rtol=1e-5, atol=1e-5)
    assert Int8Linear.from_linear(nn.Linear(4, 3, bias=False)).bias is None


def test_quantize_model_int8_copies_keeps_tie_and_predicts_the_same(tiny_gpt):
    before = {k: v.clone() for k, v in tiny_gpt.state_dict().items()}
    q = quantize_model_int8(tiny_gpt)
    for k, v in tiny_gpt.state_dict().items():          # the original is untouched
        assert torch.equal(v, before[k])
    assert isinstance(tiny_gpt.blocks[0].attn.qkv, nn.Linear)
    linears = [m for m in q.modules() if type(m) is nn.Linear]
    assert linears == [q.lm_head]                       # only the tied output layer stays
    assert q.lm_head.weight is q.embed.token.weight
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 4 * 2
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = tiny_gpt(idx)[0], q(idx)[0]
    assert (ref - got).abs().max() < 0.05 * ref.abs().max()
    skipped = quantize_model_int8(tiny_gpt, skip=("qkv",))
    assert all(type(b.attn.qkv) is nn.Linear and isinstance(b.mlp.up, Int8Linear)
               for b in skipped.blocks)


def test_model_size_bytes_counts_tied_weights_once(tiny_gpt):
    n_params = sum(p.numel() for p in tiny_gpt.parameters())    # parameters() dedups the tie
    buffers = sum(b.numel() * b.element_size() for b in tiny_gpt.buffers())
    assert model_size_bytes(tiny_gpt) == 4 * n_params + buffers
    assert model_size_bytes(nn.Linear(10, 10)) == 440
    # an int8 layer: 1 byte a weight + a float32 scale and bias per output row
    assert model_size_bytes(Int8Linear.from_linear(nn.Linear(10, 6))) == 60 + 6 * 4 + 6 * 4
    q = quantize_model_int8(tiny_gpt)
    assert model_size_bytes(q) < 0.5 * model_size_bytes(tiny_gpt)


# ------------------------------------------------------------------------------------- NF4

def test_nf4_levels_are_normal_quantiles_in_minus_one_to_one():
    assert NF4_LEVELS.shape == (16,) and NF4_LEVELS.dtype == torch.float32
    assert (NF4_LEVELS[1:] > NF4_LEVELS[:-1]).all()
    assert NF4_LEVELS[0] == -1 and NF4_LEVELS[-1] == 1 and (NF4_LEVELS == 0).sum() == 1
    assert (NF4_LEVELS > 0).sum() == 8 and (NF4_LEVELS < 0).sum() == 7
    # denser near zero, where most weights are: the gaps widen towards +-1
    gaps = (NF4_LEVELS[1:] - NF4_LEVELS[:-1])[8:]
    assert (gaps[1:] > gaps[:-1]).all()
    # the value published with QLoRA for the second-largest level, to 4 decimals
    assert abs(NF4_LEVELS[-2].item() - 0.7230) < 1e-4
    # each positive level is a normal quantile scaled by the largest one
    top = statistics.NormalDist().inv_cdf(((1 - 1 / 32) + (1 - 1 / 30)) / 2)
    cdf = statistics.NormalDist().cdf
    probs = [cdf(v * top) for v in NF4_LEVELS[8:].tolist()]
    steps = [b - a for a, b in zip([0.5] + probs[:-1], probs, strict=True)]
    assert max(steps) - min(steps) < 1e-6                   # evenly spaced probabilities


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.sampled_from([2, 8, 64]),
       st.floats(1e-4, 1e3), st.integers(0, 10_000))
def test_nf4_round_trip_within_half_the_widest_gap(out, inp, block_size, magnitude, seed):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * magnitude
    nf4 = quantize_nf4(w, block_size)
    n_blocks = -(-w.numel() // block_size)
    assert nf4.codes.dtype == torch.uint8 and nf4.codes.numel() == n_blocks * block_size // 2
    assert nf4.absmax.shape == (n_blocks,) and nf4.shape == (out, inp)
    deq = dequantize_nf4(nf4)
    assert deq.shape == w.shape and deq.dtype == torch.float32
    flat_absmax = nf4.absmax.repeat_interleave(block_size)[: w.numel()].view(w.shape)
    bound = flat_absmax * nf4_max_error_fraction()
    assert ((w - deq).abs() <= bound * (1 + 1e-5)).all()


def test_nf4_stores_block_extremes_and_zeros_exactly():
    w = rows_of_different_scale(8, 16)                      # 128 numbers, blocks of 64
    deq = dequantize_nf4(quantize_nf4(w, 64))
    for block, got in zip(w.view(-1, 64), deq.view(-1, 64), strict=True):
        i = block.abs().argmax()
        assert torch.isclose(got[i], block[i])                 # level +-1 times absmax
    assert (deq[7] == 0).all()                                 # the zero row


def test_nf4_packs_two_codes_per_byte_high_nibble_first():
    w = torch.tensor([[-1.0, 1.0, 0.0, 0.7230]])
    nf4 = quantize_nf4(w, block_size=4)
    assert nf4.codes.tolist() == [0 << 4 | 15, 7 << 4 | 14]


def test_nf4_rejects_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        quantize_nf4(torch.randn(4, 4), block_size=3)
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.randn(0, 4))
    with pytest.raises(ValueError, match="inf or nan"):
        quantize_nf4(torch.tensor([float("inf"), 1.0]))


def test_nf4_linear_is_frozen_and_uses_its_dequantised_weight():
    torch.manual_seed(2)
    linear = nn.Linear(40, 24)
    layer = NF4Linear.from_linear(linear, block_size=32)
    assert (layer.in_features, layer.out_features) == (40, 24)
    assert not any(p.requires_grad for p in layer.parameters())
    assert not list(layer.parameters())
    assert {n for n, _ in layer.named_buffers()} >= {"codes", "absmax", "bias"}
    w = layer.dequantized_weight()
    assert w.shape == (24, 40)
    x = torch.randn(3, 40, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, x @ w.T + linear.bias.detach())
    y.sum().backward()                              # gradients still flow to the input (LoRA)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(w, linear.weight, atol=linear.weight.abs().max().item() * 0.16)


def test_quantize_model_nf4_targets_and_size(tiny_gpt):
    every = quantize_model_nf4(tiny_gpt)
    assert sum(isinstance(m, NF4Linear) for m in every.modules()) == 8
    assert every.lm_head.weight is every.embed.token.weight
    only_mlp = quantize_model_nf4(tiny_gpt, targets=("up", "down"), block_size=32)
    for block in only_mlp.blocks:
        assert isinstance(block.mlp.up, NF4Linear) and isinstance(block.mlp.down, NF4Linear)
        assert type(block.attn.qkv) is nn.Linear
    assert isinstance(tiny_gpt.blocks[0].mlp.up, nn.Linear)      # the original is untouched
    assert model_size_bytes(every) < model_size_bytes(quantize_model_int8(tiny_gpt))
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = tiny_gpt(idx)[0], every(idx)[0]
    assert (ref - got).abs().max() < 0.2 * ref.abs().max()
