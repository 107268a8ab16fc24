"""Cross-attention and a small encoder-decoder that learns to reverse strings (chapter 06).

The three transformer families differ only in their masks and in where the keys come from:

* encoder-only (BERT): every token attends to every real token, both directions
  (`utils.encoder`: `Encoder`, trained by masked language modelling);
* decoder-only (GPT): causal self-attention (chapter 07's `GPT`);
* encoder-decoder (T5, the original Transformer): an encoder reads the source; a decoder
  generates the target with causal self-attention plus **cross-attention**, whose queries come
  from the decoder and whose keys and values come from the encoder (`EncoderDecoder`).

Masks follow `utils.masks`: boolean, True = may attend, broadcastable to [B, T, S].
Padding is always on the right, and token id 0 is padding in the toy task below.

    model, info = load_or_train_reverser()                 # trains once, then loads from runs/
    reverse_strings(model, ["course", "mask"])             # -> ['esruoc', 'ksam']
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import MultiHeadAttention
from utils.encoder import IGNORE, Embedding, Encoder, EncoderDecoderConfig, fit, load_or_train
from utils.layers import FeedForward
from utils.masks import for_heads, padding_mask
from utils.model import make_norm


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


def train_reverser(model: EncoderDecoder, steps: int, batch_size: int = 64, lr: float = 3e-3,
                   seed: int = 0, log_every: int = 25) -> list[tuple[int, float]]:
    """AdamW with a short warm-up and a linear decay, on fresh random training strings every
    step. Returns (step, loss) every `log_every` steps and at the last one."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)

    def batch_loss() -> torch.Tensor:
        src, src_mask, tgt_in, targets = reverse_batch(random_strings(batch_size, generator), device)
        return model(src, tgt_in, src_mask, targets)[1]

    return fit(model, batch_loss, steps, lr, log_every)


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
    return load_or_train(EncoderDecoder, cfg, name, steps, device, verbose,
                          lambda model: train_reverser(model, steps))
