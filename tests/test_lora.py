"""LoRA (utils/lora.py): exact at step 0, only adapters train, merge and save/load are faithful."""

import copy

import pytest
import torch
from torch import nn

from utils.attention import MultiHeadAttention
from utils.lora import (
    LoRALinear,
    apply_lora,
    count_trainable,
    linear_layers,
    load_adapters,
    lora_forward,
    lora_layers,
    lora_parameter_count,
    lora_state_dict,
    merge_lora,
    merged_weight,
    save_adapters,
)
from utils.model import GPT, GPTConfig
from utils.pretrained import load_pretrained
from utils.quantization import NF4Linear, quantize_model_nf4

TINY = GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(TINY).eval()


def batch(seed=1, B=4, T=16, vocab=30):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)


def train_steps(model, steps=5, lr=1e-2, vocab=30, T=16):
    """A few AdamW steps on random tokens: enough to move A and B well away from their init."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        x, y = batch(seed=100 + step, vocab=vocab, T=T)
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def pretrained():
    model, tokenizer = load_pretrained("shakespeare-char")
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- the layer

def test_layer_shapes_init_and_scaling():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), rank=4, alpha=8)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (8, 4)
    assert layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_B) == 0          # B = 0: no change at step 0
    assert layer.lora_A.std() > 0.05                        # A random: B gets a gradient
    assert not any(p.requires_grad for p in layer.base.parameters())


def test_layer_forward_is_the_formula_with_bias_and_without():
    torch.manual_seed(0)
    for bias in (True, False):
        layer = LoRALinear(nn.Linear(16, 8, bias=bias), rank=3, alpha=5)
        nn.init.normal_(layer.lora_B)
        x = torch.randn(2, 7, 16)
        expected = lora_forward(x, layer.base.weight, layer.base.bias, layer.lora_A,
                                layer.lora_B, 5 / 3)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
        # Against the plain maths, written out: x Wᵀ + b + (alpha/r) x Aᵀ Bᵀ.
        by_hand = x @ layer.base.weight.T + (5 / 3) * (x @ layer.lora_A.T @ layer.lora_B.T)
        if bias:
            by_hand = by_hand + layer.base.bias
        torch.testing.assert_close(layer(x), by_hand, rtol=0, atol=1e-5)


def test_merged_weight_is_w_plus_scaled_ba_not_its_transpose():
    W, A, B = torch.randn(6, 4), torch.randn(2, 4), torch.randn(6, 2)
    merged = merged_weight(W, A, B, 0.5)
    assert merged.shape == W.shape
    torch.testing.assert_close(merged, W + 0.5 * B @ A)
    x = torch.randn(3, 4)
    torch.testing.assert_close(x @ merged.T, lora_forward(x, W, None, A, B, 0.5), atol=1e-5, rtol=0)


def test_parameter_count_formula():
    assert lora_parameter_count(128, 384, 8) == 8 * (128 + 384) == 4096
    layer = LoRALinear(nn.Linear(128, 384), rank=8, alpha=16)
    assert layer.lora_A.numel() + layer.lora_B.numel() == lora_parameter_count(128, 384, 8)


@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "8"])
def test_bad_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=rank, alpha=1)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(tiny_gpt(), rank=rank)


def test_bad_alpha_and_dropout_and_base_are_clear_errors():
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(nn.Linear(4, 4), rank=1, alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(4, 4), rank=1, alpha=1, dropout=1.0)
    with pytest.raises(TypeError, match="LayerNorm"):
        LoRALinear(nn.LayerNorm(4), rank=1, alpha=1)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 32), rank=4, alpha=4, dropout=0.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(8, 32)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), lora_forward(x, layer.base.weight, layer.base.bias,
                                                      layer.lora_A, layer.lora_B, 1.0))


# --------------------------------------------------------------------------- a whole model

def test_zero_init_gives_exactly_the_base_models_logits(pretrained):
    base, tokenizer = pretrained
    adapted = apply_lora(copy.deepcopy(base), rank=8, alpha=16, targets=("qkv", "proj", "up", "down"))
    x = torch.tensor([tokenizer.encode("Shall I compare thee to a summer's day?\n")])
    with torch.no_grad():
        assert torch.equal(adapted(x)[0], base(x)[0])       # bit for bit, not just close


def test_targets_pick_layers_by_dotted_suffix():
    model = apply_lora(tiny_gpt(), rank=2, targets=("qkv", "blocks.1.mlp.up"))
    assert sorted(lora_layers(model)) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.mlp.up"]
    model = apply_lora(tiny_gpt(), rank=2, targets="proj")
    assert sorted(lora_layers(model)) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]


def test_only_lora_parameters_require_grad_and_counts_add_up():
    model = tiny_gpt()
    total_before = sum(p.numel() for p in model.parameters())
    apply_lora(model, rank=4, alpha=8, targets=("qkv", "proj", "up", "down"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    assert len(trainable) == 2 * 4 * TINY.n_layer
    expected = sum(lora_parameter_count(m.in_features, m.out_features, 4)
                   for m in lora_layers(model).values())
    assert count_trainable(model) == (expected, total_before + expected)


def test_count_trainable_counts_a_tied_weight_once():
    model = tiny_gpt()
    trainable, total = count_trainable(model)
    assert trainable == total == model.get_num_params()


def test_frozen_base_is_bit_identical_after_training_and_adapters_moved():
    model = tiny_gpt()
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8, targets=("qkv", "proj", "up", "down"))
    A_before = {n: m.lora_A.detach().clone() for n, m in lora_layers(model).items()}
    train_steps(model)
    after = model.state_dict()
    for key, value in base_before.items():
        adapted_key = key if key in after else key.replace(".weight", ".base.weight").replace(
            ".bias", ".base.bias")
        assert torch.equal(after[adapted_key], value), key
    for name, layer in lora_layers(model).items():
        assert torch.count_nonzero(layer.lora_B) > 0, name
        assert not torch.equal(layer.lora_A, A_before[name]), name


def test_merged_model_gives_the_adapted_models_logits(pretrained):
    base, tokenizer = pretrained
    # float64, so that the comparison measures the merge and not float32 rounding (in float32
    # the two orders of summation already differ by ~2e-5 on these logits, as much as the base
    # model's own float32 and float64 logits do).
    base64 = copy.deepcopy(base).double()
    adapted = apply_lora(copy.deepcopy(base64), rank=8, alpha=16,
                         targets=("qkv", "proj", "up", "down"))
    train_steps(adapted, steps=3, lr=1e-2, vocab=tokenizer.vocab_size, T=32)
    assert all(torch.count_nonzero(m.lora_B) > 0 for m in lora_layers(adapted).values())
    x = torch.tensor([tokenizer.encode("From fairest creatures we desire increase,\n")])
    with torch.no_grad():
        before = adapted(x)[0]
        assert (before - base64(x)[0]).abs().max() > 1e-3   # the adapters do something
        merged = merge_lora(adapted)
        after = merged(x)[0]
    assert not lora_layers(merged)
    assert all(isinstance(m, nn.Linear) for m in linear_layers(merged).values())
    assert (after - before).abs().max() < 1e-5
    assert not any(p.requires_grad for p in merged.parameters())


def test_merge_in_float32_on_a_small_model():
    model = train_steps(apply_lora(tiny_gpt(), rank=4, alpha=8, targets=("qkv", "up")))
    x, _ = batch(seed=7)
    with torch.no_grad():
        before = model(x)[0]
        after = merge_lora(model)(x)[0]
    assert (after - before).abs().max() < 1e-5


def test_cross_attention_reads_the_adapted_weight():
    # MultiHeadAttention multiplies by qkv.weight directly when given a context: the
    # LoRALinear's weight property must be the adapted weight, not the frozen one.
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_heads=2)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    apply_lora(mha, rank=2, alpha=4, targets=("qkv",))
    with torch.no_grad():
        same = mha(x, context=context)
        nn.init.normal_(mha.qkv.lora_B)
        adapted = mha(x, context=context)
        merged = merge_lora(copy.deepcopy(mha))(x, context=context)
    assert not torch.allclose(same, adapted)
    torch.testing.assert_close(adapted, merged, atol=1e-5, rtol=0)
    # and the gradient reaches the adapter through that path
    out = mha(x, context=context)
    out.sum().backward()
    assert mha.qkv.lora_B.grad is not None and mha.qkv.lora_B.grad.abs().sum() > 0


# --------------------------------------------------------------------------- clear errors

def test_a_target_that_matches_nothing_names_the_layers_there_are():
    with pytest.raises(ValueError, match="'q_proj' matches no linear layer") as info:
        apply_lora(tiny_gpt(), targets=("qkv", "q_proj"))
    for name in ("'qkv'", "'proj'", "'up'", "'down'", "'lm_head'", "blocks.0.attn.qkv"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        apply_lora(tiny_gpt(), targets=())


@pytest.mark.parametrize("bad", [dict(targets=("qkv", "nothing_like_this")), dict(alpha=0),
                                 dict(alpha="16"), dict(dropout=1.5), dict(targets=("lm_head",))])
def test_a_failed_apply_leaves_the_model_untouched(bad):
    model = tiny_gpt()
    with pytest.raises(ValueError):
        apply_lora(model, **bad)
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_applying_twice_is_refused():
    model = apply_lora(tiny_gpt(), rank=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2)


def test_a_tied_output_layer_is_refused():
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny_gpt(), targets=("lm_head",))


# --------------------------------------------------------------------------- adapters on disk

def test_save_and_load_adapters_round_trip(tmp_path, pretrained):
    base, tokenizer = pretrained
    adapted = train_steps(apply_lora(copy.deepcopy(base), rank=8, alpha=16),
                          steps=2, vocab=tokenizer.vocab_size, T=32)
    path = save_adapters(adapted, tmp_path / "adapters" / "sonnets.safetensors")
    n_adapter = count_trainable(adapted)[0]
    assert n_adapter == 6 * (8 * (128 + 384) + 8 * (128 + 128))      # qkv and proj, 6 blocks
    # the file is the adapters alone: 4 bytes a number plus a small header
    assert n_adapter * 4 < path.stat().st_size < n_adapter * 4 + 4096
    assert not list(path.parent.glob(".*.tmp"))
    fresh = load_adapters(copy.deepcopy(base), path)                  # a fresh base: applied
    x = torch.tensor([tokenizer.encode("Thy youth's proud livery")])
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], adapted(x)[0])
    for key, value in lora_state_dict(adapted).items():
        assert torch.equal(lora_state_dict(fresh)[key], value)


def test_loading_adapters_of_another_shape_is_a_clear_error(tmp_path):
    path = save_adapters(apply_lora(tiny_gpt(), rank=2, alpha=4), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="rank=2"):
        load_adapters(apply_lora(tiny_gpt(), rank=4, alpha=4), path)
    with pytest.raises(ValueError, match="layers"):
        load_adapters(apply_lora(tiny_gpt(), rank=2, alpha=4, targets=("up",)), path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_adapters(tiny_gpt(), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapters(tiny_gpt(), tmp_path / "b.safetensors")


# --------------------------------------------------------------------------- QLoRA

def test_lora_on_a_4bit_base_trains_only_the_adapters():
    quantized = quantize_model_nf4(tiny_gpt(), targets=("qkv", "proj", "up", "down"))
    codes_before = {k: v.clone() for k, v in quantized.state_dict().items()}
    x, _ = batch(seed=3)
    with torch.no_grad():
        reference = quantized(x)[0]
    model = apply_lora(quantized, rank=4, alpha=8, targets=("qkv", "proj", "up", "down"))
    assert all(isinstance(m.base, NF4Linear) for m in lora_layers(model).values())
    with torch.no_grad():
        assert torch.equal(model(x)[0], reference)                  # zero init, on NF4 too
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    train_steps(model)
    after = model.state_dict()
    for key, value in codes_before.items():                          # 4-bit codes untouched
        adapted_key = key if key in after else key.replace(".codes", ".base.codes").replace(
            ".absmax", ".base.absmax").replace(".bias", ".base.bias")
        assert torch.equal(after[adapted_key], value), key
    with torch.no_grad():
        before_merge = model(x)[0]
        merged = merge_lora(model)(x)[0]                             # de-quantised + B A
    assert (merged - before_merge).abs().max() < 1e-5


# ---- the scaling study of data/build_lora_sweep.py ---------------------------------------------


def _build_lora_sweep():
    import importlib.util

    from utils.paths import DATA_DIR
    spec = importlib.util.spec_from_file_location("build_lora_sweep", DATA_DIR / "build_lora_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_relative_update_size_is_zero_at_step_0_and_measures_the_adapter():
    sweep = _build_lora_sweep()
    torch.manual_seed(0)
    model = apply_lora(GPT(TINY), rank=4, alpha=2, targets=("qkv",))
    windows = torch.randint(0, TINY.vocab_size, (3, 8))
    assert sweep.relative_update_size(model, windows) == 0.0             # B = 0: no update yet
    layers = list(lora_layers(model).values())
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_()
    inputs = []

    def keep_input(module, args, output):
        inputs.append(args[0])                                           # returns None: output kept

    hooks = [layer.register_forward_hook(keep_input) for layer in layers]
    model.eval()
    with torch.no_grad():
        model(windows)
        expected = sum((layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T).pow(2).mean().sqrt()
                       / layer.base(x).pow(2).mean().sqrt() for layer, x in zip(layers, inputs,
                                                                              strict=True))
    for hook in hooks:
        hook.remove()
    size = sweep.relative_update_size(model, windows)
    assert size == pytest.approx(expected.item() / len(layers), rel=1e-5) and size > 0
    layers[-1].scaling *= 2            # the last layer's input does not depend on its own factor
    doubled_last = sweep.relative_update_size(model, windows)
    assert doubled_last > size and model.training is False               # and its mode is kept


def test_scaling_study_is_consistent_with_the_sweep_it_extends():
    """The study's constant-factor rule is the sweep's own rule on the same layers and settings,
    so its losses must be the sweep's; each rule's factor is what its name says."""
    import json
    import math

    from utils.paths import DATA_DIR
    record = json.loads((DATA_DIR / "lora_sweep.json").read_text())
    study = record["scaling_study"]
    assert tuple(study["targets"]) == tuple(record["target_sets"]["qkv+proj"])
    assert {k: study["settings"][k] for k in ("steps", "batch_size", "block_size", "lr", "seed")} == \
        {k: record["settings"][k] for k in ("steps", "batch_size", "block_size", "lr", "seed")}
    constant, rs, fixed = study["rules"].values()
    assert [r["val_loss"] for r in constant] == [r["val_loss"] for r in record["runs"]["qkv+proj"]]
    for runs, factor in ((constant, lambda r: 2.0), (rs, lambda r: 2 / math.sqrt(r)),
                         (fixed, lambda r: 2.0 / r)):
        assert [run["scaling"] for run in runs] == [round(factor(run["rank"]), 4) for run in runs]
        assert all(run["update_size"] > 0 for run in runs)
