"""Telling attention heads apart: where each head looks, and which heads the model needs.

Three views, each working for chapter 04's `AttentionLM` and for the GPT of chapters 05–07:

* `distance_profile`: the average weight a query puts on the token k positions back, for
  k = 0, 1, 2, ...: a "previous token" head is a spike at k = 1, a broad head a slow decay.
* `head_grid`: every layer's and head's attention map on one text, side by side (the "model
  view" of BertViz), so patterns can be compared at a glance.
* `head_ablation`: the loss increase when one head's output is zeroed. A head that looks
  striking in a map may not matter; this measures whether the model relies on it.
* `word_landmarks`: for a character model, how much weight each head puts on the previous
  character, on the last space before the query, and on the current word, next to what a
  uniform head would put there.
"""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib.pyplot as plt
import torch
from torch import nn

from utils.data import get_batch


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The MultiHeadAttention module of every layer, first to last."""
    layers = model.blocks if hasattr(model, "blocks") else model.layers
    return [layer.attn for layer in layers]


def block_size(model: nn.Module) -> int:
    return model.config.block_size if hasattr(model, "config") else model.cfg.block_size


@torch.no_grad()
def attention_weights(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """One [B, n_head, T, T] tensor of attention weights per layer."""
    if hasattr(model, "blocks"):                       # the GPT of chapters 05–07
        return model(idx, return_attention=True).attentions
    return model(idx, need_weights=True)[2]            # chapter 04's AttentionLM


def _windows(model: nn.Module, data: torch.Tensor, n_windows: int, seed: int):
    device = next(model.parameters()).device
    return get_batch(data, n_windows, block_size(model), torch.Generator().manual_seed(seed), device)


@torch.no_grad()
def distance_profile(model: nn.Module, data: torch.Tensor, max_distance: int = 16,
                     n_windows: int = 32, seed: int = 1) -> torch.Tensor:
    """[n_layer, n_head, max_distance + 1]: mean weight on the token k back, k = 0..max_distance.

    Averaged over every query that has a token k back (position t ≥ k) in `n_windows` random
    windows of `data`. A head spreading its weight evenly over a 64-token window puts about
    1/t on each position, a few percent at any k.
    """
    x, _ = _windows(model, data, n_windows, seed)
    weights = torch.stack(attention_weights(model, x), dim=1).float().cpu()   # [B, L, h, T, T]
    T = weights.size(-1)
    profile = [weights.diagonal(offset=-k, dim1=-2, dim2=-1).mean(dim=(0, -1))  # [L, h]
               for k in range(min(max_distance, T - 1) + 1)]
    return torch.stack(profile, dim=-1)


def landmark_weights(weights: torch.Tensor, is_space: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean weight on three landmarks of a character text, per head.

    `weights` is [B, ..., T, T] (causal attention weights, e.g. [B, n_layer, n_head, T, T]),
    `is_space` is [B, T] (True where the character is a space). Averaged over every query
    that has a space before it:

    * "previous character": the weight on the key one position back;
    * "last space": the weight on the most recent space before the query;
    * "current word": the total weight on the keys after that space, up to the query itself.

    >>> uniform = torch.ones(4, 4).tril() / torch.arange(1, 5)[:, None]   # query t: 1/(t+1)
    >>> marks = landmark_weights(uniform[None], torch.tensor([[False, True, False, False]]))
    >>> [round(v.item(), 3) for v in marks.values()]   # queries 2, 3: mean of 1/3 and 1/4
    [0.292, 0.292, 0.417]
    """
    B, T = is_space.shape
    positions = torch.arange(T, device=is_space.device)
    # index of the last space at or before t, then shifted: the last space strictly before t
    last_upto = torch.where(is_space, positions, -1).cummax(dim=1).values
    last = torch.cat([torch.full((B, 1), -1, device=is_space.device), last_upto[:, :-1]], dim=1)
    has_space = last >= 0                                              # [B, T] queries that count
    lead = (B,) + (1,) * (weights.dim() - 3)                           # broadcast over layers/heads
    key = positions.view(1, 1, T)
    word = (key > last[:, :, None]) & (key <= positions.view(1, T, 1))  # [B, T query, T key]
    at_space = key == last[:, :, None]
    previous = key == positions.view(1, T, 1) - 1
    count = has_space.sum().clamp_min(1)

    def mean_over_queries(keys: torch.Tensor) -> torch.Tensor:
        picked = (weights * keys.expand(B, T, T).reshape(*lead, T, T)).sum(-1)   # [B, ..., T]
        return (picked * has_space.view(*lead, T)).sum(dim=(0, -1)) / count

    return {"previous character": mean_over_queries(previous),
            "last space": mean_over_queries(at_space),
            "current word": mean_over_queries(word)}


