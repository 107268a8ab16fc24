"""Attention without the T×T matrix (utils.tiled_attention, utils.ring_attention) gives the same
numbers as attention with it: forward, gradients, the ring and the sliding window."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.attention import scaled_dot_product_attention
from utils.masks import sliding_window_mask
from utils.ring_attention import chunk_bounds, format_ring_trace, ring_attention, sliding_window_attention
from utils.tiled_attention import (
    flash_attention,
    naive_attention,
    online_softmax_merge,
    tiled_attention,
    tiled_attention_lse,
)

# (B, h, T, d): T=1, T not a multiple of the block, T shorter than one block, several B/h
SHAPES = [(1, 1, 1, 8), (2, 3, 37, 16), (1, 4, 64, 8), (3, 1, 70, 4), (2, 2, 5, 32)]


def qkv(B, h, T, d, S=None, d_v=None, seed=0, dtype=torch.float32, scale=1.0, grad=False):
    g = torch.Generator().manual_seed(seed)
    S, d_v = S or T, d_v or d
    tensors = [torch.randn(B, h, T, d, generator=g, dtype=dtype) * scale,
               torch.randn(B, h, S, d, generator=g, dtype=dtype) * scale,
               torch.randn(B, h, S, d_v, generator=g, dtype=dtype)]
    return [t.requires_grad_(grad) for t in tensors]


def part_of(scores, v, cols):
    """(m, l, o) of a row block over the keys `cols`, straight from the definition."""
    s = scores[..., cols]
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    return m, p.sum(-1, keepdim=True), p @ v[..., cols, :]


# ---- the online softmax merge ------------------------------------------------------------------

def test_merge_of_two_blocks_is_the_softmax_of_the_whole_row():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 6, 10, generator=g) * torch.tensor([0.1, 5.0, 30.0])[:, None, None]
    v = torch.randn(3, 10, 4, generator=g)
    m, l_sum, o = online_softmax_merge(*part_of(scores, v, [0, 1, 2]), *part_of(scores, v, range(3, 10)))
    assert torch.allclose(o / l_sum, torch.softmax(scores, -1) @ v, atol=1e-5)
    assert torch.equal(m, scores.amax(-1, keepdim=True))
    # the merge does not care which part comes first
    _, l2, o2 = online_softmax_merge(*part_of(scores, v, range(3, 10)), *part_of(scores, v, [0, 1, 2]))
    assert torch.allclose(o2 / l2, o / l_sum, atol=1e-6)


def test_merge_with_an_empty_part_keeps_the_other_and_two_empty_parts_stay_empty():
    scores, v = torch.tensor([[2.0, -1.0, 0.5]]), torch.randn(3, 2)
    full = part_of(scores, v, [0, 1, 2])
    empty = (torch.tensor([[-math.inf]]), torch.zeros(1, 1), torch.zeros(1, 2))
    for merged in (online_softmax_merge(*empty, *full), online_softmax_merge(*full, *empty)):
        for got, want in zip(merged, full, strict=True):
            assert torch.equal(got, want)
    m, l_sum, o = online_softmax_merge(*empty, *empty)
    assert torch.isneginf(m).all() and not torch.isnan(l_sum).any() and not torch.isnan(o).any()
    assert (l_sum == 0).all() and (o == 0).all()


def test_merge_survives_scores_that_would_overflow_exp():
    scores, v = torch.tensor([[1000.0, 990.0, 1001.0]]), torch.randn(3, 2)
    _, l_sum, o = online_softmax_merge(*part_of(scores, v, [0]), *part_of(scores, v, [1, 2]))
    assert torch.allclose(o / l_sum, torch.softmax(scores, -1) @ v, atol=1e-5)


# ---- tiled forward ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_size", [3, 16, 128])
def test_tiled_equals_naive(shape, causal, block_size):
    q, k, v = qkv(*shape, scale=2.0)
    want = naive_attention(q, k, v, causal)
    assert torch.allclose(tiled_attention(q, k, v, causal, block_size), want, atol=1e-5)
    # the library's chapter-03 attention and PyTorch's fused kernel agree with the reference
    assert torch.allclose(scaled_dot_product_attention(q, k, v, is_causal=causal)[0], want, atol=1e-5)
    assert torch.allclose(F.scaled_dot_product_attention(q, k, v, is_causal=causal), want, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_with_more_keys_than_queries_and_another_value_size(causal):
    # a KV-cache shape: 7 new queries against 50 keys, d_v != d_k; causal aligns bottom-right
    q, k, v = qkv(2, 2, 7, 8, S=50, d_v=5)
    want = scaled_dot_product_attention(q, k, v, is_causal=causal)[0]
    assert torch.allclose(naive_attention(q, k, v, causal), want, atol=1e-5)
    assert torch.allclose(tiled_attention(q, k, v, causal, block_size=16), want, atol=1e-5)


def test_logsumexp_is_that_of_the_scaled_scores():
    q, k, v = qkv(2, 2, 30, 8)
    _, lse = tiled_attention_lse(q, k, v, causal=True, block_size=8)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(~torch.ones(30, 30, dtype=torch.bool).tril(), -math.inf)
    assert lse.shape == (2, 2, 30)
    assert torch.allclose(lse, torch.logsumexp(scores, -1), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 40), block_size=st.integers(1, 50), causal=st.booleans(),
       seed=st.integers(0, 1000))
def test_tiled_equals_naive_for_any_length_and_block(T, block_size, causal, seed):
    q, k, v = qkv(1, 2, T, 4, seed=seed, scale=3.0)
    assert torch.allclose(tiled_attention(q, k, v, causal, block_size),
                          naive_attention(q, k, v, causal), atol=1e-5)


# ---- the backward pass --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_flash_gradients_equal_naive_gradients(shape, causal):
    q, k, v = qkv(*shape, grad=True, scale=2.0)
    g = torch.randn(*shape[:3], shape[3], generator=torch.Generator().manual_seed(9))
    out = flash_attention(q, k, v, causal, block_size=16)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    want_out = naive_attention(q, k, v, causal)
    want = torch.autograd.grad((want_out * g).sum(), (q, k, v))
    assert torch.allclose(out, want_out, atol=1e-5)
    for name, got, expected in zip("qkv", grads, want, strict=True):
        assert torch.allclose(got, expected, atol=1e-4), (name, (got - expected).abs().max())


@pytest.mark.parametrize("causal", [False, True])
def test_flash_passes_gradcheck_in_float64(causal):
    q, k, v = qkv(1, 1, 5, 3, S=7, d_v=2, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(a, b, c, causal, block_size=2),
                                     (q, k, v))


def saved_tensor_sizes(fn, *inputs):
    """numel of every tensor autograd saves for the backward pass of fn(*inputs).sum()."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs).sum()
    return sizes


