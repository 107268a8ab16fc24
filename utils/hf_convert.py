"""Load Hugging Face GPT-2, Llama and Mistral weights into our GPT (chapter 05).

Our `GPT` computes the same function as `transformers`' GPT-2 and Llama; only the names and a
few layouts differ. The converters below are the whole translation:

GPT-2 (`GPT2LMHeadModel`)
    Its linear layers are `Conv1D` modules, which store the weight as [in, out]; `nn.Linear`
    stores [out, in], so every one of them is transposed. `c_attn` already fuses Q, K and V
    in our order (all Q heads, then K, then V), so it maps onto `attn.qkv` directly.

Llama (`LlamaForCausalLM`)
    Q, K and V are three matrices; we stack them into the fused `attn.qkv`. The one real
    difference is RoPE's pairing of dimensions. Ours (chapter 02) rotates interleaved pairs
    (0, 1), (2, 3), ...; Hugging Face's `rotate_half` pairs dimension i with i + d/2. We keep
    our convention and reorder the rows of each Q and K head instead (row i -> 2i and
    row i + d/2 -> 2i + 1). The same reordering of q and k leaves every dot product q . k,
    and so every attention score, unchanged.

Mistral (`MistralForCausalLM`)
    Llama's layout and names. Its one addition, sliding-window attention, changes nothing
    for sequences no longer than the window, so we cap `block_size` at the window.

`gpt_from_hf(hf_model)` converts a model already in memory; `gpt_from_hf_pretrained(name)`
loads one by name or from a folder first. (This module imports the model, never the
reverse: `utils.model` knows nothing of Hugging Face.)

`transformers` is imported only inside the functions that need it: it is slow to import and
the rest of the course does not need it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import torch
from torch import nn

from utils.model import GPT, GPTConfig

# GPT2Config.activation_function -> our mlp. "gelu_new" is GPT-2's own tanh approximation.
GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}


def gpt2_config_from_hf(hf_config) -> GPTConfig:
    """Our GPTConfig for a `transformers.GPT2Config`."""
    activation = hf_config.activation_function
    if activation not in GPT2_ACTIVATIONS:
        raise ValueError(f"GPT2Config.activation_function={activation!r}: our FeedForward "
                         f"has GELU as {sorted(GPT2_ACTIVATIONS)} only")
    return GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
                     n_layer=hf_config.n_layer, n_head=hf_config.n_head,
                     n_embd=hf_config.n_embd, bias=True, pos="learned", norm="layer",
                     mlp=GPT2_ACTIVATIONS[activation], ffn_hidden=hf_config.n_inner,
                     tie_weights=hf_config.tie_word_embeddings)


def llama_config_from_hf(hf_config) -> GPTConfig:
    """Our GPTConfig for a `transformers.LlamaConfig` or `MistralConfig` (the parts our GPT
    can express; anything else raises a ValueError that names it)."""
    kind = type(hf_config).__name__
    d, h = hf_config.hidden_size, hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or d // h
    if head_dim * h != d:
        raise ValueError(f"{kind}.head_dim={head_dim} with {h} heads != hidden_size={d}; "
                         f"our attention splits hidden_size evenly over the heads")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"{kind}.hidden_act={hf_config.hidden_act!r}: our SwiGLU gates "
                         f"with SiLU")
    # transformers 5 keeps the base in rope_parameters; older configs have rope_theta
    rope = getattr(hf_config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{kind} rope_type={rope.get('rope_type')!r}: only plain RoPE "
                         f"('default') is implemented")
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ValueError(f"{kind} with attention_bias/mlp_bias: our Llama layout has no biases")
    block_size = hf_config.max_position_embeddings
    window = getattr(hf_config, "sliding_window", None)
    if window is not None and window < block_size:
        # Up to `window` tokens, attending to the last `window` keys is attending to all.
        block_size = window
    return GPTConfig(vocab_size=hf_config.vocab_size, block_size=block_size,
                     n_layer=hf_config.num_hidden_layers, n_head=h, n_embd=d,
                     n_kv_head=hf_config.num_key_value_heads, bias=False, pos="rope",
                     rope_theta=theta, norm="rms", mlp="swiglu",
                     ffn_hidden=hf_config.intermediate_size,
                     tie_weights=hf_config.tie_word_embeddings)


class _Checkpoint(dict):
    """A state dict whose missing keys raise a ValueError that says what is wrong."""

    def __missing__(self, key):
        raise ValueError(f"the checkpoint has no tensor {key!r}: it was saved from a model "
                         f"with another shape (layers, names) than this GPT")


def _set_norm_eps(model: GPT, eps: float) -> None:
    for module in model.modules():
        if hasattr(module, "eps") and isinstance(getattr(module, "weight", None), nn.Parameter):
            module.eps = eps


@torch.no_grad()
def load_hf_gpt2_state_dict(model: GPT, state_dict: dict[str, torch.Tensor]) -> GPT:
    """Copy a `GPT2LMHeadModel` state dict into `model` (configured by gpt2_config_from_hf)."""
    sd = _Checkpoint({k.removeprefix("transformer."): v for k, v in state_dict.items()})
    ours: dict[str, torch.Tensor] = {
        "embed.token.weight": sd["wte.weight"],
        "embed.position.weight": sd["wpe.weight"],
        "norm.weight": sd["ln_f.weight"],
        "norm.bias": sd["ln_f.bias"],
    }
    conv1d = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
              "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
    for i in range(model.config.n_layer):
        for hf_norm, our_norm in (("ln_1", "norm1"), ("ln_2", "norm2")):
            for p in ("weight", "bias"):
                ours[f"blocks.{i}.{our_norm}.{p}"] = sd[f"h.{i}.{hf_norm}.{p}"]
        for hf_name, our_name in conv1d.items():
            ours[f"blocks.{i}.{our_name}.weight"] = sd[f"h.{i}.{hf_name}.weight"].t()  # [in, out]
            ours[f"blocks.{i}.{our_name}.bias"] = sd[f"h.{i}.{hf_name}.bias"]
    if not model.config.tie_weights:
        ours["lm_head.weight"] = _Checkpoint(state_dict)["lm_head.weight"]
    _copy_into(model, ours)
    return model


def _interleave_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from half-split RoPE pairs (i, i + d/2) to interleaved (2i, 2i+1)."""
    out_features, d_in = w.shape
    head_dim = out_features // n_heads
    # [heads, 2 halves, d/2, in] -> [heads, d/2, 2, in]: row i of each half lands next to its twin
    return w.view(n_heads, 2, head_dim // 2, d_in).transpose(1, 2).reshape(out_features, d_in)


@torch.no_grad()
def load_hf_llama_state_dict(model: GPT, state_dict: dict[str, torch.Tensor]) -> GPT:
    """Copy a `LlamaForCausalLM` (or `MistralForCausalLM`) state dict into `model`
    (configured by llama_config_from_hf)."""
    sd = _Checkpoint({k.removeprefix("model."): v for k, v in state_dict.items()})
    cfg = model.config
    ours: dict[str, torch.Tensor] = {"embed.token.weight": sd["embed_tokens.weight"],
                                     "norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layer):
        attn, mlp = f"layers.{i}.self_attn", f"layers.{i}.mlp"
        q = _interleave_rope_rows(sd[f"{attn}.q_proj.weight"], cfg.n_head)
        k = _interleave_rope_rows(sd[f"{attn}.k_proj.weight"], cfg.kv_heads)
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, sd[f"{attn}.v_proj.weight"]])
        ours[f"blocks.{i}.attn.proj.weight"] = sd[f"{attn}.o_proj.weight"]
        for name in ("gate", "up", "down"):
            ours[f"blocks.{i}.mlp.{name}.weight"] = sd[f"{mlp}.{name}_proj.weight"]
        ours[f"blocks.{i}.norm1.weight"] = sd[f"layers.{i}.input_layernorm.weight"]
        ours[f"blocks.{i}.norm2.weight"] = sd[f"layers.{i}.post_attention_layernorm.weight"]
    if not cfg.tie_weights:
        ours["lm_head.weight"] = _Checkpoint(state_dict)["lm_head.weight"]
    _copy_into(model, ours)
    return model