@torch.no_grad()
def word_landmarks(model: nn.Module, data: torch.Tensor, space_id: int, n_windows: int = 32,
                   seed: int = 1) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(per landmark an [n_layer, n_head] tensor of mean weights, per landmark the value of a
    uniform head), measured on `n_windows` random windows of `data` (see `landmark_weights`).

    The uniform head, which puts 1/(t+1) on each key query t may see, is the baseline: a head
    well above it on a landmark has learned to look there.
    """
    x, _ = _windows(model, data, n_windows, seed)
    weights = torch.stack(attention_weights(model, x), dim=1).float().cpu()   # [B, L, h, T, T]
    is_space = (x == space_id).cpu()
    T = x.size(1)
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    baseline = landmark_weights(uniform.expand(x.size(0), T, T), is_space)
    return landmark_weights(weights, is_space), {k: v.item() for k, v in baseline.items()}


@contextmanager
def zero_head(model: nn.Module, layer: int, head: int):
    """Inside the block, head `head` of layer `layer` contributes nothing.

    The heads' outputs are concatenated, [B, T, n_head · d_head], before the output
    projection W_O; zeroing this head's slice of that input removes exactly its contribution
    (W_O's bias, if any, stays, as it belongs to no head).
    """
    attn = attention_layers(model)[layer]
    n_head = attn.n_heads
    if not 0 <= head < n_head:
        raise ValueError(f"head must be in 0..{n_head - 1}, got {head}")
    d_head = attn.d_head

    def remove_head(module, inputs):
        (merged,) = inputs
        merged = merged.clone()
        merged[..., head * d_head:(head + 1) * d_head] = 0
        return (merged,)

    handle = attn.proj.register_forward_pre_hook(remove_head)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def head_ablation(model: nn.Module, data: torch.Tensor, n_windows: int = 32,
                  seed: int = 2) -> tuple[float, torch.Tensor]:
    """(loss with every head, [n_layer, n_head] loss increase with that one head zeroed).

    All measurements use the same `n_windows` windows of `data`, so differences are due to the
    head alone, not to different text.
    """
    was_training = model.training
    model.eval()
    x, y = _windows(model, data, n_windows, seed)
    base = model(x, y)[1].item()
    layers = attention_layers(model)
    increase = torch.zeros(len(layers), layers[0].n_heads)
    for layer in range(len(layers)):
        for head in range(layers[layer].n_heads):
            with zero_head(model, layer, head):
                increase[layer, head] = model(x, y)[1].item() - base
    model.train(was_training)
    return base, increase


def head_grid(maps: list[torch.Tensor], labels: list[str], title: str, cell_size: float = 1.7):
    """Draw maps (one [n_head, T, T] tensor per layer) as a layer × head grid of small heatmaps."""
    n_layer, n_head = len(maps), maps[0].size(0)
    fig, axes = plt.subplots(n_layer, n_head, figsize=(cell_size * n_head + 0.6, cell_size * n_layer + 0.6),
                             squeeze=False)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            ax.imshow(maps[layer][head].float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.suptitle(f"{title}\nrows: query (each character of {''.join(labels)!r}), "
                 "columns: key; dark = high weight", fontsize=9)
    fig.tight_layout()
    return fig


def uniform_profile(T: int, max_distance: int) -> torch.Tensor:
    """The profile of a head that spreads its weight evenly: query t puts 1/(t+1) everywhere."""
    return torch.tensor([sum(1 / (t + 1) for t in range(k, T)) / (T - k)
                         for k in range(min(max_distance, T - 1) + 1)])


def plot_distance_profiles(profile: torch.Tensor, T: int, title: str, columns: int = 3):
    """One panel per layer: weight against distance back, one line per head, and a uniform head."""
    n_layer, n_head, n_distance = profile.shape
    columns = min(columns, n_layer)
    rows = -(-n_layer // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False,
                             sharey=True)
    distances = range(n_distance)
    for layer, ax in enumerate(axes.flat):
        if layer >= n_layer:
            ax.axis("off")
            continue
        for head in range(n_head):
            ax.plot(distances, profile[layer, head].numpy(), "o-", markersize=3, label=f"head {head}")
        ax.plot(distances, uniform_profile(T, n_distance - 1).numpy(), ":", color="grey",
                label="uniform head")
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xlabel("distance back (characters)")
        if layer % columns == 0:
            ax.set_ylabel("mean attention weight")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
