"""A bidirectional encoder and masked language modelling, BERT style (chapter 06).

An encoder reads a whole sequence at once: every token attends to every real token, in both
directions, so its output at each position is a vector that knows the whole context. Trained
by masked language modelling, it learns to fill in blanks:

    Encoder            embeddings -> chapter 05's Blocks without the causal mask -> norm
    MaskedLM           an Encoder with a head that predicts the token at every position
    mask_tokens        BERT's corruption: 15 % of the tokens picked, then 80/10/10
    load_or_train_mlm  the chapter's tiny character-level MLM on the corpus, cached in runs/

`fit` and `load_or_train` are the training loop and the cache that chapter 06's two toys share
(this MLM and the string reverser of `utils.encoder_decoder`). Masks follow `utils.masks`:
boolean, True = may attend, broadcastable to [B, T, S]; padding is always on the right.

    model, tokenizer, info = load_or_train_mlm()      # trains once, then loads from runs/
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import get_batch, load_corpus, train_val_split
from utils.device import one_thread
from utils.embeddings import alibi_bias
from utils.masks import for_heads
from utils.model import Block, GPTConfig, make_norm
from utils.paths import run_dir
from utils.tokenizers import CharTokenizer

IGNORE = -100  # target value cross_entropy skips: padding, and unmasked tokens in MLM


@dataclass
class EncoderDecoderConfig:
    """The sizes of chapter 06's models: an Encoder (and MaskedLM) reads the shared fields and
    n_encoder_layers; an EncoderDecoder also n_decoder_layers."""

    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    max_len: int = 64
    dropout: float = 0.0
    pos: str = "learned"  # or "alibi" (encoder only)

    def block_config(self) -> GPTConfig:
        """The GPTConfig that chapter 05's Block, FeedForward and norms are built from
        (GPT-2 layout: LayerNorm, GELU, biases)."""
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.max_len,
                         n_layer=max(self.n_encoder_layers, self.n_decoder_layers, 1),
                         n_head=self.n_heads, n_embd=self.d_model, dropout=self.dropout)


class Embedding(nn.Module):
    """Token embedding plus a position signal (chapter 02): a learned position embedding,
    or, with pos="alibi", nothing added here; positions then enter as a distance penalty on
    the attention scores (see `Encoder.attention_mask`)."""

    def __init__(self, vocab_size: int, d_model: int, max_len: int, pos: str = "learned") -> None:
        super().__init__()
        if pos not in ("learned", "alibi"):
            raise ValueError(f"pos must be 'learned' or 'alibi', got {pos!r}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model) if pos == "learned" else None
        self.max_len = max_len

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        if self.pos is not None and T > self.max_len:  # ALiBi has no table, so no limit
            raise ValueError(f"sequence of {T} tokens is longer than max_len={self.max_len}")
        x = self.tok(ids)                                              # [B, T, d]
        return x if self.pos is None else x + self.pos(torch.arange(T, device=ids.device))


class Encoder(nn.Module):
    """Embeddings -> bidirectional EncoderLayers -> LayerNorm: one vector per source token.

    `forward(ids, mask=None)`: `mask` (True = may attend, e.g. `padding_mask(lengths, S)`)
    hides padded keys.

    >>> from utils.masks import padding_mask
    >>> enc = Encoder(EncoderDecoderConfig(vocab_size=10, d_model=16, n_heads=2, max_len=8))
    >>> enc(torch.zeros(3, 5, dtype=torch.long), mask=padding_mask([5, 2, 4], 5)).shape
    torch.Size([3, 5, 16])
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.pos = cfg.n_heads, cfg.pos
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, cfg.pos)
        # Chapter 05's Block, called with is_causal=False: every token sees every real token.
        self.layers = nn.ModuleList(Block(cfg.block_config()) for _ in range(cfg.n_encoder_layers))
        self.norm = make_norm(cfg.block_config())

    def attention_mask(self, mask: torch.Tensor | None, T: int, device) -> torch.Tensor | None:
        """The boolean mask as is, or with ALiBi an additive one: the symmetric distance
        penalty -slope_h * |i - j| of chapter 02, and -inf where `mask` is False (adding -inf
        is the additive way of ANDing a boolean mask in)."""
        if self.pos != "alibi":
            return for_heads(mask)
        bias = alibi_bias(self.n_heads, T).to(device)                  # [h, T, T]
        return bias if mask is None else bias.masked_fill(~for_heads(mask), -math.inf)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(ids)                                            # [B, S, d]
        attn_mask = self.attention_mask(mask, ids.size(1), ids.device)
        for layer in self.layers:
            x = layer(x, mask=attn_mask, is_causal=False)
        return self.norm(x)


