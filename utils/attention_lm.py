"""A tiny character-level language model made of attention layers (chapter 04).

It exists to show what trained heads look at. Two layers of causal MultiHeadAttention with
residual connections and a small MLP, about 100k parameters, trained for a fixed number of
steps (under a minute on a laptop CPU; the same model on every machine) and cached under
runs/attention_lm/. Chapter 05 explains the LayerNorm and MLP pieces, chapter 06 the causal
mask, and chapter 07 builds the real GPT and trainer; this file keeps only what is needed to
get heads worth looking at.

    model, tokenizer, info = load_or_train()      # trains once, then loads from runs/
    logits, loss, weights = model(idx, need_weights=True)   # weights: one [B, h, T, T] per layer
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import MultiHeadAttention
from utils.data import get_batch, load_corpus, train_val_split
from utils.paths import run_dir
from utils.tokenizers import CharTokenizer


@dataclass
class LMConfig:
    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    block_size: int = 64
    mlp: bool = True


class Layer(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)): the residual keeps each token's own
    vector and adds what attention gathered from the others."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, use_sdpa=True)
        self.ln2 = nn.LayerNorm(cfg.d_model) if cfg.mlp else None
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model)) if cfg.mlp else None

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        a, weights = self.attn(self.ln1(x), is_causal=True, need_weights=True) if need_weights \
            else (self.attn(self.ln1(x), is_causal=True), None)
        x = x + a
        if self.mlp is not None:
            x = x + self.mlp(self.ln2(x))
        return x, weights


class AttentionLM(nn.Module):
    """Token embedding + learned position embedding -> attention layers -> next-char logits.

    >>> model = AttentionLM(LMConfig(vocab_size=10, d_model=16, n_heads=2, block_size=8))
    >>> logits, loss, weights = model(torch.zeros(3, 8, dtype=torch.long), need_weights=True)
    >>> logits.shape, len(weights), weights[0].shape
    (torch.Size([3, 8, 10]), 2, torch.Size([3, 2, 8, 8]))
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                need_weights: bool = False):
        T = idx.size(1)
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size="
                             f"{self.cfg.block_size}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))  # [B, T, d]
        all_weights = []
        for layer in self.layers:
            x, w = layer(x, need_weights)
            all_weights.append(w)
        logits = self.lm_head(self.ln_f(x))                                       # [B, T, V]
        loss = None if targets is None else F.cross_entropy(
            logits.flatten(0, 1), targets.flatten())
        return logits, loss, (all_weights if need_weights else None)


def default_steps(device: torch.device) -> int:
    """Training steps for the chapter's model: about 35 s on a 2-core CPU, 3000 on a GPU.

    A fixed step count, not a time budget, so every machine trains the same model and the
    chapter's numbers reproduce (1890 CPU steps is the run the chapter's text describes).
    """
    return 3000 if device.type == "cuda" else 1890


