"""utils/attention.py against PyTorch's own kernel, plus invariants over random shapes."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from utils.attention import (
    AttentionHead,
    MultiHeadAttention,
    attention_cost,
    causal_mask,
    merge_heads,
    repeat_kv,
    scaled_dot_product_attention,
    split_heads,
)

ATOL = 1e-5


def qkv(*lead, T=5, S=None, d=8, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    return (torch.randn(*lead, T, d, generator=g), torch.randn(*lead, S, d, generator=g),
            torch.randn(*lead, S, dv or d, generator=g))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_sdpa(causal):
    q, k, v = qkv(2, 3, T=7)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert w.shape == (2, 3, 7, 7)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masks_match_torch_sdpa(kind):
    q, k, v = qkv(2, T=6)
    bool_mask = causal_mask(6)
    mask = bool_mask if kind == "bool" else torch.zeros(6, 6).masked_fill(~bool_mask, -math.inf)
    out, w = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               atol=ATOL, rtol=0)
    assert (w.masked_select(~bool_mask) == 0).all()


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = qkv(T=3)
    q.requires_grad_(True)
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (w[1] == 0).all() and (out[1] == 0).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               atol=ATOL, rtol=0)


def test_causal_mask_bottom_right_alignment():
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), T=st.integers(1, 9),
       S=st.integers(1, 9), d=st.integers(1, 16), dv=st.integers(1, 6),
       seed=st.integers(0, 1000), scale=st.floats(0.1, 30.0))
def test_random_shapes(lead, T, S, d, dv, seed, scale):
    q, k, v = qkv(*lead, T=T, S=S, d=d, dv=dv, seed=seed)
    q = q * scale  # large scores must not break the softmax
    out, w = scaled_dot_product_attention(q, k, v)
    assert out.shape == (*lead, T, dv) and w.shape == (*lead, T, S)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(*lead, T), atol=ATOL, rtol=0)
    assert (w >= 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-4, rtol=1e-4)


@given(T=st.integers(1, 8), seed=st.integers(0, 1000), p=st.floats(0.0, 1.0))
def test_random_bool_masks_rows_sum_to_one_or_zero(T, seed, p):
    q, k, v = qkv(T=T, seed=seed)
    mask = torch.rand(T, T, generator=torch.Generator().manual_seed(seed)) < p
    out, w = scaled_dot_product_attention(q, k, v, mask)
    sums = w.sum(-1)
    expected = mask.any(-1).float()
    torch.testing.assert_close(sums, expected, atol=ATOL, rtol=0)
    assert torch.isfinite(out).all()


def test_attention_head_is_sdpa_of_projections():
    torch.manual_seed(0)
    head, x = AttentionHead(8, 4), torch.randn(2, 5, 8)
    out, w = head(x, is_causal=True)
    ref = F.scaled_dot_product_attention(head.W_Q(x), head.W_K(x), head.W_V(x), is_causal=True)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_split_merge_round_trip_and_layout():
    x = torch.randn(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3)
    torch.testing.assert_close(heads[:, 1], x[..., 3:6])
    assert torch.equal(merge_heads(heads), x)


def test_repeat_kv_groups_in_order():
    x = torch.arange(2.).view(1, 2, 1, 1)
    assert repeat_kv(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_mha_sdpa_and_scratch_agree(n_kv, causal, bias):
    torch.manual_seed(0)
    mha, x = MultiHeadAttention(32, 4, n_kv_heads=n_kv, bias=bias), torch.randn(2, 7, 32)
    scratch = mha(x, is_causal=causal)
    mha.use_sdpa = True
    torch.testing.assert_close(mha(x, is_causal=causal), scratch, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mha_mask_plus_causal_paths_agree(kind):
    torch.manual_seed(1)
    mha, x = MultiHeadAttention(16, 2), torch.randn(2, 5, 16)
    pad = torch.tensor([True, True, True, True, False]).view(1, 1, 1, 5)  # last key is padding
    mask = pad if kind == "bool" else torch.zeros(1, 1, 1, 5).masked_fill(~pad, -math.inf)
    scratch, w = mha(x, mask=mask, is_causal=True, need_weights=True)
    assert w.shape == (2, 2, 5, 5) and (w[..., 4] == 0).all()
    mha.use_sdpa = True
    torch.testing.assert_close(mha(x, mask=mask, is_causal=True), scratch, atol=ATOL, rtol=0)


def test_mha_need_weights_with_sdpa_returns_weights():
    mha = MultiHeadAttention(16, 4, use_sdpa=True)
    out, w = mha(torch.randn(1, 3, 16), need_weights=True)
    assert out.shape == (1, 3, 16) and w.shape == (1, 4, 3, 3)


def test_mha_cross_attention_shapes_and_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    out, w = mha(x, context=ctx, need_weights=True)
    assert out.shape == (2, 3, 16) and w.shape == (2, 4, 3, 6)
    mha.use_sdpa = True
    torch.testing.assert_close(mha(x, context=ctx), out, atol=ATOL, rtol=0)


def test_mha_matches_torch_multihead_attention():
    """Same weights in nn.MultiheadAttention give the same output (no GQA)."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4)
    theirs = nn_mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        nn_mha.in_proj_weight.copy_(ours.qkv.weight)
        nn_mha.in_proj_bias.copy_(ours.qkv.bias)
        nn_mha.out_proj.weight.copy_(ours.proj.weight)
        nn_mha.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, 5, 16)
    ref, _ = theirs(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), ref, atol=ATOL, rtol=0)