class MaskedLM(nn.Module):
    """An Encoder with a head that predicts, at every position, which token belongs there.

    `forward(ids, mask=None, targets=None) -> (logits [B, T, V], loss or None)`; targets hold
    IGNORE except where a token was hidden (see `mask_tokens`).
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None):
        logits = self.head(self.encoder(ids, mask))
        loss = None if targets is None else F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return logits, loss


def mask_tokens(ids: torch.Tensor, mask_id: int, n_ordinary: int, p: float = 0.15,
                generator: torch.Generator | None = None,
                can_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: pick each token with probability `p` as a prediction target; of the
    picked tokens, replace 80 % by `mask_id`, 10 % by a random token in [0, n_ordinary), and
    leave 10 % unchanged.

    The random and unchanged 10 %s matter: a model that only ever saw [MASK] at the positions
    it is graded on could ignore every other token; this way any token might be wrong, so it
    must build a good vector for every position. `can_mask` (bool, like `ids`) excludes
    positions such as padding. Returns (inputs, targets): targets are the original ids at the
    picked positions and IGNORE elsewhere.

    >>> ids = torch.arange(10).repeat(100, 1)
    >>> inputs, targets = mask_tokens(ids, mask_id=99, n_ordinary=10,
    ...                               generator=torch.Generator().manual_seed(0))
    >>> picked = targets != IGNORE
    >>> round(picked.float().mean().item(), 2), round((inputs[picked] == 99).float().mean().item(), 1)
    (0.15, 0.8)
    """
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    picked = draw < p
    if can_mask is not None:
        picked &= can_mask
    # Reuse the same uniform draw, rescaled to [0, 1) inside the picked set, to split 80/10/10.
    within = draw / p
    to_mask = picked & (within < 0.8)
    to_random = picked & (within >= 0.8) & (within < 0.9)
    random_ids = torch.randint(n_ordinary, ids.shape, generator=generator).to(ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    targets = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    return inputs, targets


# ---- masked language modelling on the course corpus -----------------------------------------


def mlm_tokenizer() -> tuple[CharTokenizer, int]:
    """The corpus's characters plus one extra id for [MASK]: (tokenizer, mask_id)."""
    tokenizer = CharTokenizer(load_corpus())
    return tokenizer, tokenizer.vocab_size


def mlm_config(tokenizer: CharTokenizer) -> EncoderDecoderConfig:
    return EncoderDecoderConfig(vocab_size=tokenizer.vocab_size + 1, d_model=64, n_heads=4,
                                n_encoder_layers=2, max_len=32, pos="alibi")


def mlm_data(tokenizer: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, validation ids) of the corpus (validation = its last 10 %)."""
    return train_val_split(torch.tensor(tokenizer.encode(load_corpus())))


def train_mlm(model: MaskedLM, data: torch.Tensor, steps: int, mask_id: int, n_ordinary: int,
              batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
              log_every: int = 25) -> list[tuple[int, float]]:
    """AdamW on random windows of `max_len` characters, 15 % of them corrupted by
    `mask_tokens` (80/10/10)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)

    def batch_loss() -> torch.Tensor:
        x, _ = get_batch(data, batch_size, model.cfg.max_len, generator)
        inputs, targets = mask_tokens(x, mask_id, n_ordinary, generator=generator)
        return model(inputs.to(device), targets=targets.to(device))[1]

    return fit(model, batch_loss, steps, lr, log_every)