def test_flash_saves_nothing_of_size_t_by_t_but_naive_does():
    B, h, T, d = 1, 2, 256, 8
    q, k, v = qkv(B, h, T, d, grad=True)
    t_by_t = B * h * T * T
    flash = saved_tensor_sizes(lambda a, b, c: flash_attention(a, b, c, True, 32), q, k, v)
    naive = saved_tensor_sizes(lambda a, b, c: naive_attention(a, b, c, True), q, k, v)
    assert max(naive) >= t_by_t                         # the test can see a T×T tensor ...
    assert max(flash) <= B * h * T * d                  # ... and flash saves none
    assert sum(flash) <= 4 * B * h * T * d + B * h * T  # q, k, v, out and the logsumexp


# ---- ring attention -----------------------------------------------------------------------------

def test_chunk_bounds_cover_every_position_once_with_sizes_differing_by_at_most_one():
    for T in (1, 7, 10, 33):
        for n in range(1, T + 1):
            bounds = chunk_bounds(T, n)
            assert len(bounds) == n and bounds[0][0] == 0 and bounds[-1][1] == T
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_ring_equals_full_attention(shape, causal):
    q, k, v = qkv(*shape, scale=2.0)
    want = naive_attention(q, k, v, causal)
    T = shape[2]
    for n_devices in sorted({1, min(T, 2), min(T, 3), min(T, 13)}):   # 13 devices: uneven chunks
        got = ring_attention(q, k, v, n_devices, causal)
        assert torch.allclose(got, want, atol=1e-5), (n_devices, (got - want).abs().max())


