"""Chapter 04 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import torch

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils.attention import merge_heads, repeat_kv, split_heads
from utils.checks import ch04 as check

# ---- exercise 1: split and merge heads ---------------------------------------------------


def split(x, n_heads):
    B, T, d = x.shape
    return x.view(B, T, n_heads, d // n_heads).transpose(1, 2)


def merge(x):
    B, h, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, h * dh)


def test_split_merge_accepts_solution_and_library():
    assert_accepts(check.split_merge, split, merge)
    assert_accepts(check.split_merge, split_heads, merge_heads)


def test_split_without_transpose_rejected():
    def no_transpose(x, n_heads):
        B, T, d = x.shape
        return x.reshape(B, n_heads, T, d // n_heads)
    assert "transpose" in assert_rejects(check.split_merge, no_transpose, merge)


def test_merge_in_wrong_order_rejected():
    def wrong_order(x):
        B, h, T, dh = x.shape
        return x.reshape(B, T, h * dh)
    assert "wrong order" in assert_rejects(check.split_merge, split, wrong_order)


def test_split_interleaved_channels_rejected():
    def interleaved(x, n_heads):  # head i gets channels i, i+h, i+2h ...: a different layout
        B, T, d = x.shape
        return x.view(B, T, d // n_heads, n_heads).permute(0, 3, 1, 2)
    assert "channels" in assert_rejects(check.split_merge, interleaved, merge)


def test_split_merge_not_attempted():
    assert_not_attempted(check.split_merge, stub, merge)
    assert_not_attempted(check.split_merge, split, stub)


# ---- exercise 2: multi-head attention from single heads ----------------------------------


def from_heads(x, heads, proj):
    return proj(torch.cat([head(x)[0] for head in heads], dim=-1))


def test_mha_from_heads_accepts_solution():
    assert_accepts(check.mha_from_heads, from_heads)


def test_mha_from_heads_rejects_reversed_order():
    def reversed_heads(x, heads, proj):
        return proj(torch.cat([head(x)[0] for head in heads[::-1]], dim=-1))
    assert "reverse" in assert_rejects(check.mha_from_heads, reversed_heads)


def test_mha_from_heads_rejects_missing_projection_and_sum():
    def no_proj(x, heads, proj):
        return torch.cat([head(x)[0] for head in heads], dim=-1)
    assert "W_O" in assert_rejects(check.mha_from_heads, no_proj)

    def summed(x, heads, proj):  # shape [B, T, d/h]: wrong
        return sum(head(x)[0] for head in heads)
    assert "shape" in assert_rejects(check.mha_from_heads, summed)


def test_mha_from_heads_rejects_tuple_and_stub():
    assert "tuple" in assert_rejects(check.mha_from_heads, lambda x, h, p: (from_heads(x, h, p),
                                                                           None))
    assert_not_attempted(check.mha_from_heads, stub)


# ---- exercise 3: counting parameters -----------------------------------------------------


def count(d_model, n_heads, n_kv_heads, bias):
    d_head = d_model // n_heads
    qkv_out = (n_heads + 2 * n_kv_heads) * d_head
    return d_model * qkv_out + d_model * d_model + (qkv_out + d_model if bias else 0)


def test_count_params_accepts_solution():
    assert_accepts(check.count_params, count)


def test_count_params_rejects_classic_mistakes():
    assert "full" in assert_rejects(
        check.count_params, lambda d, h, kv, b: 4 * d * d + (4 * d if b else 0))
    assert "biases" in assert_rejects(check.count_params, lambda d, h, kv, b: count(d, h, kv, False))
    assert "W_O" in assert_rejects(
        check.count_params, lambda d, h, kv, b: count(d, h, kv, b) - d * d - (d if b else 0))
    assert_rejects(check.count_params, lambda d, h, kv, b: 3 * d * d)
    assert_not_attempted(check.count_params, stub)


# ---- exercise 4: GQA key/value repetition ------------------------------------------------


def test_repeat_kv_accepts_solution_and_library():
    assert_accepts(check.repeat_kv_heads, lambda x, n: x.repeat_interleave(n, dim=1))
    assert_accepts(check.repeat_kv_heads, repeat_kv)

    def expand(x, n):  # Llama's version
        B, kv, T, d = x.shape
        return x[:, :, None].expand(B, kv, n, T, d).reshape(B, kv * n, T, d)
    assert_accepts(check.repeat_kv_heads, expand)


def test_repeat_kv_rejects_tiling_and_wrong_dim():
    assert "tiled" in assert_rejects(check.repeat_kv_heads, lambda x, n: x.repeat(1, n, 1, 1))
    assert "shape" in assert_rejects(check.repeat_kv_heads,
                                     lambda x, n: x.repeat_interleave(n, dim=2))
    assert_not_attempted(check.repeat_kv_heads, stub)
