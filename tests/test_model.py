"""utils/layers.py and utils/model.py: norms, feed-forward, block and GPT, checked against
PyTorch and by invariants."""

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.layers import FeedForward, LayerNorm, RMSNorm, ffn_hidden_size, layer_norm, rms_norm
from utils.model import (
    GPT,
    Block,
    GPTConfig,
    GPTOutput,
    count_parameters,
    estimate_flops_per_token,
    parameter_breakdown,
)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def tiny(**overrides) -> GPTConfig:
    settings = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    settings.update(overrides)
    return GPTConfig(**settings)


GPT2_STYLE = {}
LLAMA_STYLE = dict(pos="rope", norm="rms", mlp="swiglu", bias=False, n_kv_head=2,
                   tie_weights=False)
ALL_STYLES = [GPT2_STYLE, LLAMA_STYLE, dict(pos="alibi"), dict(pos="none"),
              dict(pos="rope", n_kv_head=1, bias=False)]


def ids(B=2, T=16, vocab=37, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ norms


def test_layer_norm_function_matches_torch():
    x = torch.randn(3, 5, 8) * 10 + 3
    w, b = torch.randn(8), torch.randn(8)
    torch.testing.assert_close(layer_norm(x, w, b), F.layer_norm(x, (8,), w, b, 1e-5))


def test_layer_norm_module_matches_nn_layernorm_with_same_weights():
    ours, ref = LayerNorm(8), nn.LayerNorm(8)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
    x = torch.randn(4, 8)
    torch.testing.assert_close(ours(x), ref(x))
    assert LayerNorm(8, bias=False).bias is None


def test_rms_norm_matches_torch_rmsnorm():
    x = torch.randn(2, 7, 16) * 5
    ref = nn.RMSNorm(16, eps=1e-5)
    ours = RMSNorm(16)
    with torch.no_grad():
        ref.weight.normal_()
        ours.weight.copy_(ref.weight)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(rms_norm(x, ref.weight), ref(x))


def test_rms_norm_keeps_bf16_dtype():
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    assert RMSNorm(16).to(torch.bfloat16)(x).dtype == torch.bfloat16


def test_norms_make_each_vector_standard():
    x = torch.randn(10, 64) * 7 + 2
    y = layer_norm(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(10), atol=1e-3, rtol=0)
    z = rms_norm(x)
    torch.testing.assert_close(z.pow(2).mean(-1), torch.ones(10), atol=1e-3, rtol=0)


# ------------------------------------------------------------------------ feed-forward


def test_swiglu_width_keeps_parameters_close_to_gelu():
    for d in (64, 384, 768, 4096):
        gelu = count_parameters(FeedForward(d, "gelu", bias=False)) if d <= 768 else 8 * d * d
        swiglu = 3 * d * ffn_hidden_size(d, "swiglu")
        assert abs(swiglu - gelu) / gelu < 0.035     # rounding up to a multiple of 8
    assert ffn_hidden_size(48, "swiglu") == 128 and ffn_hidden_size(48) == 192


def test_feedforward_acts_on_each_position_alone():
    ffn = FeedForward(16, "swiglu")
    x = torch.randn(1, 6, 16)
    y = ffn(x)
    x2 = x.clone()
    x2[0, 3] += 1.0                       # change one token
    changed = (ffn(x2) - y).abs().sum(-1)[0]
    assert changed[3] > 0 and torch.all(changed[[0, 1, 2, 4, 5]] == 0)


def test_feedforward_gelu_formula():
    ffn = FeedForward(8, "gelu")
    x = torch.randn(3, 8)
    expected = ffn.down(F.gelu(ffn.up(x), approximate="tanh"))
    torch.testing.assert_close(ffn(x), expected)
    with pytest.raises(ValueError, match="mlp"):
        FeedForward(8, "relu")
    with pytest.raises(ValueError, match="mlp"):           # even with the width given
        FeedForward(8, "relu", hidden=16)


def test_feedforward_exact_gelu_is_the_erf_form():
    torch.manual_seed(0)
    exact = FeedForward(8, "gelu_exact")
    x = torch.randn(3, 8) * 3
    u = exact.up(x)
    erf_gelu = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))      # x * Phi(x)
    torch.testing.assert_close(exact(x), exact.down(erf_gelu))
    # negative control: the tanh network with the same weights gives other numbers
    tanh = FeedForward(8, "gelu")
    tanh.load_state_dict(exact.state_dict())
    assert not torch.allclose(tanh(x), exact(x), atol=1e-5)
    assert ffn_hidden_size(8, "gelu_exact") == ffn_hidden_size(8) == 32