@pytest.mark.parametrize("causal", [False, True])
def test_ring_trace_every_device_meets_every_chunk_once(causal):
    n = 4
    trace = []
    ring_attention(*qkv(1, 1, 10, 4), n_devices=n, causal=causal, trace=trace)
    assert len(trace) == n * n
    for entry in trace:
        assert entry.chunk == (entry.device - entry.step) % n      # passed on to the next device
    for device in range(n):
        assert sorted(e.chunk for e in trace if e.device == device) == list(range(n))
    skipped = {(e.device, e.chunk) for e in trace if not e.attended}
    assert skipped == ({(d, c) for d in range(n) for c in range(n) if c > d} if causal else set())
    table = format_ring_trace(trace)
    assert table.splitlines()[0].startswith("step | device 0")
    assert len(table.splitlines()) == n + 1 and ("(skip)" in table) == causal


# ---- sliding-window attention -------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T,window,block_size", [(1, 1, 4), (37, 1, 8), (37, 5, 8), (64, 16, 16),
                                                 (50, 7, 128), (20, 100, 8)])
def test_sliding_window_equals_attention_with_the_band_mask(causal, T, window, block_size):
    q, k, v = qkv(2, 2, T, 8, scale=2.0)
    band = sliding_window_mask(T, window, causal=causal)
    want = scaled_dot_product_attention(q, k, v, band)[0]
    got = sliding_window_attention(q, k, v, window, block_size=block_size, causal=causal)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_sliding_window_with_more_keys_than_queries():
    q, k, v = qkv(1, 2, 9, 8, S=40)
    want = scaled_dot_product_attention(q, k, v, sliding_window_mask(9, 6, S=40))[0]
    assert torch.allclose(sliding_window_attention(q, k, v, 6, block_size=4), want, atol=1e-5)


def test_a_window_as_long_as_the_sequence_is_causal_attention():
    q, k, v = qkv(2, 2, 30, 8)
    assert torch.allclose(sliding_window_attention(q, k, v, 30, block_size=8),
                          naive_attention(q, k, v, causal=True), atol=1e-5)


def test_sliding_window_cannot_recall_what_lies_beyond_the_window():
    T, window = 40, 8
    q, k, v = qkv(1, 1, T, 8)
    base = sliding_window_attention(q, k, v, window)[..., -1, :]
    for pos, visible in ((T - window, True), (T - window - 1, False), (0, False)):
        k2, v2 = k.clone(), v.clone()
        k2[..., pos, :] += 5.0                                  # plant something at `pos`
        v2[..., pos, :] += 5.0
        changed = not torch.equal(sliding_window_attention(q, k2, v2, window)[..., -1, :], base)
        assert changed == visible, pos
    # full causal attention does see position 0 from the last query
    k2 = k.clone()
    k2[..., 0, :] += 5.0
    last = naive_attention(q, k, v, True)[..., -1, :]
    assert not torch.equal(naive_attention(q, k2, v, True)[..., -1, :], last)


# ---- errors that name the argument --------------------------------------------------------------

@pytest.mark.parametrize("call,word", [
    (lambda q, k, v: tiled_attention(q, k, v, block_size=0), "block_size"),
    (lambda q, k, v: flash_attention(q, k, v, block_size=-3), "block_size"),
    (lambda q, k, v: sliding_window_attention(q, k, v, window=0), "window"),
    (lambda q, k, v: sliding_window_attention(q, k, v, window=4, block_size=0), "block_size"),
    (lambda q, k, v: ring_attention(q, k, v, n_devices=0), "n_devices"),
    (lambda q, k, v: ring_attention(q, k, v, n_devices=11), "n_devices"),
    (lambda q, k, v: ring_attention(q, k[..., :5, :], v[..., :5, :], n_devices=2), "same length"),
    (lambda q, k, v: tiled_attention(q, k[..., :4], v), "feature size"),
    (lambda q, k, v: naive_attention(q, k, v[..., :7, :]), "same number of positions"),
    (lambda q, k, v: tiled_attention(q, k[:, :1], v[:, :1]), "leading"),
    (lambda q, k, v: naive_attention(q[0, 0, 0], k, v), "q should be"),
    (lambda q, k, v: tiled_attention(q, k[..., :5, :], v[..., :5, :], causal=True), "at least as many keys"),
])
def test_bad_arguments_raise_a_value_error_naming_them(call, word):
    q, k, v = qkv(2, 2, 10, 8)
    with pytest.raises(ValueError, match=word):
        call(q, k, v)