def test_from_heads_equals_concat_of_heads():
    torch.manual_seed(0)
    heads, proj = [AttentionHead(12, 4) for _ in range(3)], torch.nn.Linear(12, 12, bias=False)
    x = torch.randn(2, 5, 12)
    mha = MultiHeadAttention.from_heads(heads, proj)
    ref = proj(torch.cat([h(x, is_causal=True)[0] for h in heads], -1))
    torch.testing.assert_close(mha(x, is_causal=True), ref, atol=ATOL, rtol=0)


def test_mha_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="n_kv_heads"):
        MultiHeadAttention(12, 4, n_kv_heads=3)


def test_attention_cost_counts_match_module():
    for h, kv, bias in [(4, 4, True), (8, 2, False), (8, 1, True)]:
        mha = MultiHeadAttention(64, h, n_kv_heads=kv, bias=bias)
        assert attention_cost(64, h, 10, kv, bias)["params"] == sum(
            p.numel() for p in mha.parameters())
    assert attention_cost(64, 8, 10, 2)["kv_cache_floats"] * 4 == attention_cost(
        64, 8, 10)["kv_cache_floats"]


# --------------------------------------------------------- RoPE inside attention (chapter 05)


def test_mha_with_rope_rotates_queries_and_keys_per_head():
    from utils.embeddings import RotaryEmbedding, apply_rope

    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=4, max_len=32)
    mha = MultiHeadAttention(16, n_heads=4, n_kv_heads=2, bias=False, rope=rope).eval()
    x = torch.randn(2, 6, 16)
    q, k, v = mha.qkv(x).split([16, 8, 8], dim=-1)
    q, k, v = split_heads(q, 4), split_heads(k, 2), split_heads(v, 2)
    positions = torch.arange(3, 9)
    q, k = apply_rope(q, positions), apply_rope(k, positions)
    y, _ = scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), is_causal=True)
    expected = mha.proj(merge_heads(y))
    for use_sdpa in (False, True):
        mha.use_sdpa = use_sdpa
        torch.testing.assert_close(mha(x, is_causal=True, offset=3), expected, atol=ATOL, rtol=0)
    assert "rope" not in "".join(mha.state_dict())       # the tables are not saved


def test_mha_rope_scores_depend_on_relative_position_only():
    from utils.embeddings import RotaryEmbedding

    mha = MultiHeadAttention(16, n_heads=2, rope=RotaryEmbedding(8, max_len=8)).eval()
    x = torch.randn(1, 5, 16)
    _, w0 = mha(x, is_causal=True, need_weights=True)
    _, w7 = mha(x, is_causal=True, need_weights=True, offset=7)   # beyond max_len: computed
    torch.testing.assert_close(w0, w7, atol=ATOL, rtol=0)
    plain = MultiHeadAttention(16, n_heads=2).eval()
    plain.load_state_dict(mha.state_dict())
    assert not torch.allclose(plain(x, is_causal=True), mha(x, is_causal=True))