def _copy_into(model: GPT, ours: dict[str, torch.Tensor]) -> None:
    """Copy every tensor, insisting that each of the model's parameters got exactly one."""
    params = dict(model.named_parameters())   # a tied lm_head.weight is listed once, as embed's
    missing = sorted(set(params) - set(ours))
    unknown = sorted(set(ours) - set(params))
    if missing or unknown:
        raise ValueError(f"state dict does not fit this GPT: missing {missing}, unexpected {unknown}")
    for name, tensor in ours.items():
        if params[name].shape != tensor.shape:
            raise ValueError(f"{name}: the checkpoint has shape {tuple(tensor.shape)}, "
                             f"the model {tuple(params[name].shape)}")
        params[name].copy_(tensor)


def gpt_from_hf(hf_model) -> GPT:
    """Our GPT holding the weights of a `transformers` GPT-2, Llama or Mistral causal LM."""
    hf_config = hf_model.config
    state_dict = hf_model.state_dict()
    if hf_config.model_type == "gpt2":
        model = GPT(gpt2_config_from_hf(hf_config))
        _set_norm_eps(model, hf_config.layer_norm_epsilon)
        load_hf_gpt2_state_dict(model, state_dict)
    elif hf_config.model_type in ("llama", "mistral"):
        model = GPT(llama_config_from_hf(hf_config))
        _set_norm_eps(model, hf_config.rms_norm_eps)
        load_hf_llama_state_dict(model, state_dict)
    else:
        raise ValueError(f"model_type={hf_config.model_type!r}: only the 'gpt2', 'llama' and "
                         f"'mistral' layouts are converted")
    return model.to(next(hf_model.parameters()).dtype).eval()


