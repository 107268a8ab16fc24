"""Chapter 05 graders: solutions accepted, plausible mistakes rejected with a useful hint.

Every wrong answer below is one a learner could really write; each must be rejected.
"""

import torch
import torch.nn.functional as F

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.checks import ch05 as check
from utils.layers import layer_norm as library_layer_norm
from utils.layers import rms_norm as library_rms_norm

# ---- exercise 1: LayerNorm ------------------------------------------------------------------


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def test_layer_norm_accepts_solutions():
    assert_accepts(check.layer_norm, layer_norm)
    assert_accepts(check.layer_norm, library_layer_norm)
    assert_accepts(check.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True))
                   * torch.rsqrt(x.var(-1, correction=0, keepdim=True) + eps) * w + b)


def test_layer_norm_not_attempted():
    assert_not_attempted(check.layer_norm, stub)


def test_layer_norm_library_call_rejected_however_spelled():
    # the exercise says: do not call F.layer_norm; nn.LayerNorm and torch.layer_norm reach it too
    def functional(x, w, b, eps=1e-5):
        return F.layer_norm(x, x.shape[-1:], w, b, eps)

    def module(x, w, b, eps=1e-5):
        norm = torch.nn.LayerNorm(x.shape[-1], eps=eps)
        with torch.no_grad():
            norm.weight.copy_(w), norm.bias.copy_(b)
        return norm(x)

    def builtin(x, w, b, eps=1e-5):
        return torch.layer_norm(x, x.shape[-1:], w, b, eps)

    for answer in (functional, module, builtin):
        assert "rules out" in assert_rejects(check.layer_norm, answer)


def test_layer_norm_grader_does_not_stop_at_its_first_case():
    def unbiased(x, weight, bias, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) \
            * weight + bias
    assert_rejects(check.layer_norm, right_on_first_call_only(layer_norm, unbiased))


def test_layer_norm_list_answer_rejected():
    assert "torch.Tensor" in assert_rejects(
        check.layer_norm, lambda x, w, b, eps=1e-5: layer_norm(x, w, b, eps).tolist())


def test_layer_norm_bessel_correction_rejected():
    def unbiased(x, weight, bias, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) \
            * weight + bias
    assert "Bessel" in assert_rejects(check.layer_norm, unbiased)


def test_layer_norm_torch_std_rejected():
    def with_std(x, weight, bias, eps=1e-5):      # std() is unbiased by default too
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps) * weight + bias
    assert_rejects(check.layer_norm, with_std)


