"""LoRA: fine-tune a frozen model through small low-rank updates (chapter 10).

Full fine-tuning changes every weight. LoRA (low-rank adaptation) freezes them all and learns,
for a few chosen linear layers, a correction of low rank r:

    W' = W + (alpha / r) · B A          A: [r, in_features]   B: [out_features, r]

so a layer with a d_out × d_in weight trains r · (d_in + d_out) numbers instead of d_in · d_out.
B starts at zero, so at step 0 the adapted model computes exactly what the base model
computes, and training starts from the pretrained behaviour. A starts random, so the
gradient reaching B is not zero and B can move away from zero at the first step.

The correction is never formed as a matrix during training: x ↦ x Aᵀ Bᵀ costs two thin
matrix products. After training it can be folded into the weight (`merge_lora`), and the
model is an ordinary one again, with no extra cost at inference.

    model, tokenizer = load_pretrained("shakespeare-char")
    apply_lora(model, rank=8, alpha=16, targets=("qkv", "proj"))  # freezes everything else
    ...train: only the lora_A / lora_B parameters get gradients...
    save_adapters(model, "runs/lora/sonnets.safetensors")         # a few kB
    merge_lora(model)                                              # back to plain nn.Linear

The frozen base can be any module with `in_features`, `out_features` and a `weight` (an
`nn.Linear`, or a 4-bit `utils.quantization.NF4Linear`: LoRA on a quantised base is QLoRA).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_FORMAT = "transformers-course/lora"


# --------------------------------------------------------------------------- the maths

def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """The frozen layer plus its low-rank correction: x Wᵀ + b + scaling · (x Aᵀ) Bᵀ.

    x [..., in], weight [out, in], A [r, in], B [out, r] -> [..., out].

    >>> x, W = torch.randn(2, 3), torch.randn(4, 3)
    >>> A, B = torch.randn(2, 3), torch.zeros(4, 2)
    >>> torch.equal(lora_forward(x, W, None, A, B, 2.0), x @ W.T)   # B = 0: the base layer
    True
    """
    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, A), B)


def merged_weight(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  scaling: float) -> torch.Tensor:
    """The one weight that does what the frozen layer and its adapter do together: W + scaling · B A.

    >>> W, A, B = torch.randn(4, 3), torch.randn(2, 3), torch.randn(4, 2)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(x @ merged_weight(W, A, B, 0.5).T, lora_forward(x, W, None, A, B, 0.5),
    ...                atol=1e-6)
    True
    """
    return weight + scaling * (B @ A)


def lora_parameter_count(in_features: int, out_features: int, rank: int) -> int:
    """Trainable numbers LoRA adds to one [out, in] layer: A has r · in, B has out · r.

    >>> lora_parameter_count(128, 384, 8), 128 * 384     # our qkv layer: 4,096 vs 49,152
    (4096, 49152)
    """
    return rank * (in_features + out_features)


# --------------------------------------------------------------------------- the layer

def _check_settings(rank: int, alpha: float, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a whole number >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen linear layer with a trainable low-rank correction (see the module docstring).

    `base`: an `nn.Linear` or anything with `in_features`, `out_features`, `weight` and a
    forward (such as `NF4Linear`); its parameters are frozen here. `lora_A` [r, in] starts
    random (the same uniform initialisation as `nn.Linear`'s weight), `lora_B` [out, r] starts
    at zero, `scaling = alpha / rank`. `dropout` applies to the adapter's input only.

    `weight` and `bias` read like an `nn.Linear`'s: `weight` is the merged W + scaling · B A
    (differentiable in A and B), so code that multiplies by `layer.weight` directly, such as
    cross-attention in `utils.attention.MultiHeadAttention`, sees the adapted layer.

    >>> layer = LoRALinear(nn.Linear(16, 8), rank=2, alpha=4)
    >>> layer.lora_A.shape, layer.lora_B.shape, layer.scaling
    (torch.Size([2, 16]), torch.Size([8, 2]), 2.0)
    >>> [name for name, p in layer.named_parameters() if p.requires_grad]
    ['lora_A', 'lora_B']
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        _check_settings(rank, alpha, dropout)
        if not all(hasattr(base, attr) for attr in ("in_features", "out_features", "weight")):
            raise TypeError(f"LoRALinear wraps a linear layer (in_features, out_features, weight); "
                            f"got {type(base).__name__}")
        if isinstance(base, LoRALinear):
            raise TypeError("this layer already has a LoRA adapter; merge_lora it first")
        base.requires_grad_(False)
        self.base = base
        self.rank, self.alpha = rank, alpha
        # alpha / rank, as in the LoRA paper and peft. It does NOT keep the update's size
        # independent of the rank: at one learning rate the update shrinks as the rank grows
        # (data/lora_sweep.json, "scaling_study"). alpha = c * sqrt(rank) gives rsLoRA's
        # c / sqrt(rank), which kept it steady there.
        self.scaling = alpha / rank
        like = base.weight
        dtype = like.dtype if like.is_floating_point() else torch.float32
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=like.device,
                                               dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=like.device,
                                               dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return merged_weight(self.base.weight, self.lora_A, self.lora_B, self.scaling)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin products, [.., in] -> [.., r] -> [.., out]; B A itself is never formed.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


# --------------------------------------------------------------------------- a whole model

def _is_linear(module: nn.Module) -> bool:
    """An nn.Linear, or a linear layer stored another way (a quantised NF4Linear)."""
    if isinstance(module, LoRALinear):
        return False
    return isinstance(module, nn.Linear) or all(
        hasattr(module, attr) for attr in ("in_features", "out_features", "dequantized_weight"))


def matches_target(name: str, target: str) -> bool:
    """`target` names the module itself or its last dotted parts: "qkv", "attn.proj"."""
    return name == target or name.endswith("." + target)


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{module name: layer} for every linear layer LoRA could wrap, in model order."""
    return {name: module for name, module in model.named_modules() if _is_linear(module)}


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} for every adapted layer of `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _tied(model: nn.Module, name: str, layer: nn.Module) -> str | None:
    """The name of another module that shares `layer`'s weight (tied embeddings), if any."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, nn.Parameter):
        return None
    for other_name, other in model.named_modules(remove_duplicate=False):
        if other_name != name and getattr(other, "weight", None) is weight:
            return other_name
    return None


def select_layers(model: nn.Module, targets: Iterable[str] | str) -> list[str]:
    """Names of the linear layers that `targets` picks, each target required to match.

    >>> from utils.model import GPT, GPTConfig
    >>> gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=16))
    >>> select_layers(gpt, ["qkv"])
    ['blocks.0.attn.qkv', 'blocks.1.attn.qkv']
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
        raise ValueError("targets is empty: name at least one linear layer, e.g. ('qkv', 'proj')")
    names = list(linear_layers(model))
    for target in targets:
        if not any(matches_target(name, target) for name in names):
            short = sorted({name.rsplit(".", 1)[-1] for name in names})
            raise ValueError(f"target {target!r} matches no linear layer; the model's linear "
                             f"layers end in {short} (full names such as {names[:3]})")
    return [name for name in names if any(matches_target(name, t) for t in targets)]


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16,
               targets: Iterable[str] | str = ("qkv", "proj"), dropout: float = 0.0) -> nn.Module:
    """Freeze `model` and wrap each linear layer named by `targets` in a LoRALinear, in place.

    A target matches a layer whose name is the target or ends with "." + target, so "qkv"
    picks every block's attention projection and "blocks.5.mlp.up" one layer. Returns the
    model; only the adapters' lora_A and lora_B require grad afterwards.
    """
    _check_settings(rank, alpha, dropout)       # before anything is changed
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters; merge_lora(model) first, or "
                         "start again from a fresh copy of the base model")
    chosen = select_layers(model, targets)
    for name in chosen:
        other = _tied(model, name, model.get_submodule(name))
        if other is not None:
            raise ValueError(f"{name} shares its weight with {other} (tied weights): merging an "
                             f"adapter into it would change {other} too; leave it out of targets")
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer, W + scaling · B A, leaving plain nn.Linear layers.

    In place; returns the model. The merged layers are frozen, like the rest of the model.
    A quantised base is de-quantised by the merge: the sum is a full-precision weight.
    """
    for name, layer in lora_layers(model).items():
        with torch.no_grad():
            weight = merged_weight(layer.base.weight, layer.lora_A, layer.lora_B, layer.scaling)
            bias = layer.bias
            merged = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,
                               device=weight.device, dtype=weight.dtype)
            merged.weight.copy_(weight)
            if bias is not None:
                merged.bias.copy_(bias)
        merged.requires_grad_(False)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, merged)
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(parameters that require grad, all parameters), a shared (tied) tensor counted once."""
    params = list(model.parameters())   # .parameters() already lists a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- adapters on disk

def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: {"<layer>.lora_A": [r, in], "<layer>.lora_B": [out, r]} on the CPU."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        state[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
    return state


def save_adapters(model: nn.Module, path: Path | str) -> Path:
    """Write the adapters alone to `path` (safetensors), with rank and alpha in its header.

    The base model is not saved: the file is only useful next to the same base weights, and
    it is small (our model, rank 8 on qkv and proj: about 100 kB in float32).
    """
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; call apply_lora first")
    first = next(iter(layers.values()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": ADAPTER_FORMAT, "rank": str(first.rank), "alpha": repr(first.alpha),
                "layers": json.dumps(list(layers))}
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(lora_state_dict(model), str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


def load_adapters(model: nn.Module, path: Path | str) -> nn.Module:
    """Load adapters saved by `save_adapters` into `model`, in place; returns the model.

    A model without adapters gets them first (`apply_lora` with the file's rank, alpha and
    layers), so a fresh copy of the base model is enough.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no adapter file at {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{path} is not a LoRA adapter file saved by save_adapters")
        state = {key: f.get_tensor(key) for key in f.keys()}
    names = json.loads(metadata["layers"])
    if not lora_layers(model):
        apply_lora(model, rank=int(metadata["rank"]), alpha=float(metadata["alpha"]), targets=names)
    layers = lora_layers(model)
    rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    for name, layer in layers.items():
        if (layer.rank, float(layer.alpha)) != (rank, alpha):
            raise ValueError(f"{path} was saved with rank={rank}, alpha={alpha:g}; the model's "
                             f"{name} has rank={layer.rank}, alpha={layer.alpha:g}")
    if sorted(layers) != sorted(names):
        raise ValueError(f"{path} holds adapters for {len(names)} layers ({names[:2]}...), but the "
                         f"model has them on {len(layers)} ({list(layers)[:2]}...)")
    with torch.no_grad():
        for name, layer in layers.items():
            for part in ("lora_A", "lora_B"):
                saved, param = state[f"{name}.{part}"], getattr(layer, part)
                if saved.shape != param.shape:
                    raise ValueError(f"{path}: {name}.{part} has shape {tuple(saved.shape)}, the "
                                     f"model's is {tuple(param.shape)} (a different rank?)")
                param.copy_(saved)
    return model


# --------------------------------------------------------------------------- a short training run

def finetune(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int = 8,
             block_size: int = 128, lr: float = 5e-3, seed: int = 0,
             device: torch.device | str = "cpu") -> list[float]:
    """AdamW on the parameters that require grad, for `steps` steps; returns each step's loss.

    Batches are random windows of `data` (token ids) drawn from a generator seeded with
    `seed`, so two runs with the same seed see the same text in the same order, and a
    difference in their losses comes from what was trained, not from the sample.
    """
    from utils.data import get_batch

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no parameter of the model requires grad: nothing to fine-tune")
    # No weight decay: it would pull the adapters (or the weights) towards zero, that is
    # back towards the base model, which is not what a few hundred steps should spend on.
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    losses = []
    for _ in range(steps):
        x, y = get_batch(data, batch_size, block_size, generator, device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.train(was_training)
    return losses