@torch.no_grad()
def fill_in_accuracy(model: MaskedLM, data: torch.Tensor, mask_id: int, n_windows: int = 256,
                     p: float = 0.15, seed: int = 1) -> float:
    """Fraction of [MASK]ed characters the model restores exactly, on random windows of
    `data`: 15 % of the characters of each window are replaced by [MASK] (no 80/10/10 here:
    this measures filling in blanks)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    x, _ = get_batch(data, n_windows, model.cfg.max_len, generator)
    hidden = torch.rand(x.shape, generator=generator) < p
    logits, _ = model(x.masked_fill(hidden, mask_id).to(device))
    return (logits.argmax(-1).cpu()[hidden] == x[hidden]).float().mean().item()


def default_mlm_steps(device: torch.device) -> int:
    """About 20 s on one CPU core; a GPU trains longer for the same wall time."""
    return 2000 if device.type == "cuda" else 400


def load_or_train_mlm(device: torch.device | str = "cpu", steps: int | None = None,
                      verbose: bool = True) -> tuple[MaskedLM, CharTokenizer, dict]:
    """The chapter's tiny masked language model, cached under runs/ (see `load_or_train`).
    Returns (model in eval mode, tokenizer, info); the [MASK] id is `tokenizer.vocab_size`."""
    device = torch.device(device)
    tokenizer, mask_id = mlm_tokenizer()
    cfg = mlm_config(tokenizer)
    steps = default_mlm_steps(device) if steps is None else steps
    train_data, _ = mlm_data(tokenizer)
    name = (f"mlm_v{cfg.vocab_size}_d{cfg.d_model}_h{cfg.n_heads}_e{cfg.n_encoder_layers}"
            f"_t{cfg.max_len}_s{steps}.pt")
    model, info = load_or_train(MaskedLM, cfg, name, steps, device, verbose, lambda model: train_mlm(
        model, train_data, steps, mask_id, tokenizer.vocab_size))
    return model, tokenizer, info


# ---- the training loop and the cache both toys of chapter 06 share ----------------------


def _optimizer(model: nn.Module, lr: float, steps: int):
    """AdamW with a linear warm-up over the first 5 % of steps, then a linear decay to 5 %."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.05, (steps - s) / (steps - warmup + 1))))
    return opt, schedule


def fit(model: nn.Module, batch_loss, steps: int, lr: float,
        log_every: int) -> list[tuple[int, float]]:
    """The training loop both toys share: `batch_loss()` draws a fresh batch and returns its
    loss; AdamW with warm-up and decay, gradients clipped at 1. Returns (step, loss) every
    `log_every` steps and at the last one, and leaves the model in eval mode."""
    opt, schedule = _optimizer(model, lr, steps)
    losses = []
    model.train()
    for step in range(steps):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            losses.append((step + 1, loss.item()))
    model.eval()
    return losses


def load_or_train(cls, cfg, name: str, steps: int, device: torch.device, verbose: bool, train_fn):
    """`cls(cfg)` loaded from runs/encoder_decoder/`name` when it was trained before with the
    same config and step count, else built (seed 0), trained by `train_fn(model)` (which
    returns its (step, loss) list) and saved there. Returns (model in eval mode, info)."""
    path = run_dir("encoder_decoder") / name
    torch.manual_seed(0)
    model = cls(cfg).to(device)
    where = f"runs/encoder_decoder/{name}"
    saved = torch.load(path, map_location=device, weights_only=True) if path.exists() else None
    if saved is not None and saved.get("steps") == steps and saved.get("config") == asdict(cfg):
        model.load_state_dict(saved["state_dict"])
        model.eval()
        if verbose:
            print(f"loaded the trained model from {where}")
        return model, {"config": asdict(cfg), "losses": saved["losses"], "seconds": saved["seconds"],
                       "steps": steps, "checkpoint": where, "loaded": True}
    if verbose:
        print(f"training {sum(p.numel() for p in model.parameters()):,} parameters for {steps} "
              f"steps on {device.type} (once; cached under runs/encoder_decoder/) ...")
    start = time.perf_counter()
    # Tiny matrices: on a CPU one thread is as fast, and never waits for a busy core.
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        losses = train_fn(model)
    seconds = time.perf_counter() - start
    # Write then rename, so a notebook and a test running side by side never read half a file.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"state_dict": model.state_dict(), "losses": losses, "seconds": seconds,
                "steps": steps, "config": asdict(cfg)}, partial)
    os.replace(partial, path)
    if verbose:
        print(f"done: {steps} steps in {seconds:.0f} s, loss {losses[0][1]:.2f} -> "
              f"{losses[-1][1]:.3f}")
    return model, {"config": asdict(cfg), "losses": losses, "seconds": seconds, "steps": steps,
                   "checkpoint": where, "loaded": False}