def test_layer_norm_eps_outside_sqrt_rejected():
    def outside(x, weight, bias, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        std = x.var(-1, keepdim=True, unbiased=False).sqrt()
        return (x - mean) / (std + eps) * weight + bias
    assert "outside the square root" in assert_rejects(check.layer_norm, outside)


def test_layer_norm_missing_eps_rejected():
    def no_eps(x, weight, bias, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / x.var(-1, keepdim=True, unbiased=False).sqrt() * weight + bias
    assert "eps" in assert_rejects(check.layer_norm, no_eps)


def test_layer_norm_wrong_axis_rejected():
    def axis0(x, weight, bias, eps=1e-5):
        mean = x.mean(0, keepdim=True)
        var = x.var(0, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + eps) * weight + bias
    assert "axis" in assert_rejects(check.layer_norm, axis0)


def test_layer_norm_wrong_axis_on_tokens_rejected():
    def over_tokens(x, weight, bias, eps=1e-5):   # dim=-2: normalises each feature over time
        mean = x.mean(-2, keepdim=True)
        var = x.var(-2, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + eps) * weight + bias
    assert_rejects(check.layer_norm, over_tokens)


def test_layer_norm_forgetting_gain_and_bias_rejected():
    def plain(x, weight, bias, eps=1e-5):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(
            x.var(-1, keepdim=True, unbiased=False) + eps)
    assert "gain" in assert_rejects(check.layer_norm, plain)

    def no_bias(x, weight, bias, eps=1e-5):
        return plain(x, weight, bias, eps) * weight
    assert "bias" in assert_rejects(check.layer_norm, no_bias)


def test_layer_norm_hard_coded_eps_rejected():
    def fixed(x, weight, bias, eps=1e-5):
        return layer_norm(x, weight, bias, 1e-5)
    assert "eps argument" in assert_rejects(check.layer_norm, fixed)


def test_layer_norm_in_place_rejected():
    def in_place(x, weight, bias, eps=1e-5):
        x -= x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight + bias
    assert "changed its input" in assert_rejects(check.layer_norm, in_place)


# ---- exercise 2: RMSNorm --------------------------------------------------------------------


def rms_norm(x, weight, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_rms_norm_accepts_solutions():
    assert_accepts(check.rms_norm, rms_norm)
    assert_accepts(check.rms_norm, library_rms_norm)
    assert_accepts(check.rms_norm, lambda x, w, eps=1e-5: x * torch.rsqrt(
        x.square().mean(-1, keepdim=True) + eps) * w)


def test_rms_norm_not_attempted():
    assert_not_attempted(check.rms_norm, stub)


def test_rms_norm_library_call_rejected():
    assert "rules out" in assert_rejects(check.rms_norm, lambda x, w, eps=1e-5: F.rms_norm(
        x, x.shape[-1:], w, eps))

    def module(x, w, eps=1e-5):
        norm = torch.nn.RMSNorm(x.shape[-1], eps=eps)
        with torch.no_grad():
            norm.weight.copy_(w)
        return norm(x)
    assert "rules out" in assert_rejects(check.rms_norm, module)


def test_rms_norm_grader_does_not_stop_at_its_first_case():
    def no_gain(x, weight, eps=1e-5):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    assert_rejects(check.rms_norm, right_on_first_call_only(rms_norm, no_gain))


def test_rms_norm_subtracting_the_mean_rejected():
    def like_layernorm(x, weight, eps=1e-5):
        x = x - x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    assert "LayerNorm" in assert_rejects(check.rms_norm, like_layernorm)


def test_rms_norm_eps_outside_sqrt_rejected():
    def outside(x, weight, eps=1e-5):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight
    assert "outside" in assert_rejects(check.rms_norm, outside)


def test_rms_norm_l2_norm_rejected():
    def l2(x, weight, eps=1e-5):
        return x / (x.norm(dim=-1, keepdim=True) + eps) * weight
    assert_rejects(check.rms_norm, l2)


def test_rms_norm_no_gain_rejected():
    def no_gain(x, weight, eps=1e-5):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    assert "gain" in assert_rejects(check.rms_norm, no_gain)


def test_rms_norm_missing_eps_rejected():
    def no_eps(x, weight, eps=1e-5):
        return x / x.pow(2).mean(-1, keepdim=True).sqrt() * weight
    assert_rejects(check.rms_norm, no_eps)


def test_rms_norm_wrong_axis_rejected():
    def axis0(x, weight, eps=1e-5):
        return x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps) * weight
    assert "axis" in assert_rejects(check.rms_norm, axis0)


def test_rms_norm_no_square_root_rejected():
    def no_sqrt(x, weight, eps=1e-5):
        return x / (x.pow(2).mean(-1, keepdim=True) + eps) * weight
    assert "square root" in assert_rejects(check.rms_norm, no_sqrt)


# ---- exercise 3: a pre-norm block -----------------------------------------------------------


def block(x, attn, mlp, norm1, norm2):
    x = x + attn(norm1(x))
    x = x + mlp(norm2(x))
    return x


def test_block_accepts_solutions():
    assert_accepts(check.pre_norm_block, block)
    assert_accepts(check.pre_norm_block, check.reference_block)

    def one_line(x, attn, mlp, norm1, norm2):
        h = attn(norm1(x)) + x
        return h + mlp(norm2(h))
    assert_accepts(check.pre_norm_block, one_line)


def test_block_not_attempted():
    assert_not_attempted(check.pre_norm_block, stub)


def test_block_grader_does_not_stop_at_its_first_case():
    def swapped(x, attn, mlp, norm1, norm2):
        x = x + attn(norm2(x))
        return x + mlp(norm1(x))
    assert_rejects(check.pre_norm_block, right_on_first_call_only(block, swapped))


def test_block_missing_attention_residual_rejected():
    def no_residual(x, attn, mlp, norm1, norm2):
        x = attn(norm1(x))
        return x + mlp(norm2(x))
    assert "residual around attention" in assert_rejects(check.pre_norm_block, no_residual)


def test_block_missing_mlp_residual_rejected():
    def no_residual(x, attn, mlp, norm1, norm2):
        x = x + attn(norm1(x))
        return mlp(norm2(x))
    assert "feed-forward is missing" in assert_rejects(check.pre_norm_block, no_residual)


def test_block_post_norm_rejected():
    def post_norm(x, attn, mlp, norm1, norm2):
        x = norm1(x + attn(x))
        return norm2(x + mlp(x))
    assert "post-norm" in assert_rejects(check.pre_norm_block, post_norm)


def test_block_parallel_sublayers_rejected():
    def parallel(x, attn, mlp, norm1, norm2):     # GPT-J style: both read the same input
        return x + attn(norm1(x)) + mlp(norm2(x))
    assert "attention step" in assert_rejects(check.pre_norm_block, parallel)


def test_block_without_norms_rejected():
    def no_norm(x, attn, mlp, norm1, norm2):
        x = x + attn(x)
        return x + mlp(x)
    assert "norms are missing" in assert_rejects(check.pre_norm_block, no_norm)


def test_block_adding_the_normalised_input_rejected():
    def normed_residual(x, attn, mlp, norm1, norm2):
        x = norm1(x)
        x = x + attn(x)
        return x + mlp(norm2(x))
    assert "raw x" in assert_rejects(check.pre_norm_block, normed_residual)


def test_block_swapped_norms_rejected():
    def swapped(x, attn, mlp, norm1, norm2):
        x = x + attn(norm2(x))
        return x + mlp(norm1(x))
    assert "swapped" in assert_rejects(check.pre_norm_block, swapped)


def test_block_in_place_residual_rejected():
    def in_place(x, attn, mlp, norm1, norm2):
        x += attn(norm1(x))
        x += mlp(norm2(x))
        return x
    assert "changed its input" in assert_rejects(check.pre_norm_block, in_place)


# ---- exercise 4: count the parameters -------------------------------------------------------


def count(vocab_size, block_size, n_layer, n_embd):
    d = n_embd
    embeddings = vocab_size * d + block_size * d
    per_block = (2 * 2 * d                     # two LayerNorms: gain + bias
                 + 3 * d * d + 3 * d           # qkv
                 + d * d + d                   # W_O
                 + d * 4 * d + 4 * d           # up
                 + 4 * d * d + d)              # down
    return embeddings + n_layer * per_block + 2 * d


def test_count_accepts_solution():
    assert_accepts(check.count_gpt_params, count)
    assert_accepts(check.count_gpt_params, lambda *a: float(count(*a)))


def test_count_not_attempted():
    assert_not_attempted(check.count_gpt_params, stub)


def test_count_grader_does_not_stop_at_its_first_case():
    untied = lambda v, b, n, d: count(v, b, n, d) + v * d
    assert_rejects(check.count_gpt_params, right_on_first_call_only(count, untied))


def test_count_untied_head_rejected():
    wrong = lambda v, b, n, d: count(v, b, n, d) + v * d
    assert "tied" in assert_rejects(check.count_gpt_params, wrong)


def test_count_without_biases_rejected():
    wrong = lambda v, b, n, d: count(v, b, n, d) - n * 9 * d
    assert "biases" in assert_rejects(check.count_gpt_params, wrong)


def test_count_without_layernorms_rejected():
    wrong = lambda v, b, n, d: count(v, b, n, d) - n * 4 * d - 2 * d
    assert "LayerNorm" in assert_rejects(check.count_gpt_params, wrong)


def test_count_without_final_norm_rejected():
    wrong = lambda v, b, n, d: count(v, b, n, d) - 2 * d
    assert "final LayerNorm" in assert_rejects(check.count_gpt_params, wrong)


def test_count_without_positions_rejected():
    wrong = lambda v, b, n, d: count(v, b, n, d) - b * d
    assert "position" in assert_rejects(check.count_gpt_params, wrong)


def test_count_narrow_ffn_rejected():
    wrong = lambda v, b, n, d: count(v, b, n, d) - n * (4 * d * d + 2 * d)   # 2x, not 4x
    assert_rejects(check.count_gpt_params, wrong)


def test_count_string_answer_rejected():
    assert "whole number" in assert_rejects(check.count_gpt_params, lambda *a: "124M")
