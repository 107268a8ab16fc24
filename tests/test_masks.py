"""Mask builders (utils/masks.py): each mask says what it claims, masks compose, padding never
changes the outputs of real tokens, and a fully masked row gives zeros, never NaN."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from utils.attention import MultiHeadAttention, scaled_dot_product_attention
from utils.masks import (
    additive_mask,
    apply_mask,
    causal_mask,
    combine_masks,
    for_heads,
    masked_softmax,
    pad_sequences,
    padding_mask,
    sliding_window_mask,
)

# ---- what each builder allows ----------------------------------------------------------------


@given(st.integers(0, 20))
def test_causal_mask_allows_exactly_the_past_and_present(T):
    mask = causal_mask(T)
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    for i in range(T):
        for j in range(T):
            assert bool(mask[i, j]) == (j <= i)


@given(st.lists(st.integers(0, 9), min_size=1, max_size=6), st.integers(0, 4),
       st.sampled_from(["right", "left"]))
def test_padding_mask_marks_real_keys(lengths, extra, side):
    S = max(lengths) + extra
    mask = padding_mask(lengths, S, side=side)
    assert mask.shape == (len(lengths), 1, S) and mask.dtype == torch.bool
    for b, n in enumerate(lengths):
        real = list(range(n)) if side == "right" else list(range(S - n, S))
        assert [s for s in range(S) if mask[b, 0, s]] == real


def test_padding_mask_defaults_and_errors():
    assert padding_mask([2, 3]).shape == (2, 1, 3)
    with pytest.raises(ValueError, match="max_len=2"):
        padding_mask([3], 2)
    with pytest.raises(ValueError, match="side"):
        padding_mask([1], 2, side="middle")
    with pytest.raises(ValueError, match="1-D"):
        padding_mask([[1, 2]], 2)


@given(st.integers(1, 16), st.integers(1, 20))
def test_sliding_window_sees_the_last_window_keys(T, window):
    mask = sliding_window_mask(T, window)
    for i in range(T):
        assert [j for j in range(T) if mask[i, j]] == list(range(max(0, i - window + 1), i + 1))
    if window >= T:
        assert torch.equal(mask, causal_mask(T))
    local = sliding_window_mask(T, window, causal=False)
    assert torch.equal(local, local.T) and torch.equal(local & causal_mask(T), mask)


def test_sliding_window_with_cached_keys_is_aligned_like_causal():
    assert torch.equal(sliding_window_mask(2, 10, S=5), causal_mask(2, 5))
    assert sliding_window_mask(2, 2, S=5).int().tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(3, 0)


# ---- composing masks -------------------------------------------------------------------------


@given(st.integers(1, 8), st.integers(1, 8), st.data())
def test_masks_compose(T, window, data):
    lengths = data.draw(st.lists(st.integers(0, T), min_size=1, max_size=4))
    parts = [causal_mask(T), sliding_window_mask(T, window), padding_mask(lengths, T)]
    combined = combine_masks(*parts)
    assert combined.shape == (len(lengths), T, T)
    expected = parts[0][None] & parts[1][None] & parts[2]
    assert torch.equal(combined, expected)
    # Applying the masks one after another is the same as applying their combination,
    # in any order, and as adding their additive forms.
    scores = torch.randn(len(lengths), T, T)
    one_by_one = scores
    for part in reversed(parts):
        one_by_one = apply_mask(one_by_one, part)
    assert torch.equal(one_by_one, apply_mask(scores, combined))
    summed = scores + sum(additive_mask(part) for part in parts)
    assert torch.equal(summed, apply_mask(scores, combined))


def test_combine_masks_skips_none_and_rejects_numbers():
    assert combine_masks() is None and combine_masks(None, None) is None
    assert torch.equal(combine_masks(None, causal_mask(3)), causal_mask(3))
    with pytest.raises(TypeError, match="mask 1 has dtype torch.int64"):
        combine_masks(causal_mask(2), torch.ones(2, 2, dtype=torch.long))


def test_for_heads_puts_the_batch_in_front_of_the_heads():
    mask = combine_masks(causal_mask(3), padding_mask([3, 1], 3))       # [B=2, T, S]
    scores = torch.zeros(2, 4, 3, 3)                                      # [B, h, T, S]
    masked = apply_mask(scores, for_heads(mask))
    assert torch.isinf(masked[1, :, 1:, 1:]).all() and not torch.isinf(masked[0, :, 2]).any()
    assert for_heads(causal_mask(3)).shape == (3, 3) and for_heads(None) is None


# ---- the softmax: mask before it, and no NaN -------------------------------------------------


def random_mask(shape, generator, p_row_empty=0.3):
    mask = torch.rand(shape, generator=generator) < 0.6
    empty = torch.rand(shape[:-1], generator=generator) < p_row_empty
    return mask & ~empty[..., None]


@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_masked_softmax_matches_attention_and_never_nans(T, S, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, T, S, generator=g) * 10
    mask = random_mask((2, T, S), g)
    weights = masked_softmax(scores, mask)
    assert torch.isfinite(weights).all()
    assert (weights[~mask] == 0).all()
    has_key = mask.any(-1)
    assert torch.allclose(weights.sum(-1), has_key.float(), atol=1e-6)
    # The same weights as the attention of chapter 03 (scores q kᵀ / √d_k, d_k = 4).
    q, k = torch.randn(2, T, 4, generator=g), torch.randn(2, S, 4, generator=g)
    _, attn_weights = scaled_dot_product_attention(q, k, torch.zeros(2, S, 1), mask)
    assert torch.allclose(attn_weights, masked_softmax(q @ k.transpose(-2, -1) / 2, mask),
                          atol=1e-6)


def test_fully_masked_row_has_zero_weight_and_finite_gradient():
    scores = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    weights = masked_softmax(scores, mask)
    assert weights[1].eq(0).all() and torch.isfinite(weights).all()
    (weights * torch.randn(3, 4)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    # Naively, -inf everywhere makes softmax 0/0: this is the NaN the library avoids.
    assert torch.isnan(torch.softmax(apply_mask(scores, mask), -1)[1]).all()


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_multi_head_attention_fully_masked_rows_give_zeros(use_sdpa):
    """The library's path: a left-padded batch under a causal mask has padding queries whose
    every key is masked (padding before them, future after them)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, bias=False, use_sdpa=use_sdpa).eval()
    mask = for_heads(combine_masks(causal_mask(5), padding_mask([5, 2], 5, side="left")))
    x = torch.randn(2, 5, 16, requires_grad=True)
    y = mha(x, mask=mask)
    assert torch.isfinite(y).all()
    assert y[1, :3].abs().max() == 0          # padding queries with nothing to see: zeros
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- padding never changes the real tokens' outputs -----------------------------------------


