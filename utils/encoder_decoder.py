"""A bidirectional encoder, masked-language-model helpers and a small encoder-decoder (chapter 06).

The three transformer families differ only in their masks and in where the keys come from:

* encoder-only (BERT): every token attends to every real token, both directions (`Encoder`,
  trained by masked language modelling: `mask_tokens`, `MaskedLM`);
* decoder-only (GPT): causal self-attention (chapter 07's `GPT`);
* encoder-decoder (T5, the original Transformer): an encoder reads the source; a decoder
  generates the target with causal self-attention plus **cross-attention**, whose queries come
  from the decoder and whose keys and values come from the encoder (`EncoderDecoder`).

Masks follow `utils.masks`: boolean, True = may attend, broadcastable to [B, T, S].
Padding is always on the right, and token id 0 is padding in the toy tasks below.

    model, info = load_or_train_reverser()                 # trains once, then loads from runs/
    reverse_strings(model, ["course", "mask"])             # -> ['esruoc', 'ksam']
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import MultiHeadAttention
from utils.data import get_batch, load_corpus, train_val_split
from utils.device import one_thread
from utils.embeddings import alibi_bias
from utils.layers import FeedForward
from utils.masks import for_heads, padding_mask
from utils.model import Block, GPTConfig, make_norm
from utils.paths import run_dir
from utils.tokenizers import CharTokenizer

IGNORE = -100  # target value cross_entropy skips: padding, and unmasked tokens in MLM


@dataclass
class EncoderDecoderConfig:
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


class DecoderLayer(nn.Module):
    """Pre-norm decoder block: causal self-attention, then cross-attention, then feed-forward,
    each as x + sublayer(norm(x)).

    It is chapter 05's `Block` with one more sublayer. Cross-attention reads `memory` (the
    encoder's output, [B, S, d]): queries come from the decoder's tokens, keys and values from
    the source tokens, so every target position may look at the whole source (no causal mask
    there; only the source padding is hidden by `memory_mask`).
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        block = cfg.block_config()
        self.norm1, self.norm2, self.norm3 = (make_norm(block) for _ in range(3))
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, dropout=cfg.dropout,
                                            use_sdpa=True)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, dropout=cfg.dropout,
                                             use_sdpa=True)
        self.mlp = FeedForward(cfg.d_model, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor | None = None, need_weights: bool = False):
        x = x + self.self_attn(self.norm1(x), is_causal=True)         # look back at the target
        cross = self.cross_attn(self.norm2(x), mask=for_heads(memory_mask), context=memory,
                                need_weights=need_weights)             # look at the source
        cross, weights = cross if need_weights else (cross, None)
        x = x + cross
        x = x + self.mlp(self.norm3(x))                                # think
        return (x, weights) if need_weights else x


class Decoder(nn.Module):
    """Embeddings -> DecoderLayers (causal self-attention + cross-attention) -> LayerNorm."""

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, "learned")
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = make_norm(cfg.block_config())

    def forward(self, ids: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor | None = None, need_weights: bool = False):
        """[B, T, d] decoder states; with need_weights=True also every layer's
        cross-attention weights, a list of [B, h, T, S]."""
        x = self.embed(ids)                                            # [B, T, d]
        maps = []
        for layer in self.layers:
            if need_weights:
                x, weights = layer(x, memory, memory_mask, need_weights=True)
                maps.append(weights)
            else:
                x = layer(x, memory, memory_mask)
        return (self.norm(x), maps) if need_weights else self.norm(x)