class HubUnavailable(OSError):
    """A model name could not be loaded: the Hub is not reachable and no copy is cached."""


def gpt_from_hf_pretrained(name_or_path: str, **kwargs) -> GPT:
    """`transformers.AutoModelForCausalLM.from_pretrained(name_or_path)`, converted to our GPT.

    A folder written by `save_pretrained` loads as it is. A name like "gpt2" is fetched from
    the Hugging Face Hub, or read from its local cache when the Hub does not answer (see
    `hub_offline_unless_reachable`); when neither works it raises `HubUnavailable` (an
    OSError) within seconds, with one message that says so.
    """
    from transformers import AutoModelForCausalLM
    if os.path.isdir(name_or_path):
        return gpt_from_hf(AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))
    with hub_offline_unless_reachable() as online:
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        except OSError:
            if online:
                raise
            raise HubUnavailable(
                f"cannot load {name_or_path!r}: it is not a folder, the Hugging Face Hub is not "
                f"reachable (or HF_HUB_OFFLINE is set) and no copy is cached") from None
    return gpt_from_hf(hf_model)


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """True when the Hugging Face Hub answers on port 443 within `timeout` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_requested() -> bool:
    from huggingface_hub import constants
    set_in_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return constants.HF_HUB_OFFLINE or set_in_env


@contextlib.contextmanager
def hub_offline_unless_reachable(timeout: float = 2.0) -> Iterator[bool]:
    """Inside this block `transformers` uses the Hub only if it answers; yields True if it does.

    Offline, `from_pretrained` retries for half a minute (even with `local_files_only=True`,
    for the adapter file it looks up first) and prints a line for every retry. So we ask once,
    with a short timeout, and when the Hub does not answer (or HF_HUB_OFFLINE=1 is set) switch
    on huggingface_hub's offline mode for the block: every load then goes straight to the
    local cache and fails at once, quietly, if the files are not there.
    """
    from huggingface_hub import constants
    was_offline = constants.HF_HUB_OFFLINE
    online = not _offline_requested() and hub_reachable(timeout=timeout)
    constants.HF_HUB_OFFLINE = not online
    try:
        yield online
    finally:
        constants.HF_HUB_OFFLINE = was_offline