@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.integers(0, 3),
       st.sampled_from(["right", "left"]), st.booleans(), st.integers(0, 1000))
def test_padding_does_not_change_real_outputs_of_attention(lengths, extra, side, causal, seed):
    """Each sequence alone vs. in a padded batch (garbage in the padding): same outputs at its
    real positions. Attention has no positions of its own, so this holds for both sides."""
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, 2).eval()
    S = max(lengths) + extra
    alone = [torch.randn(1, n, 8) for n in lengths]
    batch = torch.randn(len(lengths), S, 8) * 100                       # padding: anything
    for b, (n, seq) in enumerate(zip(lengths, alone, strict=True)):
        where = slice(0, n) if side == "right" else slice(S - n, S)
        batch[b, where] = seq[0]
    mask = padding_mask(lengths, S, side=side)
    if causal:
        mask = combine_masks(causal_mask(S), mask)
    with torch.no_grad():
        out = mha(batch, mask=for_heads(mask))
        for b, (n, seq) in enumerate(zip(lengths, alone, strict=True)):
            where = slice(0, n) if side == "right" else slice(S - n, S)
            assert torch.allclose(out[b, where], mha(seq, is_causal=causal)[0], atol=1e-5)


def test_pad_sequences_round_trips_with_padding_mask():
    seqs = [[4, 5, 6], [7], []]
    for side in ("right", "left"):
        ids, lengths = pad_sequences(seqs, pad_id=-1, side=side)
        mask = padding_mask(lengths, ids.size(1), side=side)[:, 0]
        assert [ids[b][mask[b]].tolist() for b in range(3)] == seqs
        assert (ids[~mask] == -1).all()
    with pytest.raises(ValueError, match="max_len=2"):
        pad_sequences(seqs, max_len=2)


def test_additive_mask_is_zero_or_minus_infinity():
    add = additive_mask(sliding_window_mask(4, 2))
    assert set(add.unique().tolist()) == {0.0, -math.inf}
    assert torch.equal(add == 0, sliding_window_mask(4, 2))
