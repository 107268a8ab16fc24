"""Chapter 04 graders: solutions accepted, plausible mistakes rejected with a useful hint.

Every wrong answer below is one a learner could really write; each must be rejected.
"""

import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.attention import merge_heads, repeat_kv, split_heads
from utils.checks import ch04 as check

# ---- exercise 1: split and merge heads ---------------------------------------------------


def split(x, n_heads):
    B, T, d = x.shape
    return x.view(B, T, n_heads, d // n_heads).transpose(1, 2)


def merge(x):
    B, h, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, h * dh)


def test_split_merge_accepts_solution_library_and_variants():
    assert_accepts(check.split_merge, split, merge)
    assert_accepts(check.split_merge, split_heads, merge_heads)
    assert_accepts(check.split_merge, lambda x, h: torch.stack(x.chunk(h, dim=-1), dim=1),
                   lambda x: torch.cat(x.unbind(1), dim=-1))
    assert_accepts(check.split_merge, split, lambda x: x.transpose(1, 2).contiguous().view(
        x.shape[0], x.shape[2], -1))


def test_split_merge_not_attempted():
    assert_not_attempted(check.split_merge, stub, merge)
    assert_not_attempted(check.split_merge, split, stub)


def test_split_without_transpose_rejected():
    def no_transpose(x, n_heads):
        B, T, d = x.shape
        return x.reshape(B, n_heads, T, d // n_heads)
    assert "transpose" in assert_rejects(check.split_merge, no_transpose, merge)


def test_split_interleaved_channels_rejected():
    def interleaved(x, n_heads):  # head i gets channels i, i+h, i+2h ...: a different layout
        B, T, d = x.shape
        return x.view(B, T, d // n_heads, n_heads).permute(0, 3, 1, 2)
    assert "channels" in assert_rejects(check.split_merge, interleaved, merge)


def test_split_into_pieces_of_size_h_rejected():
    # x.split(n) makes pieces of n channels (d/n of them), not n pieces
    wrong = lambda x, n_heads: torch.stack(x.split(n_heads, dim=-1), dim=1)
    assert_rejects(check.split_merge, wrong, merge)


def test_split_with_positions_and_channels_swapped_rejected():
    def swapped(x, n_heads):  # [B, h, d/h, T]: right shape only when T == d/h
        B, T, d = x.shape
        return x.view(B, T, n_heads, d // n_heads).permute(0, 2, 3, 1)
    assert_rejects(check.split_merge, swapped, merge)


def test_merge_in_wrong_order_rejected():
    def wrong_order(x):
        B, h, T, dh = x.shape
        return x.reshape(B, T, h * dh)
    assert "wrong order" in assert_rejects(check.split_merge, split, wrong_order)


def test_merge_with_view_on_a_real_attention_output_rejected():
    def with_view(x):  # works on split_heads' output, raises on a contiguous `weights @ v`
        B, h, T, dh = x.shape
        return x.transpose(1, 2).view(B, T, h * dh)
    assert "reshape" in assert_rejects(check.split_merge, split, with_view)


def test_merge_along_the_wrong_axes_rejected():
    def wrong_axes(x):
        B, h, T, dh = x.shape
        return x.permute(0, 2, 3, 1).reshape(B, T, h * dh)  # channels of the heads interleaved
    assert_rejects(check.split_merge, split, wrong_axes)

    def stacked_positions(x):
        return torch.cat([x[:, i] for i in range(x.shape[1])], dim=1)  # [B, h*T, d/h]
    assert "shape" in assert_rejects(check.split_merge, split, stacked_positions)


# ---- exercise 2: multi-head attention from single heads ----------------------------------


def from_heads(x, heads, proj):
    return proj(torch.cat([head(x)[0] for head in heads], dim=-1))


def test_mha_from_heads_accepts_solution_and_stub_not_attempted():
    assert_accepts(check.mha_from_heads, from_heads)
    assert_not_attempted(check.mha_from_heads, stub)


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


def test_mha_from_heads_rejects_tuple():
    assert "tuple" in assert_rejects(check.mha_from_heads, lambda x, h, p: (from_heads(x, h, p),
                                                                           None))


def test_mha_from_heads_rejects_projection_without_bias_and_untransposed_weight():
    def no_bias(x, heads, proj):
        return torch.cat([head(x)[0] for head in heads], dim=-1) @ proj.weight.T
    assert "bias" in assert_rejects(check.mha_from_heads, no_bias)

    def untransposed(x, heads, proj):
        out = torch.cat([head(x)[0] for head in heads], dim=-1) @ proj.weight
        return out if proj.bias is None else out + proj.bias
    assert "weight.T" in assert_rejects(check.mha_from_heads, untransposed)


def test_mha_from_heads_rejects_residual_and_first_head_repeated():
    assert "residual" in assert_rejects(check.mha_from_heads,
                                        lambda x, heads, proj: x + from_heads(x, heads, proj))

    def first_head_only(x, heads, proj):
        return proj(torch.cat([heads[0](x)[0] for head in heads], dim=-1))
    assert_rejects(check.mha_from_heads, first_head_only)


def test_mha_from_heads_rejects_concatenating_along_positions():
    def along_time(x, heads, proj):
        return torch.cat([head(x)[0] for head in heads], dim=1)
    assert "last" in assert_rejects(check.mha_from_heads, along_time)


# ---- exercise 3: counting parameters -----------------------------------------------------


def count(d_model, n_heads, n_kv_heads, bias):
    d_head = d_model // n_heads
    qkv_out = (n_heads + 2 * n_kv_heads) * d_head
    return d_model * qkv_out + d_model * d_model + (qkv_out + d_model if bias else 0)


def test_count_params_accepts_solution_and_stub_not_attempted():
    assert_accepts(check.count_params, count)
    assert_not_attempted(check.count_params, stub)


def test_count_params_rejects_classic_mistakes():
    assert "full" in assert_rejects(
        check.count_params, lambda d, h, kv, b: 4 * d * d + (4 * d if b else 0))
    assert "biases" in assert_rejects(check.count_params, lambda d, h, kv, b: count(d, h, kv, False))
    assert "W_O" in assert_rejects(
        check.count_params, lambda d, h, kv, b: count(d, h, kv, b) - d * d - (d if b else 0))
    assert_rejects(check.count_params, lambda d, h, kv, b: 3 * d * d)


def test_count_params_rejects_full_width_biases_and_kv_at_model_width():
    assert "bias" in assert_rejects(
        check.count_params, lambda d, h, kv, b: count(d, h, kv, False) + (4 * d if b else 0))
    # each kv head taken as d_model wide instead of d_model / n_heads
    assert "d_head" in assert_rejects(
        check.count_params,
        lambda d, h, kv, b: d * (d + 2 * kv * d) + d * d + ((d + 2 * kv * d) + d if b else 0))


def test_count_params_rejects_output_bias_forgotten_and_string():
    assert "bias" in assert_rejects(check.count_params,
                                    lambda d, h, kv, b: count(d, h, kv, b) - (d if b else 0))
    assert "number" in assert_rejects(check.count_params, lambda d, h, kv, b: f"{count(d, h, kv, b):,}")


# ---- exercise 4: GQA key/value repetition ------------------------------------------------


def test_repeat_kv_accepts_solution_library_and_stub_not_attempted():
    assert_accepts(check.repeat_kv_heads, lambda x, n: x.repeat_interleave(n, dim=1))
    assert_accepts(check.repeat_kv_heads, repeat_kv)

    def expand(x, n):  # Llama's version
        B, kv, T, d = x.shape
        return x[:, :, None].expand(B, kv, n, T, d).reshape(B, kv * n, T, d)
    assert_accepts(check.repeat_kv_heads, expand)
    assert_not_attempted(check.repeat_kv_heads, stub)


def test_repeat_kv_rejects_tiling():
    assert "tiled" in assert_rejects(check.repeat_kv_heads, lambda x, n: x.repeat(1, n, 1, 1))
    assert "tiled" in assert_rejects(check.repeat_kv_heads, lambda x, n: torch.cat([x] * n, dim=1))


def test_repeat_kv_rejects_wrong_dim():
    assert "shape" in assert_rejects(check.repeat_kv_heads,
                                     lambda x, n: x.repeat_interleave(n, dim=2))
    assert "shape" in assert_rejects(check.repeat_kv_heads,
                                     lambda x, n: x.repeat_interleave(n, dim=0))


def test_repeat_kv_rejects_expand_then_view():
    def expand_view(x, n):  # .view cannot merge an expanded (stride 0) dimension
        B, kv, T, d = x.shape
        return x[:, :, None].expand(B, kv, n, T, d).view(B, kv * n, T, d)
    assert "reshape" in assert_rejects(check.repeat_kv_heads, expand_view)


def test_repeat_kv_rejects_repeating_by_the_head_count():
    assert_rejects(check.repeat_kv_heads, lambda x, n: x.repeat_interleave(x.shape[1], dim=1))


# ---- every grader tries more than its first case --------------------------------------------
# Each wrong answer is right on the grader's first hand-picked case only: a grader thinned to
# that one case would accept it. split_merge calls split_heads twice on its first case (once
# alone, once in the round trip), so its wrong answers are keyed on the first case's shape.

def _right_on(first_shape, right, wrong):
    def answer(x, *args):
        return (right if tuple(x.shape) == first_shape else wrong)(x, *args)
    return answer


def test_every_grader_goes_past_its_first_case():
    no_transpose = lambda x, n: x.reshape(x.shape[0], n, x.shape[1], x.shape[2] // n)
    assert_rejects(check.split_merge, _right_on((2, 3, 8), split_heads, no_transpose), merge_heads)
    wrong_merge = lambda x: x.reshape(x.shape[0], x.shape[2], -1)
    assert_rejects(check.split_merge, split_heads, _right_on((2, 2, 3, 4), merge_heads, wrong_merge))
    assert_rejects(check.mha_from_heads, right_on_first_call_only(
        from_heads, lambda x, heads, proj: torch.cat([h(x)[0] for h in heads], dim=-1)))
    assert_rejects(check.count_params, right_on_first_call_only(
        count, lambda d, h, kv, b: 4 * d * d + (4 * d if b else 0)))
    assert_rejects(check.repeat_kv_heads, right_on_first_call_only(
        repeat_kv, lambda x, n: x.repeat(1, n, 1, 1)))


def test_lists_where_tensors_are_expected_are_rejected():
    assert "tensor" in assert_rejects(check.split_merge, lambda x, n: split_heads(x, n).tolist(),
                                      merge_heads)
    assert "tensor" in assert_rejects(check.split_merge, split_heads,
                                      lambda x: merge_heads(x).tolist())
    assert "tensor" in assert_rejects(check.mha_from_heads,
                                      lambda x, heads, proj: from_heads(x, heads, proj).tolist())
    assert "tensor" in assert_rejects(check.repeat_kv_heads, lambda x, n: repeat_kv(x, n).tolist())