def test_feedforward_takes_any_hidden_width():
    ffn = FeedForward(16, "swiglu", hidden=44, bias=False)
    assert ffn.up.weight.shape == ffn.gate.weight.shape == (44, 16)
    assert ffn.down.weight.shape == (16, 44)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("bad, field", [
    (dict(n_embd=30), "n_embd"), (dict(n_kv_head=3), "n_kv_head"), (dict(pos="sinusoid"), "pos"),
    (dict(norm="batch"), "norm"), (dict(mlp="relu"), "mlp"), (dict(dropout=1.0), "dropout"),
    (dict(n_layer=0), "n_layer"), (dict(vocab_size=3.5), "vocab_size"),
    (dict(n_embd=12, n_head=4, pos="rope"), "rope"),
    (dict(ffn_hidden=0), "ffn_hidden"), (dict(ffn_hidden=True), "ffn_hidden"),
    (dict(ffn_hidden=64.0), "ffn_hidden"), (dict(rope_theta=0.0), "rope_theta"),
    (dict(rope_theta=True), "rope_theta"), (dict(rope_theta=math.inf), "rope_theta"),
    (dict(rope_theta="1e4"), "rope_theta"),
])
def test_config_rejects_bad_values_with_the_field_named(bad, field):
    with pytest.raises(ValueError, match=field):
        tiny(**bad)


def test_config_fields_are_the_documented_ones():
    names = list(GPTConfig.__dataclass_fields__)
    assert names == ["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head",
                     "dropout", "bias", "pos", "rope_theta", "norm", "mlp", "ffn_hidden",
                     "tie_weights", "qk_norm", "zero_init_proj", "logit_softcap",
                     "checkpoint_activations"]
    documented = GPTConfig.__doc__
    for name in names[5:]:          # the five shape fields are self-explanatory
        assert f"\n    {name} " in documented, f"{name} is not in GPTConfig's docstring"


def test_new_fields_default_to_what_the_model_always_built():
    cfg = tiny(pos="rope", mlp="swiglu")
    assert cfg.rope_theta == 10000.0 and cfg.ffn_hidden is None
    assert cfg.ffn_width == ffn_hidden_size(32, "swiglu")
    model = GPT(cfg)
    assert model.rope.base == 10000.0
    assert model.blocks[0].mlp.up.weight.shape == (ffn_hidden_size(32, "swiglu"), 32)


def test_ffn_hidden_sets_the_width_of_every_block():
    model = GPT(tiny(mlp="swiglu", ffn_hidden=44))
    for block in model.blocks:
        assert block.mlp.gate.weight.shape == block.mlp.up.weight.shape == (44, 32)
        assert block.mlp.down.weight.shape == (32, 44)


def test_rope_theta_is_used_by_every_block():
    torch.manual_seed(0)
    model = GPT(tiny(pos="rope", rope_theta=500000.0)).eval()
    assert model.rope.base == 500000.0
    assert all(block.attn.rope is model.rope for block in model.blocks)
    x = ids()
    # the same weights with the default base: another model
    assert not torch.allclose(model(x)[0], _same_weights(model, rope_theta=10000.0)(x)[0],
                              atol=1e-4)


def test_config_saved_before_the_new_fields_still_loads():
    """model.json and safetensors metadata hold asdict(config); older files lack the new keys."""
    old = {"vocab_size": 65, "block_size": 128, "n_layer": 6, "n_head": 4, "n_embd": 128,
           "n_kv_head": None, "dropout": 0.0, "bias": True, "pos": "learned", "norm": "layer",
           "mlp": "gelu", "tie_weights": True}
    cfg = GPTConfig(**old)
    assert (cfg.rope_theta, cfg.ffn_hidden, cfg.ffn_width) == (10000.0, None, 512)
    assert GPTConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg        # and round-trips
    custom = tiny(pos="rope", rope_theta=5e5, mlp="gelu_exact", ffn_hidden=100)
    assert GPTConfig(**json.loads(json.dumps(asdict(custom)))) == custom


@pytest.mark.parametrize("name", ["shakespeare-char", "shakespeare-char-draft"])
def test_shipped_checkpoints_load_unchanged(name):
    from safetensors import safe_open

    from utils.pretrained import load_model_file
    path = CHECKPOINTS / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["config"])
    assert "ffn_hidden" not in stored and "rope_theta" not in stored   # saved before them
    model, _, _ = load_model_file(path)         # strict load + checksum of every weight
    assert model.config == GPTConfig(**stored)
    assert model.blocks[0].mlp.up.weight.shape[0] == 4 * stored["n_embd"]


# ------------------------------------------------------------------------------- block