def train(model: AttentionLM, data: torch.Tensor, steps: int, batch_size: int = 32,
          lr: float = 1e-2, seed: int = 0, log_every: int = 10) -> list[tuple[int, float]]:
    """Plain AdamW on random windows for `steps` steps.

    Returns (step, loss) every `log_every` steps and at the last step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses = []
    model.train()
    for step in range(steps):
        x, y = get_batch(data, batch_size, model.cfg.block_size, generator, device)
        _, loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            losses.append((step + 1, loss.item()))
    model.eval()
    return losses


def load_or_train(device: torch.device | str = "cpu", steps: int | None = None,
                  verbose: bool = True) -> tuple[AttentionLM, CharTokenizer, dict]:
    """The chapter's model: loaded from runs/attention_lm/ if trained before, else trained now.

    It trains for `steps` steps (default: `default_steps(device)`). The checkpoint's name
    says what it holds (config, steps trained, device type), and it also records its steps
    and config inside: a file that does not hold exactly this config trained for exactly
    `steps` steps is never loaded; the model is trained again and the file replaced.
    Returns (model in eval mode on `device`, tokenizer, info) where info holds the config,
    the steps trained, the (step, loss) curve, training seconds and where the checkpoint is.
    """
    device = torch.device(device)
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    cfg = LMConfig(vocab_size=tokenizer.vocab_size)
    steps = default_steps(device) if steps is None else steps
    name = (f"d{cfg.d_model}_h{cfg.n_heads}_l{cfg.n_layers}_t{cfg.block_size}"
            f"_v{cfg.vocab_size}_steps{steps}_{device.type}.pt")
    path = run_dir("attention_lm") / name
    torch.manual_seed(0)
    model = AttentionLM(cfg).to(device)
    saved = torch.load(path, map_location=device, weights_only=True) if path.exists() else None
    if saved is not None and saved.get("steps") == steps and saved.get("config") == asdict(cfg):
        model.load_state_dict(saved["state_dict"])
        model.eval()
        if verbose:
            print(f"loaded the model trained for {steps} steps from runs/attention_lm/{name}")
        return model, tokenizer, {"config": asdict(cfg), "steps": steps, "losses": saved["losses"],
                                  "seconds": saved["seconds"], "loaded": True,
                                  "checkpoint": f"runs/attention_lm/{name}"}
    if saved is not None and verbose:
        print(f"runs/attention_lm/{name} holds {saved.get('steps', 'an unknown number of')} "
              "steps or another config; training again")
    train_data, _ = train_val_split(torch.tensor(tokenizer.encode(text)))
    if verbose:
        print(f"training {sum(p.numel() for p in model.parameters()):,} parameters for "
              f"{steps} steps on {device.type} (once; cached under runs/attention_lm/) ...")
    start = time.perf_counter()
    losses = train(model, train_data, steps)
    seconds = time.perf_counter() - start
    # Write then rename, so a notebook and a test running side by side never read half a file.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"state_dict": model.state_dict(), "steps": losses[-1][0], "losses": losses,
                "seconds": seconds, "config": asdict(cfg)}, partial)
    os.replace(partial, path)
    if verbose:
        print(f"done: {losses[-1][0]} steps in {seconds:.0f} s, loss {losses[0][1]:.2f} -> "
              f"{losses[-1][1]:.2f}")
    return model, tokenizer, {"config": asdict(cfg), "steps": losses[-1][0], "losses": losses,
                              "seconds": seconds, "loaded": False,
                              "checkpoint": f"runs/attention_lm/{name}"}


@torch.no_grad()
def attention_maps(model: AttentionLM, tokenizer: CharTokenizer, text: str) -> list[torch.Tensor]:
    """Weights of every layer for one text: a list of [n_heads, T, T] tensors (T <= block)."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(text[: model.cfg.block_size])], device=device)
    _, _, weights = model(ids, need_weights=True)
    return [w[0].cpu() for w in weights]


@torch.no_grad()
def head_patterns(model: AttentionLM, data: torch.Tensor, n_windows: int = 64,
                  seed: int = 1) -> dict[str, torch.Tensor]:
    """How strongly each head follows simple patterns, averaged over random windows.

    Returns scores of shape [n_layers, n_heads] in [0, 1]: the mean weight a query puts on
    the previous token ("previous"), on itself ("self"), on the first position ("first"),
    and on earlier occurrences of its own character ("same char").
    """
    device = next(model.parameters()).device
    x, _ = get_batch(data, n_windows, model.cfg.block_size,
                     torch.Generator().manual_seed(seed), device)
    _, _, weights = model(x, need_weights=True)
    w = torch.stack(weights, 1).cpu()                 # [B, L, h, T, T]
    T = w.size(-1)
    idx = torch.arange(T)
    same = (x[:, :, None] == x[:, None, :]).cpu() & (idx[:, None] > idx[None, :])  # [B, T, T]
    return {
        "previous": w[..., idx[1:], idx[:-1]].mean((0, -1)),
        "self": w[..., idx, idx].mean((0, -1)),
        "first": w[..., 1:, 0].mean((0, -1)),
        "same char": (w * same[:, None, None]).sum(-1)[..., 1:].mean((0, -1)),
    }
