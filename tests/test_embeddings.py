"""Tests of utils/embeddings.py: token lookup, sinusoidal table, RoPE, ALiBi, the module."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from utils.embeddings import (
    RotaryEmbedding,
    TokenPositionEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    one_hot_lookup,
    pair_frequencies,
    sinusoidal_positions,
)


def test_one_hot_times_matrix_equals_lookup():
    table = torch.nn.Embedding(11, 5)
    ids = torch.tensor([[3, 0, 10], [7, 7, 1]])
    assert torch.allclose(one_hot_lookup(ids, table.weight), table(ids))


# ---- sinusoidal ----------------------------------------------------------------------------

def test_sinusoidal_shape_and_known_values():
    pe = sinusoidal_positions(10, 8)
    assert pe.shape == (10, 8) and pe.dtype == torch.float32
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 4))
    # position 3, pair 1: frequency 10000^(-2/8) = 0.1
    assert pe[3, 2].item() == pytest.approx(math.sin(3 * 0.1), abs=1e-6)
    assert pe[3, 3].item() == pytest.approx(math.cos(3 * 0.1), abs=1e-6)
    assert pe.abs().max() <= 1.0


def test_sinusoidal_matches_the_paper_formula():
    T, d = 20, 16
    pe = sinusoidal_positions(T, d)
    for p in (0, 7, 19):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 50))
def test_sinusoidal_dot_product_depends_on_offset_only(p1, p2, k):
    pe = sinusoidal_positions(260, 32)
    assert torch.allclose(pe[p1] @ pe[p1 + k], pe[p2] @ pe[p2 + k], atol=1e-4)


@pytest.mark.parametrize("d", [0, 3, -2])
def test_odd_or_empty_dimension_is_refused(d):
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positions(4, d)


def test_frequencies_go_from_one_to_about_one_over_base():
    w = pair_frequencies(64)
    assert w[0] == 1.0 and torch.all(w[1:] < w[:-1]) and w[-1] > 1e-4


# ---- RoPE ----------------------------------------------------------------------------------

@given(st.integers(0, 500), st.integers(0, 500), st.integers(-100, 100), st.integers(0, 10**6))
def test_rope_score_depends_only_on_relative_position(m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)
    shift = max(shift, -min(m, n))  # keep positions >= 0
    score = apply_rope(q, torch.tensor([m])) @ apply_rope(k, torch.tensor([n])).T
    moved = apply_rope(q, torch.tensor([m + shift])) @ apply_rope(k, torch.tensor([n + shift])).T
    assert torch.allclose(score, moved, atol=1e-3)


def test_rope_keeps_norms_and_position_zero_is_identity():
    x = torch.randn(2, 3, 12, 8)
    rotated = apply_rope(x)
    assert rotated.shape == x.shape
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rotated[..., 0, :], x[..., 0, :])


def test_rope_rotates_interleaved_pairs():
    x = torch.zeros(1, 4)
    x[0, 0] = 1.0  # unit vector in pair 0
    out = apply_rope(x, torch.tensor([1]))
    assert torch.allclose(out, torch.tensor([[math.cos(1.0), math.sin(1.0), 0.0, 0.0]]))


def test_rotary_module_matches_function_and_offsets():
    rope = RotaryEmbedding(head_dim=16, max_len=32)
    x = torch.randn(2, 4, 10, 16)
    assert torch.allclose(rope(x), apply_rope(x), atol=1e-5)
    assert torch.allclose(rope(x, offset=5), apply_rope(x, torch.arange(5, 15)), atol=1e-5)
    # beyond the cache it still works
    assert torch.allclose(rope(x, offset=30), apply_rope(x, torch.arange(30, 40)), atol=1e-4)
    assert "cos" not in rope.state_dict()  # derived tables are not saved


def test_apply_rope_checks_positions_shape():
    with pytest.raises(ValueError, match="positions"):
        apply_rope(torch.randn(5, 8), torch.arange(4))


# ---- ALiBi ---------------------------------------------------------------------------------

def test_alibi_slopes_power_of_two():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert torch.allclose(alibi_slopes(16), torch.tensor([2.0 ** (-0.5 * (i + 1))
                                                          for i in range(16)]))
    assert torch.allclose(alibi_slopes(1), torch.tensor([2.0 ** -8]))


@pytest.mark.parametrize("n", [3, 5, 6, 12, 20])
def test_alibi_slopes_other_counts_interpolate(n):
    closest = 2 ** math.floor(math.log2(n))
    base = [2.0 ** (-8 * (i + 1) / closest) for i in range(closest)]
    extra = [2.0 ** (-8 * (i + 1) / (2 * closest)) for i in range(0, 2 * closest, 2)]
    expected = torch.tensor(base + extra[: n - closest])
    slopes = alibi_slopes(n)
    assert slopes.shape == (n,) and torch.allclose(slopes, expected)
    assert len(set(slopes.tolist())) == n and slopes.max() < 1 and slopes.min() >= 2 ** -8


def test_alibi_slopes_for_twelve_heads_by_hand():
    # 8 from n=8 (2^-1..2^-8), then 1st, 3rd, 5th, 7th of n=16 (2^-0.5, 2^-1.5, ...)
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5,
                                                       2.0 ** -3.5]
    assert torch.allclose(alibi_slopes(12), torch.tensor(expected))


def test_alibi_bias_values_and_shape():
    bias = alibi_bias(4, 6)
    slopes = alibi_slopes(4)
    assert bias.shape == (4, 6, 6)
    for h in range(4):
        for i in range(6):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h].item() * (i - j))
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)
    assert torch.equal(bias, bias.transpose(1, 2))  # future keys: same penalty on |i - j|


# ---- the token + position module -----------------------------------------------------------

@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
def test_token_position_embedding_shapes(positions):
    emb = TokenPositionEmbedding(50, 16, max_len=12, positions=positions)
    ids = torch.randint(0, 50, (3, 12))
    out = emb(ids)
    assert out.shape == (3, 12, 16)
    expected = emb.token(ids)
    if positions == "learned":
        expected = expected + emb.position.weight[:12]
    elif positions == "sinusoidal":
        expected = expected + sinusoidal_positions(12, 16)
    assert torch.allclose(out, expected)


def test_parameter_counts():
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(TokenPositionEmbedding(50, 16, 12, "learned")) == 50 * 16 + 12 * 16
    assert n(TokenPositionEmbedding(50, 16, 12, "sinusoidal")) == 50 * 16
    assert n(TokenPositionEmbedding(50, 16, 12, "none")) == 50 * 16


def test_start_offset_uses_later_positions():
    emb = TokenPositionEmbedding(10, 8, max_len=6)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    assert torch.allclose(emb(ids[:, 4:], start=4), emb(ids)[:, 4:])


def test_too_long_input_gives_a_clear_error():
    emb = TokenPositionEmbedding(10, 8, max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        emb(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        emb(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be one of"):
        TokenPositionEmbedding(10, 8, 4, positions="rope")


def test_positions_break_permutation_equivariance():
    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3, 4]])
    perm = torch.tensor([2, 0, 3, 1])
    plain = TokenPositionEmbedding(10, 8, 4, positions="none")
    assert torch.allclose(plain(ids[:, perm]), plain(ids)[:, perm])
    learned = TokenPositionEmbedding(10, 8, 4, positions="learned")
    assert not torch.allclose(learned(ids[:, perm]), learned(ids)[:, perm])


def test_gradients_reach_both_tables():
    emb = TokenPositionEmbedding(10, 8, 4)
    emb(torch.tensor([[1, 2]])).sum().backward()
    assert emb.token.weight.grad[1].abs().sum() > 0 and emb.token.weight.grad[0].abs().sum() == 0
    position_grad = emb.position.weight.grad
    assert position_grad[:2].abs().sum() > 0 and position_grad[2:].abs().sum() == 0