def test_block_is_pre_norm_with_residuals():
    torch.manual_seed(0)
    block = Block(tiny()).eval()
    x = torch.randn(2, 5, 32)
    h = x + block.attn(block.norm1(x), is_causal=True)
    expected = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(block(x), expected)


def test_block_returns_causal_attention_weights():
    block = Block(tiny()).eval()
    y, w = block(torch.randn(2, 5, 32), need_weights=True)
    assert y.shape == (2, 5, 32) and w.shape == (2, 4, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    assert (w.triu(1) == 0).all()


# --------------------------------------------------------------------------------- GPT


@pytest.mark.parametrize("style", ALL_STYLES)
def test_gpt_shapes_loss_and_causality(style):
    torch.manual_seed(0)
    model = GPT(tiny(**style)).eval()
    x, y = ids(), ids(seed=1)
    logits, loss = model(x, y)
    assert logits.shape == (2, 16, 37)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 37), y.reshape(-1)))
    # changing the last token must not change any earlier prediction
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 37
    torch.testing.assert_close(model(x2)[0][:, :-1], logits[:, :-1])
    assert not torch.allclose(model(x2)[0][:, -1], logits[:, -1])


def test_targets_minus_100_are_ignored():
    # -100 is PyTorch's default ignore_index: chapter 10 masks prompts and padding with it
    model = GPT(tiny()).eval()
    x, y = ids(), ids(seed=1)
    masked = y.clone()
    masked[:, :10] = -100
    _, loss = model(x, masked)
    logits, _ = model(x)
    expected = F.cross_entropy(logits[:, 10:].reshape(-1, 37), y[:, 10:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_no_targets_no_loss_and_too_long_input_is_explained():
    model = GPT(tiny())
    assert model(ids())[1] is None
    with pytest.raises(ValueError, match="block_size"):
        model(ids(T=17))


@pytest.mark.parametrize("style", ALL_STYLES)
def test_hidden_states_and_attentions(style):
    model = GPT(tiny(**style)).eval()
    x = ids()
    out = model(x, return_hidden=True, return_attention=True)
    assert isinstance(out, GPTOutput)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert all(h.shape == (2, 16, 32) for h in out.hidden_states)
    assert all(a.shape == (2, 4, 16, 16) for a in out.attentions)
    # the weights path and the fused path compute the same model
    torch.testing.assert_close(out.logits, model(x)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.unembed(out.hidden_states[-1]), out.logits)
    only_hidden = model(x, return_hidden=True)
    assert only_hidden.attentions is None and len(only_hidden.hidden_states) == 3


@pytest.mark.parametrize("pos, invariant", [("rope", True), ("alibi", True), ("none", True),
                                            ("learned", False)])
def test_offset_shifts_positions(pos, invariant):
    """RoPE and ALiBi see only relative positions: starting at position 5 changes nothing."""
    torch.manual_seed(0)
    model = GPT(tiny(pos=pos, block_size=32)).eval()
    x = ids()
    same = torch.allclose(model(x)[0], model(x, offset=5)[0], atol=1e-5)
    assert same == invariant


def test_alibi_bias_is_used():
    model = GPT(tiny(pos="alibi")).eval()
    x = ids()
    with_bias = model(x)[0]
    model.alibi_slopes.zero_()
    assert not torch.allclose(model(x)[0], with_bias)
    torch.testing.assert_close(model(x)[0], _same_weights(model, pos="none")(x)[0])


def _same_weights(model, **overrides):
    other = GPT(GPTConfig(**{**model.config.__dict__, **overrides})).eval()
    other.load_state_dict(model.state_dict())
    return other


def test_rope_is_used_in_attention():
    model = GPT(tiny(pos="rope")).eval()
    x = ids()
    assert not torch.allclose(model(x)[0], _same_weights(model, pos="none")(x)[0])


def test_padding_mask_combines_with_causal_mask():
    model = GPT(tiny()).eval()
    x = ids(B=1)
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[:, 0] = False                         # nobody may look at token 0 ...
    keep[0, 0] = True                          # ... except token 0 itself
    logits = model(x, mask=keep)[0]
    x2 = x.clone()
    x2[0, 0] = (x2[0, 0] + 1) % 37             # so changing it changes only its own row
    logits2 = model(x2, mask=keep)[0]
    torch.testing.assert_close(logits2[:, 1:], logits[:, 1:])
    out = model(x, mask=keep, return_attention=True)
    assert (out.attentions[0][..., 1:, 0] == 0).all()


def test_weight_tying_and_init():
    torch.manual_seed(0)
    cfg = tiny(n_layer=8, n_embd=128, vocab_size=500)
    model = GPT(cfg)
    assert model.lm_head.weight is model.embed.token.weight
    assert GPT(tiny(tie_weights=False)).lm_head.weight is not GPT(tiny()).embed.token.weight
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in model.blocks:
        assert abs(block.attn.proj.weight.std().item() - scaled) < 0.1 * scaled
        assert abs(block.mlp.down.weight.std().item() - scaled) < 0.1 * scaled
        assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.norm1.weight == 1)


STYLES_FOR_COUNTS = ALL_STYLES + [dict(tie_weights=False, bias=False),
                                  dict(norm="rms", mlp="swiglu", n_kv_head=1),
                                  dict(mlp="gelu_exact", ffn_hidden=100),
                                  dict(LLAMA_STYLE, ffn_hidden=44, rope_theta=500000.0)]


@pytest.mark.parametrize("style", STYLES_FOR_COUNTS)
def test_parameter_breakdown_matches_the_built_model(style):
    cfg = tiny(**style)
    model = GPT(cfg)
    parts = parameter_breakdown(cfg)
    assert parts["total"] == count_parameters(model) == model.get_num_params()
    assert parts["ffn"] == sum(count_parameters(b.mlp) for b in model.blocks)
    assert parts["attention"] == sum(count_parameters(b.attn) for b in model.blocks)
    assert parts["embedding"] == count_parameters(model.embed)
    assert model.get_num_params(non_embedding=True) == parts["total"] - parts["embedding"] + (
        cfg.vocab_size * cfg.n_embd if cfg.tie_weights else 0)


def test_famous_parameter_counts():
    gpt2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert parameter_breakdown(gpt2)["total"] == 124_439_808
    llama = {k: v for k, v in LLAMA_STYLE.items() if k != "n_kv_head"}
    llama3_8b = GPTConfig(vocab_size=128256, block_size=8192, n_layer=32, n_head=32,
                          n_embd=4096, n_kv_head=8, ffn_hidden=14336, rope_theta=500000.0,
                          **llama)
    assert parameter_breakdown(llama3_8b)["total"] == 8_030_261_248
    # the published counts of the models' own safetensors files
    llama2_7b = GPTConfig(vocab_size=32000, block_size=4096, n_layer=32, n_head=32,
                          n_embd=4096, ffn_hidden=11008, **llama)
    assert parameter_breakdown(llama2_7b)["total"] == 6_738_415_616
    tinyllama = GPTConfig(vocab_size=32000, block_size=2048, n_layer=22, n_head=32,
                          n_embd=2048, n_kv_head=4, ffn_hidden=5632, **llama)
    assert parameter_breakdown(tinyllama)["total"] == 1_100_048_384
    # the 8/3 rule would miss Llama 2's real width (11008): the count needs the field
    assert parameter_breakdown(GPTConfig(**{**asdict(llama2_7b), "ffn_hidden": None}))[
        "total"] != 6_738_415_616


def test_flops_per_token_is_about_two_n_forward_six_n_training():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    n = parameter_breakdown(cfg)["total"] - 1024 * 768   # minus the position table (a lookup)
    fwd = estimate_flops_per_token(cfg, seq_len=1)
    assert 0.98 < fwd / (2 * n) < 1.0                     # only biases/norms left out
    assert estimate_flops_per_token(cfg, training=True, seq_len=1) == 3 * fwd
    extra = estimate_flops_per_token(cfg, seq_len=1025) - fwd
    assert extra == 4 * 12 * 1024 * 768                   # attention grows with context


def test_crop_block_size():
    model = GPT(tiny(block_size=16))
    model.crop_block_size(8)
    assert model.embed.position.weight.shape == (8, 32) and model.config.block_size == 8
    assert model(ids(T=8))[0].shape == (2, 8, 37)
    with pytest.raises(ValueError, match="block_size"):
        model.crop_block_size(9)


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE, dict(pos="alibi")])
def test_backward_gives_finite_gradients_everywhere(style):
    model = GPT(tiny(dropout=0.1, **style))
    _, loss = model(ids(), ids(seed=1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE, dict(pos="alibi")])
def test_bf16_autocast_close_to_float32(style):
    torch.manual_seed(0)
    model = GPT(tiny(**style)).eval()
    x, y = ids(), ids(seed=1)
    _, loss32 = model(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = model(x, y)
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.02


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE, dict(pos="alibi")])
def test_traces_as_one_graph_for_torch_compile(style):
    """fullgraph=True fails on any graph break; aot_eager traces without compiling C++."""
    torch._dynamo.reset()
    model = GPT(tiny(**style)).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, y = ids(), ids(seed=1)
    torch.testing.assert_close(compiled(x, y)[1], model(x, y)[1])

