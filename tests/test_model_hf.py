"""Our GPT against Hugging Face transformers' GPT-2, Llama and Mistral: same weights, same
logits.

Every model here is built from a small random config; nothing is downloaded. The widths and
RoPE bases are those of real checkpoints, scaled down: Llama-2-7B's feed-forward is
11008 / 4096 = 2.6875 x hidden_size, TinyLlama's 5632 / 2048 = 2.75 x; Llama 3 turns RoPE with
base 500000, Mistral 7B v0.2 with 1000000.
"""

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")  # pinned in requirements.txt

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from utils.hf_convert import (  # noqa: E402
    _interleave_rope_rows,
    gpt2_config_from_hf,
    gpt_from_hf,
    gpt_from_hf_pretrained,
    llama_config_from_hf,
    load_hf_gpt2_state_dict,
    load_hf_llama_state_dict,
)
from utils.layers import ffn_hidden_size  # noqa: E402
from utils.model import GPT, GPTConfig  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)
ATOL = 1e-5


def gpt2_hf(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(vocab_size=101, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                    initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    settings.update(overrides)
    model = GPT2LMHeadModel(GPT2Config(**settings)).eval()
    _randomise_norms(model)
    return model


def llama_hf(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(vocab_size=101, hidden_size=48, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
                    rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    settings.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    _randomise_norms(model)
    return model


def mistral_hf(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(vocab_size=101, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=None,
                    max_position_embeddings=40, sliding_window=None, rms_norm_eps=1e-5,
                    initializer_range=0.2, bos_token_id=0, eos_token_id=0,
                    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    settings.update(overrides)
    model = MistralForCausalLM(MistralConfig(**settings)).eval()
    _randomise_norms(model)
    return model


def _randomise_norms(model):
    """Norm weights start at exactly 1 (and biases at 0), which would hide a mixed-up copy."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)


def tokens(T, vocab=101, B=3, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_gpt2_logits_match_transformers():
    hf = gpt2_hf()
    ours = gpt_from_hf(hf)
    assert ours.config.pos == "learned" and ours.config.tie_weights
    x = tokens(32)
    expected = hf(x).logits
    assert expected.abs().max() > 1.0            # the comparison is not between near-zeros
    torch.testing.assert_close(ours(x)[0], expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_gpt2_untied_and_hidden_states_match():
    hf = gpt2_hf(seed=3, tie_word_embeddings=False, n_layer=2)
    with torch.no_grad():
        hf.lm_head.weight.normal_(0, 0.2)        # really different from wte
    ours = gpt_from_hf(hf)
    assert not ours.config.tie_weights
    x = tokens(20)
    out = hf(x, output_hidden_states=True)
    mine = ours(x, return_hidden=True)
    torch.testing.assert_close(mine.logits, out.logits, atol=ATOL, rtol=0)
    # HF's last hidden state is after the final norm; the earlier ones are the residual stream
    assert len(mine.hidden_states) == len(out.hidden_states) == 3
    for h_ours, h_hf in zip(mine.hidden_states[:-1], out.hidden_states[:-1], strict=True):
        torch.testing.assert_close(h_ours, h_hf, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(mine.hidden_states[-1]), out.hidden_states[-1],
                               atol=ATOL, rtol=0)


@torch.no_grad()
def test_gpt2_weights_need_the_conv1d_transpose():
    """The check above can fail: copying Conv1D weights untransposed gives other logits."""
    hf = gpt2_hf(n_embd=48, n_inner=None)
    ours = gpt_from_hf(hf)
    # square matrices (attn.c_proj) load either way round; transpose them back to break it
    for block in ours.blocks:
        block.attn.proj.weight.copy_(block.attn.proj.weight.t().clone())
    x = tokens(16)
    assert not torch.allclose(ours(x)[0], hf(x).logits, atol=1e-3)


@pytest.mark.parametrize("overrides", [
    {},                                                     # GQA, 2 query heads per kv head
    dict(num_key_value_heads=4),                            # plain multi-head
    dict(num_key_value_heads=1, tie_word_embeddings=True),  # multi-query, tied
    dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),  # Llama 3's base
    dict(intermediate_size=129),                            # Llama-2-7B's 2.6875 x, not 8/3
    dict(intermediate_size=132, num_key_value_heads=1),     # TinyLlama's 2.75 x
    dict(intermediate_size=100,                             # a d_ff of one's own (CS336 style)
         rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
])
@torch.no_grad()
def test_llama_logits_match_transformers(overrides):
    hf = llama_hf(**overrides)
    ours = gpt_from_hf(hf)
    assert (ours.config.pos, ours.config.norm, ours.config.mlp) == ("rope", "rms", "swiglu")
    assert ours.config.ffn_hidden == hf.config.intermediate_size
    assert ours.config.rope_theta == hf.config.rope_parameters["rope_theta"]
    assert ours.rope.base == ours.config.rope_theta         # built with it, not patched in
    x = tokens(40)
    expected = hf(x).logits
    assert expected.abs().max() > 1.0
    # float32 rounding differs between the two implementations' orders of operations by up to
    # ~1e-5 on logits of size ~2; a layout mistake is off by O(1)
    torch.testing.assert_close(ours(x)[0], expected, atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_llama_needs_the_rope_reordering():
    """Skipping the half-split -> interleaved reordering of Q/K rows breaks the match."""
    hf = llama_hf()
    ours = gpt_from_hf(hf)
    cfg = ours.config
    q_rows = cfg.n_head * cfg.head_dim
    for i, block in enumerate(ours.blocks):
        block.attn.qkv.weight[:q_rows] = hf.model.layers[i].self_attn.q_proj.weight
    x = tokens(40)
    assert not torch.allclose(ours(x)[0], hf(x).logits, atol=1e-3)


@pytest.mark.parametrize("overrides", [
    {},                                                     # no window: plain causal attention
    dict(num_key_value_heads=4, tie_word_embeddings=True, intermediate_size=176),
])
@torch.no_grad()
def test_mistral_logits_match_transformers(overrides):
    hf = mistral_hf(**overrides)
    ours = gpt_from_hf(hf)
    assert ours.config.rope_theta == 1_000_000.0 and ours.config.block_size == 40
    x = tokens(40)
    expected = hf(x).logits
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(ours(x)[0], expected, atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_mistral_sliding_window_caps_the_context_at_the_window():
    """Up to `sliding_window` tokens the window hides nothing, so our GPT (no window) matches
    there; it refuses longer inputs, where transformers' model would see fewer keys."""
    hf = mistral_hf(sliding_window=16)
    ours = gpt_from_hf(hf)
    assert ours.config.block_size == 16
    x = tokens(16)
    torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=ATOL, rtol=1e-5)
    # negative control: past the window the two really differ, so the cap is needed
    longer = tokens(40)
    full = gpt_from_hf(mistral_hf(sliding_window=None))     # same seed: the same weights
    assert not torch.allclose(full(longer)[0][:, -1], hf(longer).logits[:, -1], atol=1e-3)
    with pytest.raises(ValueError, match="block_size"):
        ours(longer)


@torch.no_grad()
def test_llama_needs_its_own_rope_base_and_ffn_width():
    """Negative controls: the match above depends on both new config fields."""
    hf = llama_hf(hidden_size=64, intermediate_size=172,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    right = gpt_from_hf(hf).config
    x = tokens(40)
    # the paper's base 10000 with Llama 3's weights: same shapes, other logits
    wrong_base = GPT(GPTConfig(**{**right.__dict__, "rope_theta": 10000.0})).eval()
    load_hf_llama_state_dict(wrong_base, hf.state_dict())
    assert not torch.allclose(wrong_base(x)[0], hf(x).logits, atol=1e-3)
    # the 8/3 rule's width (176 for 64) instead of the checkpoint's 172: the weights do not fit
    assert ffn_hidden_size(64, "swiglu") != 172
    rule_width = GPT(GPTConfig(**{**right.__dict__, "ffn_hidden": None}))
    with pytest.raises(ValueError, match="mlp.gate.weight"):
        load_hf_llama_state_dict(rule_width, hf.state_dict())


@pytest.mark.parametrize("activation, ours_mlp", [("gelu", "gelu_exact"), ("gelu_new", "gelu")])
@torch.no_grad()
def test_gpt2_exact_and_tanh_gelu_match_transformers(activation, ours_mlp):
    hf = gpt2_hf(activation_function=activation, n_inner=100)
    ours = gpt_from_hf(hf)
    assert ours.config.mlp == ours_mlp and ours.config.ffn_hidden == 100
    x = tokens(32)
    expected = hf(x).logits
    torch.testing.assert_close(ours(x)[0], expected, atol=ATOL, rtol=0)
    # negative control: the other GELU, same weights, is off by more than the tolerance
    other = {"gelu": "gelu_exact", "gelu_exact": "gelu"}[ours_mlp]
    swapped = GPT(GPTConfig(**{**ours.config.__dict__, "mlp": other})).eval()
    swapped.load_state_dict(ours.state_dict())
    assert (swapped(x)[0] - expected).abs().max() > 10 * ATOL


def test_interleave_rope_rows_pairs_i_with_i_plus_half():
    w = torch.arange(8.0).view(8, 1)                  # one head of size 8: rows 0..7
    assert _interleave_rope_rows(w, 1).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    w2 = torch.arange(8.0).view(8, 1)                 # two heads of size 4
    assert _interleave_rope_rows(w2, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_llama_configs_we_cannot_express_are_refused_clearly():
    with pytest.raises(ValueError, match="head_dim"):
        llama_config_from_hf(LlamaConfig(hidden_size=48, intermediate_size=100, head_dim=16,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="bias"):
        llama_config_from_hf(LlamaConfig(hidden_size=48, intermediate_size=128,
                                         num_attention_heads=4, attention_bias=True))
    with pytest.raises(ValueError, match="rope_type"):
        llama_config_from_hf(LlamaConfig(hidden_size=48, num_attention_heads=4, rope_parameters={
            "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}))
    with pytest.raises(ValueError, match="hidden_act"):
        llama_config_from_hf(LlamaConfig(hidden_size=48, num_attention_heads=4,
                                         hidden_act="gelu"))
    with pytest.raises(ValueError, match="activation_function"):
        gpt2_config_from_hf(GPT2Config(activation_function="relu"))


def test_converted_configs_keep_the_defaults_where_the_checkpoint_does():
    gpt2 = gpt2_config_from_hf(GPT2Config())
    assert (gpt2.mlp, gpt2.ffn_hidden, gpt2.ffn_width) == ("gelu", None, 4 * 768)
    llama = llama_config_from_hf(LlamaConfig())       # Llama-2-7B's shape, nothing built
    assert (llama.ffn_hidden, llama.rope_theta) == (11008, 10000.0)


def test_wrong_state_dict_is_refused_with_names():
    hf = gpt2_hf(n_layer=2)
    ours = GPT(gpt_from_hf(gpt2_hf(n_layer=3)).config)
    with pytest.raises(ValueError, match="h.2.ln_1.weight"):
        load_hf_gpt2_state_dict(ours, hf.state_dict())   # layer 2 missing from the checkpoint
    small = gpt2_hf(n_layer=3, n_embd=32)
    with pytest.raises(ValueError, match="shape"):
        load_hf_gpt2_state_dict(ours, small.state_dict())


@torch.no_grad()
def test_gpt_from_hf_pretrained_reads_a_saved_folder_offline(tmp_path):
    hf = gpt2_hf()
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    ours = gpt_from_hf_pretrained(str(tmp_path / "tiny-gpt2"))
    x = tokens(32)
    torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=ATOL, rtol=0)
    assert not ours.training


def test_gpt_from_hf_pretrained_unknown_folder_raises_oserror(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        gpt_from_hf_pretrained(str(tmp_path / "no-such-model"))


def test_hub_reachable_is_false_for_an_unresolvable_host():
    from utils.hf_convert import hub_reachable
    assert hub_reachable("no-such-host.invalid", timeout=1.0) is False


def _no_network(monkeypatch):
    """Record (and refuse) every name lookup: an offline load must not even try."""
    import socket
    lookups = []

    def refuse(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return lookups


def test_gpt_from_hf_pretrained_without_the_hub_fails_at_once_with_one_message(
        tmp_path, monkeypatch, capfd):
    import huggingface_hub.constants

    import utils.hf_convert as hf_convert
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_convert, "hub_reachable", lambda *a, **k: False)   # "unreachable"
    lookups = _no_network(monkeypatch)
    with pytest.raises(hf_convert.HubUnavailable, match="not reachable") as failure:
        gpt_from_hf_pretrained("gpt2", cache_dir=str(tmp_path))
    assert isinstance(failure.value, OSError)          # what a chapter's `except OSError` catches
    assert lookups == []                               # no request, so no retries
    printed = capfd.readouterr()
    assert printed.err == "" and printed.out == ""     # no retry lines, no warnings
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False   # offline mode only inside the call


def test_hf_hub_offline_is_honoured_without_probing(monkeypatch):
    import utils.hf_convert as hf_convert

    def probe(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1 is set: the Hub must not be probed")
    monkeypatch.setattr(hf_convert, "hub_reachable", probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with hf_convert.hub_offline_unless_reachable() as online:
        assert online is False


def test_a_reachable_hub_leaves_online_mode_on(monkeypatch):
    import huggingface_hub.constants

    import utils.hf_convert as hf_convert
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_convert, "hub_reachable", lambda *a, **k: True)
    with hf_convert.hub_offline_unless_reachable() as online:
        assert online is True and huggingface_hub.constants.HF_HUB_OFFLINE is False