class EncoderDecoder(nn.Module):
    """Encoder for the source, Decoder for the target, a linear head for next-token logits.

    `forward(src, tgt_in, src_mask=None, targets=None) -> (logits [B, T, V], loss or None)`;
    `src_mask` is a `padding_mask` of the source ([B, 1, S]), used by the encoder's
    self-attention and by the decoder's cross-attention alike. The target needs no padding
    mask: it is causal, so real target tokens never see the padding after them, and padded
    positions are left out of the loss (targets = IGNORE there).

    >>> model = EncoderDecoder(EncoderDecoderConfig(vocab_size=12, d_model=16, n_heads=2))
    >>> src, tgt = torch.randint(12, (2, 7)), torch.randint(12, (2, 5))
    >>> model(src, tgt, padding_mask([7, 3], 7))[0].shape
    torch.Size([2, 5, 12])
    """

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, src_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None):
        memory = self.encoder(src, src_mask)                           # [B, S, d]
        logits = self.head(self.decoder(tgt_in, memory, src_mask))     # [B, T, V]
        loss = None if targets is None else F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return logits, loss

    @torch.no_grad()
    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor,
                        src_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Cross-attention weights of every decoder layer: a list of [B, h, T, S] tensors
        (row t: how target position t spreads its attention over the source tokens)."""
        memory = self.encoder(src, src_mask)
        return self.decoder(tgt_in, memory, src_mask, need_weights=True)[1]

    @torch.no_grad()
    def generate(self, src: torch.Tensor, src_mask: torch.Tensor | None, bos_id: int, eos_id: int,
                 max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: encode the source once, then add the likeliest next token until
        every sequence has produced `eos_id` (or `max_new_tokens` were generated).
        Returns [B, n] generated ids (without the BOS), EOS included where produced."""
        memory = self.encoder(src, src_mask)
        out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            logits = self.head(self.decoder(out, memory, src_mask))[:, -1]
            next_id = logits.argmax(-1)
            out = torch.cat([out, next_id[:, None]], dim=1)
            done |= next_id == eos_id
            if done.all():
                break
        return out[:, 1:]


# ---- the toy seq2seq task: reverse a string -------------------------------------------------

PAD, BOS, EOS = 0, 1, 2
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MIN_LEN, MAX_LEN = 4, 8


def encode_letters(text: str) -> list[int]:
    """'abc' -> [3, 4, 5] (ids 0-2 are PAD, BOS, EOS)."""
    bad = [ch for ch in text if ch not in LETTERS]
    if bad:
        raise ValueError(f"only the letters a-z are in the vocabulary, got {bad[0]!r} in {text!r}")
    return [LETTERS.index(ch) + 3 for ch in text]


def decode_letters(ids) -> str:
    """Inverse of encode_letters; stops at EOS and skips PAD/BOS."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i >= 3:
            out.append(LETTERS[i - 3])
    return "".join(out)


def is_held_out(text: str) -> bool:
    """About 1 string in 10 is reserved for evaluation, decided by a hash of its content,
    so no training batch can ever contain a held-out string."""
    return zlib.crc32(text.encode()) % 10 == 0


def random_strings(n: int, generator: torch.Generator, held_out: bool = False,
                   min_len: int = MIN_LEN, max_len: int = MAX_LEN) -> list[str]:
    """`n` random lowercase strings of min_len..max_len letters, from the training side of the
    split (or the held-out side with `held_out=True`)."""
    out: list[str] = []
    while len(out) < n:
        lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator).tolist()
        letters = torch.randint(len(LETTERS), (n, max_len), generator=generator).tolist()
        for length, row in zip(lengths, letters, strict=True):
            text = "".join(LETTERS[i] for i in row[:length])
            if is_held_out(text) == held_out and len(out) < n:
                out.append(text)
    return out


def reverse_batch(strings: list[str], device: torch.device | str = "cpu"):
    """Tensors for the reversal task: (src, src_mask, tgt_in, targets).

    src = the letters (right-padded); tgt_in = BOS + reversed letters; targets = reversed
    letters + EOS, IGNORE on padding. Shapes [B, S], [B, 1, S], [B, T], [B, T].
    """
    src_ids = [encode_letters(s) for s in strings]
    tgt_ids = [ids[::-1] for ids in src_ids]
    S, T = max(map(len, src_ids)), max(map(len, tgt_ids)) + 1
    src = torch.full((len(strings), S), PAD, dtype=torch.long)
    tgt_in = torch.full((len(strings), T), PAD, dtype=torch.long)
    targets = torch.full((len(strings), T), IGNORE, dtype=torch.long)
    for b, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True)):
        src[b, :len(s)] = torch.tensor(s)
        tgt_in[b, :len(t) + 1] = torch.tensor([BOS] + t)
        targets[b, :len(t) + 1] = torch.tensor(t + [EOS])
    src_mask = padding_mask([len(s) for s in src_ids], S)
    return src.to(device), src_mask.to(device), tgt_in.to(device), targets.to(device)


def reverse_strings(model: EncoderDecoder, strings: list[str]) -> list[str]:
    """Run the trained model on a list of strings; returns its (greedy) outputs."""
    device = next(model.parameters()).device
    src, src_mask, _, _ = reverse_batch(strings, device)
    model.eval()
    out = model.generate(src, src_mask, BOS, EOS, max_new_tokens=src.size(1) + 1)
    return [decode_letters(row) for row in out.tolist()]


def exact_match(model: EncoderDecoder, strings: list[str], batch_size: int = 500) -> float:
    """Fraction of `strings` whose reversal the model gets exactly right."""
    right = 0
    for i in range(0, len(strings), batch_size):
        chunk = strings[i:i + batch_size]
        right += sum(got == s[::-1] for got, s in zip(reverse_strings(model, chunk), chunk,
                                                      strict=True))
    return right / max(len(strings), 1)


REVERSER = EncoderDecoderConfig(vocab_size=3 + len(LETTERS), d_model=64, n_heads=4,
                                n_encoder_layers=2, n_decoder_layers=2, max_len=MAX_LEN + 1)


def _optimizer(model: nn.Module, lr: float, steps: int):
    """AdamW with a linear warm-up over the first 5 % of steps, then a linear decay to 5 %."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.05, (steps - s) / (steps - warmup + 1))))
    return opt, schedule


