"""The speedruns' tricks in utils/model.py, utils/layers.py and utils/attention.py: QK-norm,
ReLU², zero-initialised output projections, logit soft-capping and activation checkpointing.

Each is off by default; every test shows the trick doing its job AND the default not doing it
(so a flag that silently did nothing would fail here)."""

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from utils.attention import KVCache
from utils.generation import generate
from utils.layers import FeedForward, HeadRMSNorm, ffn_hidden_size
from utils.model import (
    GPT,
    GPTConfig,
    count_parameters,
    estimate_flops_per_token,
    parameter_breakdown,
)


def tiny(**overrides) -> GPTConfig:
    settings = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    settings.update(overrides)
    return GPTConfig(**settings)


def ids(B=2, T=16, vocab=37, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def built(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def rms(t: torch.Tensor) -> torch.Tensor:
    return t.float().pow(2).mean(-1).sqrt()


# ------------------------------------------------------------------------- config and defaults

def test_defaults_are_off_and_old_config_dicts_still_load():
    config = tiny()
    assert (config.qk_norm, config.zero_init_proj, config.logit_softcap,
            config.checkpoint_activations, config.mlp) == (False, False, None, False, "gelu")
    old = {k: v for k, v in asdict(config).items()
           if k not in ("qk_norm", "zero_init_proj", "logit_softcap", "checkpoint_activations")}
    assert GPTConfig(**old) == config                   # a model.json from before the tricks
    # The tricks add no parameters: any of them loads today's weights.
    tricks = tiny(qk_norm=True, zero_init_proj=True, logit_softcap=10.0,
                  checkpoint_activations=True)
    assert built(tricks).state_dict().keys() == built(config).state_dict().keys()


@pytest.mark.parametrize("field, bad", [
    ("qk_norm", 1), ("qk_norm", "yes"), ("zero_init_proj", None),
    ("checkpoint_activations", 0), ("logit_softcap", 0.0), ("logit_softcap", -5.0),
    ("logit_softcap", float("inf")), ("logit_softcap", float("nan")), ("logit_softcap", True),
    ("logit_softcap", "30"), ("mlp", "relu"), ("mlp", "relu²"),
])
def test_bad_values_raise_naming_the_field(field, bad):
    with pytest.raises(ValueError, match=f"GPTConfig.{field}"):
        tiny(**{field: bad})


@pytest.mark.parametrize("field, good", [
    ("qk_norm", True), ("zero_init_proj", True), ("checkpoint_activations", True),
    ("logit_softcap", 30), ("logit_softcap", 0.5), ("mlp", "relu2"),
])
def test_good_values_are_accepted(field, good):
    assert getattr(tiny(**{field: good}), field) == good


# ------------------------------------------------------------------------------------- QK-norm

def capture_qk(model: GPT, idx: torch.Tensor, **kwargs):
    """(queries, keys) of every layer as attention uses them: the outputs of q_norm/k_norm
    when there are such modules, else cut from the qkv projection by hand."""
    seen = []
    hooks = []
    for block in model.blocks:
        attn = block.attn
        if attn.q_norm is not None:
            hooks.append(attn.q_norm.register_forward_hook(lambda m, a, out: seen.append(out)))
            hooks.append(attn.k_norm.register_forward_hook(lambda m, a, out: seen.append(out)))
        else:
            def split(m, a, out, attn=attn):
                q, k, _ = out.split([attn.n_heads * attn.d_head, attn.n_kv_heads * attn.d_head,
                                     attn.n_kv_heads * attn.d_head], dim=-1)
                seen.extend([q.unflatten(-1, (attn.n_heads, attn.d_head)),
                             k.unflatten(-1, (attn.n_kv_heads, attn.d_head))])
            hooks.append(attn.qkv.register_forward_hook(split))
    with torch.no_grad():
        model(idx, **kwargs)
    for h in hooks:
        h.remove()
    return seen[0::2], seen[1::2]


@pytest.mark.parametrize("style", [{}, dict(pos="rope", n_kv_head=1, bias=False, norm="rms")])
def test_qk_norm_gives_unit_rms_queries_and_keys_and_off_does_not(style):
    on, off = built(tiny(qk_norm=True, **style)), built(tiny(**style))
    qs, ks = capture_qk(on, ids())
    assert len(qs) == len(ks) == 2
    for t in qs + ks:
        torch.testing.assert_close(rms(t), torch.ones_like(rms(t)), atol=1e-3, rtol=0)
    assert ks[0].shape[1] == on.config.kv_heads         # GQA: normalised before repeat_kv
    qs, ks = capture_qk(off, ids())                     # negative control: raw projections
    assert all((rms(t) - 1).abs().max() > 0.3 for t in qs + ks)
    off.load_state_dict(on.state_dict())               # same weights: only the norm differs
    assert not torch.allclose(on(ids())[0], off(ids())[0], atol=1e-4)


def test_head_rms_norm_has_no_parameters_and_works_in_bfloat16():
    norm = HeadRMSNorm()
    assert list(norm.parameters()) == []
    x = torch.randn(2, 3, 5, 8, dtype=torch.bfloat16) * 7
    y = norm(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(rms(y), torch.ones(2, 3, 5), atol=1e-2, rtol=0)
    assert (rms(x) - 1).abs().min() > 1                  # the input was far from unit RMS


@pytest.mark.parametrize("qk_norm", [True, False])
def test_kv_cache_holds_normalised_keys_and_matches_the_full_pass(qk_norm):
    model = built(tiny(qk_norm=qk_norm, pos="rope", n_kv_head=2, bias=False)).eval()
    idx = ids(T=12)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config.n_layer)
        steps = [model(idx[:, :5], kv_cache=cache)[0]]
        steps += [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    key_rms = rms(cache.keys[0])                         # RoPE turns pairs: the norm survives
    assert cache.keys[0].shape[1] == 2
    if qk_norm:
        torch.testing.assert_close(key_rms, torch.ones_like(key_rms), atol=1e-3, rtol=0)
    else:
        assert (key_rms - 1).abs().max() > 0.3


# -------------------------------------------------------------------------------------- ReLU²

def test_relu2_is_relu_squared_and_not_gelu():
    torch.manual_seed(0)
    ffn = FeedForward(8, "relu2")
    x = torch.randn(3, 5, 8)
    expected = ffn.down(torch.relu(ffn.up(x)) ** 2)
    torch.testing.assert_close(ffn(x), expected)
    gelu = FeedForward(8, "gelu")
    gelu.load_state_dict(ffn.state_dict())              # same two matrices, other activation
    assert not torch.allclose(gelu(x), ffn(x), atol=1e-3)
    h = ffn.up(x)                                       # sparse: every negative unit gives 0
    assert (h < 0).any()
    hidden = []
    ffn.down.register_forward_hook(lambda m, a, out: hidden.append(a[0]))
    ffn(x)
    assert torch.equal(hidden[0] == 0, h <= 0)


def test_relu2_width_parameters_and_flops_are_those_of_gelu():
    assert ffn_hidden_size(48, "relu2") == ffn_hidden_size(48, "gelu") == 192
    assert ffn_hidden_size(48, "swiglu") != 192         # the rule really depends on the kind
    for bias in (True, False):
        cfg, gelu = tiny(mlp="relu2", bias=bias), tiny(bias=bias)
        assert parameter_breakdown(cfg)["total"] == count_parameters(GPT(cfg))
        assert parameter_breakdown(cfg) == parameter_breakdown(gelu)
        assert estimate_flops_per_token(cfg) == estimate_flops_per_token(gelu)
        assert estimate_flops_per_token(tiny(mlp="swiglu", bias=bias)) != \
            estimate_flops_per_token(cfg)


# ------------------------------------------------------------------------ zero-init projections

def test_zero_init_proj_makes_every_block_the_identity_and_the_default_does_not():
    x = torch.randn(2, 16, 32)
    for bias in (True, False):
        zero = built(tiny(zero_init_proj=True, bias=bias))
        for block in zero.blocks:
            assert torch.equal(block(x), x)
            assert block.attn.qkv.weight.abs().sum() > 0    # only the output layers are 0
            assert block.mlp.up.weight.abs().sum() > 0
        idx = ids()
        logits, _ = zero(idx)
        torch.testing.assert_close(logits, zero.unembed(zero.embed(idx)))
        default = built(tiny(bias=bias))
        assert all(not torch.allclose(block(x), x, atol=1e-4) for block in default.blocks)


def test_zero_init_proj_still_learns():
    model = built(tiny(zero_init_proj=True))
    _, loss = model(ids(), ids(seed=1))
    loss.backward()
    for block in model.blocks:                          # the zero layers get a gradient,
        assert block.attn.proj.weight.grad.abs().sum() > 0
        assert block.mlp.down.weight.grad.abs().sum() > 0
    # ...and nothing behind them does yet (their output is multiplied by zero)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() == 0


# ---------------------------------------------------------------------------- logit soft-cap

def loud(config: GPTConfig) -> GPT:
    """A model whose raw logits are far beyond +-10."""
    model = built(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(500)
    return model


def test_softcap_bounds_logits_in_forward_loss_and_cache_and_the_default_does_not():
    cap = 10.0
    capped, free = loud(tiny(logit_softcap=cap)), loud(tiny())
    idx, targets = ids(), ids(seed=1)
    logits, loss = capped(idx, targets)
    assert logits.abs().max() <= cap
    assert logits.abs().max() > 0.9 * cap                # it bites: the raw ones are larger
    raw, raw_loss = free(idx, targets)
    assert raw.abs().max() > 3 * cap
    torch.testing.assert_close(logits, cap * torch.tanh(raw / cap))
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    assert not torch.allclose(loss, raw_loss)
    with torch.no_grad():                                # the cached path (generation) too
        cached, _ = capped(idx[:, :4], kv_cache=KVCache(capped.config.n_layer))
    assert cached.abs().max() <= cap
    hidden = capped(idx, return_hidden=True).hidden_states
    assert capped.unembed(hidden[-1]).abs().max() <= cap  # the logit lens sees capped logits


def test_softcap_is_nearly_the_identity_for_small_logits():
    model = built(tiny(logit_softcap=30.0))
    logits, _ = model(ids())
    raw = model.lm_head(model.norm(model(ids(), return_hidden=True).hidden_states[-1]))
    assert raw.abs().max() < 1                           # a fresh model's logits are small
    torch.testing.assert_close(logits, raw, atol=1e-3, rtol=0)


def test_generation_samples_from_the_capped_logits():
    prompt = ids(B=1, T=4).expand(400, 4)
    g = torch.Generator().manual_seed(0)
    # A tiny cap flattens any logits: samples spread over the vocabulary. The same weights
    # without a cap are so confident that every sample is the same token.
    flat = generate(loud(tiny(logit_softcap=1e-3)).eval(), prompt, 1, generator=g)[:, -1]
    sharp = generate(loud(tiny()).eval(), prompt, 1, generator=g)[:, -1]
    assert flat.unique().numel() > 25
    assert sharp.unique().numel() == 1


# ------------------------------------------------------------------- activation checkpointing

def saved_tensors(model: GPT, *args, **kwargs):
    """(loss or logits, number of tensors autograd saved for the backward pass, their floats)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args, **kwargs)
    return out, len(sizes), sum(sizes)


@pytest.mark.parametrize("style", [dict(dropout=0.0), dict(dropout=0.2),
                                   dict(pos="rope", norm="rms", mlp="swiglu", n_kv_head=2,
                                        qk_norm=True, bias=False)])
def test_checkpointing_gives_the_same_loss_and_gradients_from_fewer_saved_tensors(style):
    plain = built(tiny(n_layer=3, **style)).train()
    ckpt = built(tiny(n_layer=3, checkpoint_activations=True, **style)).train()
    ckpt.load_state_dict(plain.state_dict())
    idx, targets = ids(), ids(seed=1)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)                          # the same dropout masks for both
        (_, loss), n, floats = saved_tensors(model, idx, targets)
        loss.backward()
        results.append((loss, n, floats, {k: p.grad for k, p in model.named_parameters()}))
    (loss_p, n_p, floats_p, grads_p), (loss_c, n_c, floats_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_p, atol=1e-6, rtol=0)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_c[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert n_c < n_p / 3 and floats_c < floats_p / 3
    if style.get("dropout"):                            # the control: other masks, other loss
        torch.manual_seed(124)
        assert not torch.allclose(ckpt(idx, targets)[1], loss_c)


def test_checkpointing_is_not_used_in_eval_no_grad_cache_or_attention_maps():
    plain = built(tiny(n_layer=3))
    ckpt = built(tiny(n_layer=3, checkpoint_activations=True))
    idx, targets = ids(), ids(seed=1)
    _, n_train, _ = saved_tensors(ckpt.train(), idx, targets)
    _, n_plain, _ = saved_tensors(plain.train(), idx, targets)
    assert n_train < n_plain                            # on while training...
    _, n_eval, _ = saved_tensors(ckpt.eval(), idx, targets)
    _, n_plain_eval, _ = saved_tensors(plain.eval(), idx, targets)
    assert n_eval == n_plain_eval                       # ...off in eval (grad still enabled)
    with torch.no_grad():
        _, n_nograd, _ = saved_tensors(ckpt.train(), idx, targets)
    assert n_nograd == 0
    out, n_attn, _ = saved_tensors(ckpt.train(), idx, targets, return_attention=True)
    _, n_attn_plain, _ = saved_tensors(plain.train(), idx, targets, return_attention=True)
    assert n_attn == n_attn_plain and len(out.attentions) == 3
    cache = KVCache(3)
    (logits, _), n_cache, _ = saved_tensors(ckpt.train(), idx[:, :4], kv_cache=cache)
    assert cache.seq_len == 4 and n_cache > 0           # the cache path ran the blocks itself
    _, n_cache_plain, _ = saved_tensors(plain.train(), idx[:, :4], kv_cache=KVCache(3))
    assert n_cache == n_cache_plain