def _fit(model: nn.Module, batch_loss, steps: int, lr: float,
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


def train_reverser(model: EncoderDecoder, steps: int, batch_size: int = 64, lr: float = 3e-3,
                   seed: int = 0, log_every: int = 25) -> list[tuple[int, float]]:
    """AdamW with a short warm-up and a linear decay, on fresh random training strings every
    step. Returns (step, loss) every `log_every` steps and at the last one."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)

    def batch_loss() -> torch.Tensor:
        src, src_mask, tgt_in, targets = reverse_batch(random_strings(batch_size, generator), device)
        return model(src, tgt_in, src_mask, targets)[1]

    return _fit(model, batch_loss, steps, lr, log_every)


def default_reverser_steps(device: torch.device) -> int:
    """400 steps reach 100 % exact match on held-out strings on a CPU (about 30 s on one
    busy core); a GPU trains longer for the same wall time."""
    return 1500 if device.type == "cuda" else 400


def load_or_train_reverser(device: torch.device | str = "cpu", steps: int | None = None,
                           verbose: bool = True) -> tuple[EncoderDecoder, dict]:
    """The chapter's string reverser: loaded from runs/encoder_decoder/ if trained before with
    the same config and step count, else trained now (by step count, so a busy machine takes
    longer but ends in the same place). Returns (model in eval mode, info)."""
    device = torch.device(device)
    cfg = REVERSER
    steps = default_reverser_steps(device) if steps is None else steps
    name = (f"reverse_d{cfg.d_model}_h{cfg.n_heads}_e{cfg.n_encoder_layers}"
            f"_d{cfg.n_decoder_layers}_s{steps}.pt")
    return _load_or_train(EncoderDecoder, cfg, name, steps, device, verbose,
                          lambda model: train_reverser(model, steps))


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

    return _fit(model, batch_loss, steps, lr, log_every)


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
    """The chapter's tiny masked language model, cached like the reverser.
    Returns (model in eval mode, tokenizer, info); the [MASK] id is `tokenizer.vocab_size`."""
    device = torch.device(device)
    tokenizer, mask_id = mlm_tokenizer()
    cfg = mlm_config(tokenizer)
    steps = default_mlm_steps(device) if steps is None else steps
    train_data, _ = mlm_data(tokenizer)
    name = (f"mlm_v{cfg.vocab_size}_d{cfg.d_model}_h{cfg.n_heads}_e{cfg.n_encoder_layers}"
            f"_t{cfg.max_len}_s{steps}.pt")
    model, info = _load_or_train(MaskedLM, cfg, name, steps, device, verbose, lambda model: train_mlm(
        model, train_data, steps, mask_id, tokenizer.vocab_size))
    return model, tokenizer, info


def _load_or_train(cls, cfg, name: str, steps: int, device: torch.device, verbose: bool, train_fn):
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
