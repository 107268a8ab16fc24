"""The transformer block and the GPT built from it (chapter 05; trained from chapter 07 on).

A GPT is a stack of identical blocks between an embedding and an output layer:

    ids [B, T] -> token (+ position) embedding -> Block x n_layer -> final norm -> lm_head
                                                                     -> logits [B, T, vocab]

and each block does two things, each wrapped in a norm and a residual connection ("pre-norm"):

    x = x + attn(norm1(x))     tokens talk: each position reads from earlier positions
    x = x + mlp(norm2(x))      tokens think: each position is transformed on its own

One `GPTConfig` covers both families the course compares:

* GPT-2: learned positions, LayerNorm, GELU feed-forward, biases, tied input/output embedding;
* Llama: RoPE inside attention, RMSNorm, SwiGLU feed-forward, no biases, grouped-query
  attention (`n_kv_head < n_head`), separate output layer.

The norms and feed-forward networks are in `utils/layers.py`, attention in
`utils/attention.py`. The end of this file counts parameters and FLOPs from a config alone.
`utils/hf_convert.py` loads Hugging Face weights of both layouts into this model; the tests
check the logits match `transformers`' own models.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.attention import KVCache, MultiHeadAttention
from utils.embeddings import RotaryEmbedding, TokenPositionEmbedding, alibi_slopes
from utils.layers import MLPS, FeedForward, LayerNorm, RMSNorm, ffn_hidden_size

POSITIONS = ("learned", "rope", "alibi", "none")
NORMS = ("layer", "rms")


# ------------------------------------------------------------------------------------ config

@dataclass
class GPTConfig:
    """Everything needed to build a GPT. Invalid values raise a ValueError naming the field.

    n_kv_head   key/value heads (None: one per query head; fewer: grouped-query attention)
    dropout     dropout probability in the attention, the feed-forward and the embeddings,
                while training only (0 = off)
    pos         "learned" (GPT-2), "rope" (Llama), "alibi" or "none"
    rope_theta  RoPE's base: the slowest pair of dimensions turns once in ~2*pi*theta
                positions (10000 as in the paper and Llama 2; Llama 3 uses 500000)
    norm        "layer" (LayerNorm) or "rms" (RMSNorm)
    mlp         "gelu" (GPT-2's tanh-approximated GELU), "gelu_exact" (the erf form),
                "relu2" (ReLU squared, the speedruns' cheaper GELU) or "swiglu" (three matrices)
    ffn_hidden  the feed-forward network's hidden width (None: 4 * n_embd for GELU, about
                8/3 * n_embd for SwiGLU; real models set their own, Llama-2-7B 11008)
    bias        biases in every linear layer and LayerNorm
    tie_weights the output layer reuses the token embedding matrix

    The speedruns' tricks (chapter 07; all off by default, which is how every saved model
    was built):

    qk_norm         RMS-normalise each head's queries and keys before the dot product (and
                    before RoPE): scores stay bounded, so a large learning rate cannot
                    saturate a softmax
    zero_init_proj  start attn.proj and mlp.down at zero instead of GPT-2's small normal
                    init: every block is the identity at step 0 and grows from there
    logit_softcap   logits = cap * tanh(logits / cap), in the loss and in generation: no
                    logit can run past +-cap, so the model cannot become overconfident fast
    checkpoint_activations  while training, keep only each block's input and recompute the
                    block in the backward pass: activation memory of one block instead of
                    n_layer, for about a third more compute (not used in eval or no_grad)

    Files saved before `rope_theta` and `ffn_hidden` existed hold no value for them, and
    load with the defaults, which are what those models were built with.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_kv_head: int | None = None
    dropout: float = 0.0
    bias: bool = True
    pos: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layer"
    mlp: str = "gelu"
    ffn_hidden: int | None = None
    tie_weights: bool = True
    qk_norm: bool = False
    zero_init_proj: bool = False
    logit_softcap: float | None = None
    checkpoint_activations: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by "
                             f"n_head={self.n_head}")
        if self.n_kv_head is not None and (
                isinstance(self.n_kv_head, bool) or not isinstance(self.n_kv_head, numbers.Integral)
                or self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"GPTConfig.n_kv_head must be None or a positive divisor of "
                             f"n_head={self.n_head}, got {self.n_kv_head!r}")
        if self.ffn_hidden is not None and (
                isinstance(self.ffn_hidden, bool) or not isinstance(self.ffn_hidden, numbers.Integral)
                or self.ffn_hidden < 1):
            raise ValueError(f"GPTConfig.ffn_hidden must be None or a positive int, "
                             f"got {self.ffn_hidden!r}")
        if (isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, numbers.Real)
                or not 1.0 < self.rope_theta < math.inf):
            raise ValueError(f"GPTConfig.rope_theta must be a number above 1, "
                             f"got {self.rope_theta!r}")
        for name in ("qk_norm", "zero_init_proj", "checkpoint_activations"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, "
                                 f"got {getattr(self, name)!r}")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, numbers.Real)
                                or not 0.0 < cap < math.inf):
            raise ValueError(f"GPTConfig.logit_softcap must be None or a positive number, "
                             f"got {cap!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (("pos", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig.pos='rope' rotates pairs of dimensions, so the head "
                             f"size n_embd/n_head must be even, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_width(self) -> int:
        """The feed-forward hidden width actually built: `ffn_hidden`, or the usual rule."""
        return ffn_hidden_size(self.n_embd, self.mlp) if self.ffn_hidden is None else self.ffn_hidden


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rms":
        return RMSNorm(config.n_embd)
    return LayerNorm(config.n_embd, bias=config.bias)


# ------------------------------------------------------------------------------------- block

class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)).

    `forward(x, mask=None, is_causal=True, offset=0, need_weights=False)`: `mask` is a
    boolean or additive mask for the attention (see utils/attention.py); with
    `need_weights=True` it returns (x, attention weights [B, n_head, T, S]).

    >>> block = Block(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16))
    >>> block(torch.randn(3, 8, 16)).shape                 # the shape never changes
    torch.Size([3, 8, 16])
    """

    def __init__(self, config: GPTConfig, rope: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, config.n_kv_head,
                                       dropout=config.dropout, bias=config.bias,
                                       use_sdpa=True, rope=rope, qk_norm=config.qk_norm)
        self.norm2 = make_norm(config)
        self.mlp = FeedForward(config.n_embd, config.mlp, hidden=config.ffn_width,
                               bias=config.bias, dropout=config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = True,
                offset: int | torch.Tensor = 0, need_weights: bool = False, cache: KVCache | None = None,
                layer: int = 0):
        a = self.attn(self.norm1(x), mask=mask, is_causal=is_causal,
                      need_weights=need_weights, offset=offset, cache=cache, layer=layer)
        a, weights = a if need_weights else (a, None)
        x = x + a                               # tokens talk
        x = x + self.mlp(self.norm2(x))         # tokens think
        return (x, weights) if need_weights else x


# --------------------------------------------------------------------------------------- GPT

@dataclass
class GPTOutput:
    """What `GPT.forward` returns when asked for hidden states or attention weights.

    hidden_states  n_layer + 1 tensors [B, T, n_embd]: the embeddings, then the residual
                   stream after each block (before the final norm; `GPT.unembed` turns any
                   of them into logits, the "logit lens" of chapter 08)
    attentions     n_layer tensors [B, n_head, T, T] of attention weights
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = field(default=None)


class GPT(nn.Module):
    """A decoder-only transformer language model.

    `forward(idx, targets=None)` returns `(logits, loss)`: logits [B, T, vocab_size] and the
    mean cross-entropy against `targets` [B, T] (None without targets). Targets equal to -100
    (PyTorch's default `ignore_index`) are ignored, so a prompt or padding can be left out of
    the loss (chapter 10).

    `forward(idx, targets=None, return_hidden=True, return_attention=True)` returns a
    `GPTOutput` with the hidden states and/or attention weights as well (attention weights
    take the slower from-scratch attention path, since the fused kernel never forms them).

    Extra keyword arguments: `mask` (boolean [T, T] or broadcastable, True = may attend;
    combined with the causal mask), `offset` (position of idx[:, 0], for a KV cache) and
    `positions` ([B, T], each token's own position for the learned table and RoPE; default
    offset, offset + 1, ... in every row; left-padded batches, `utils.batch_generation`).

    `kv_cache` (a `utils.attention.KVCache`, chapter 08): `idx` holds only the tokens after
    the cached ones; their keys and values are appended to the cache, and `offset` is taken
    from it (the number of positions already cached). See `utils.generation`.

    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> idx, targets = torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16))
    >>> logits, loss = model(idx, targets)
    >>> logits.shape, round(loss.item(), 1)          # untrained: loss close to ln(50) = 3.9
    (torch.Size([4, 16, 50]), 3.9)
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = TokenPositionEmbedding(
            config.vocab_size, config.n_embd, config.block_size,
            positions="learned" if config.pos == "learned" else "none", dropout=config.dropout)
        # One table of rotations shared by every layer (it holds no parameters).
        self.rope = (RotaryEmbedding(config.head_dim, max_len=config.block_size,
                                     base=config.rope_theta)
                     if config.pos == "rope" else None)
        if config.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)
        self.blocks = nn.ModuleList(Block(config, self.rope) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # One matrix both reads tokens in and scores them out: saves vocab * n_embd
            # parameters, and a token's input and output vectors learn together.
            self.lm_head.weight = self.embed.token.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds its output to the residual stream, so the stream's variance
        # grows with depth; shrink the layers that write into it by 1/sqrt(2 * n_layer).
        # zero_init_proj goes all the way: they start at 0, so each block starts as identity.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def attention_bias(self, T: int, S: int | None = None, mask: torch.Tensor | None = None):
        """The mask handed to every block: ALiBi's distance penalty and/or the caller's mask.

        Queries are the last T of S positions (S > T once earlier keys are cached), so query
        i and key j are i - j + S - T positions apart, whatever the absolute offset.
        """
        if self.config.pos != "alibi":
            return mask
        S = T if S is None else S
        q_pos = torch.arange(S - T, S, device=self.alibi_slopes.device)
        k_pos = torch.arange(S, device=self.alibi_slopes.device)
        distance = (q_pos[:, None] - k_pos[None, :]).abs().float()       # [T, S]
        bias = -self.alibi_slopes[:, None, None] * distance               # [n_head, T, S]
        if mask is not None:
            bias = bias.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else bias + mask
        return bias

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                return_hidden: bool = False, return_attention: bool = False,
                mask: torch.Tensor | None = None, offset: int = 0,
                kv_cache: KVCache | None = None, positions: torch.Tensor | None = None):
        B, T = idx.shape
        if kv_cache is not None:
            if offset not in (0, kv_cache.seq_len):
                raise ValueError(f"offset={offset} disagrees with the kv_cache, which holds "
                                 f"{kv_cache.seq_len} positions; leave offset out")
            offset = kv_cache.seq_len
        if positions is not None and positions.shape != idx.shape:
            raise ValueError(f"positions must have the shape of idx {tuple(idx.shape)}, "
                             f"got {tuple(positions.shape)}")
        end = offset + T if positions is None else int(positions.max()) + 1
        if end > self.config.block_size:
            raise ValueError(f"cannot run {end} positions: block_size is "
                             f"{self.config.block_size}; crop idx to its last "
                             f"{self.config.block_size - offset} tokens")
        pos = offset if positions is None else positions    # what the table and RoPE read
        x = self.embed(idx, start=pos)                      # [B, T, n_embd]
        S = T if kv_cache is None else offset + T           # keys: cached ones + the new
        bias = self.attention_bias(T, S, mask=mask)
        hidden, attentions = [x], []
        # Activation checkpointing only pays while gradients are being recorded for training.
        recompute = (self.config.checkpoint_activations and self.training and kv_cache is None
                     and torch.is_grad_enabled() and not return_attention)
        for layer, block in enumerate(self.blocks):
            # The cache arguments are passed only when there is a cache, so a Block written
            # before chapter 08 (such as chapter 05's post-norm variant) still plugs in.
            cached = {} if kv_cache is None else {"cache": kv_cache, "layer": layer}
            if return_attention:
                x, weights = block(x, mask=bias, offset=pos, need_weights=True, **cached)
                attentions.append(weights)
            elif recompute:       # store x only; rerun the block in the backward pass
                x = checkpoint(block, x, mask=bias, offset=pos, use_reentrant=False)
            else:
                x = block(x, mask=bias, offset=pos, **cached)
            hidden.append(x)
        logits = self.unembed(x)                            # [B, T, vocab_size]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(),
                                   targets.reshape(-1), ignore_index=-100)
        if return_hidden or return_attention:
            return GPTOutput(logits, loss, hidden if return_hidden else None,
                             attentions if return_attention else None)
        return logits, loss

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, then the output layer: residual stream [.., n_embd] -> logits [.., vocab].

        With `logit_softcap` the logits are squashed into (-cap, cap) by a scaled tanh (about
        the identity well inside it), so generation and the loss see the same capped values."""
        logits = self.lm_head(self.norm(x))
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def get_num_params(self, non_embedding: bool = False) -> int:
        """Parameters, each shared tensor counted once; optionally without the embeddings
        (the usual convention for scaling laws; a tied output layer stays counted)."""
        n = count_parameters(self)
        if non_embedding:
            n -= sum(p.numel() for p in self.embed.parameters())
            if self.config.tie_weights:
                n += self.embed.token.weight.numel()
        return n

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context length, e.g. to run a pretrained model on shorter sequences."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size}, got {block_size}")
        self.config.block_size = block_size
        self.embed.max_len = block_size
        if self.embed.position is not None:
            self.embed.position.weight = nn.Parameter(self.embed.position.weight[:block_size])


# ---------------------------------------------------------------------------- where the cost is

def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; a tensor shared by two layers (tied weights) counts once.

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(config: GPTConfig) -> dict[str, int]:
    """Parameters of a GPT by where they live, computed from the config alone.

    Keys: embedding (tokens + learned positions), attention, ffn, norms, lm_head (0 when
    tied) and total. For the model this file builds, `total == count_parameters(GPT(config))`.

    >>> gpt2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    >>> parameter_breakdown(gpt2)["total"]
    124439808
    """
    d, L, b = config.n_embd, config.n_layer, config.bias
    hidden = config.ffn_width
    kv_width = config.kv_heads * config.head_dim
    embedding = config.vocab_size * d + (config.block_size * d if config.pos == "learned" else 0)
    qkv = d * (d + 2 * kv_width) + (d + 2 * kv_width if b else 0)
    attention = L * (qkv + d * d + (d if b else 0))
    n_mats = 3 if config.mlp == "swiglu" else 2
    ffn = L * (n_mats * d * hidden + ((n_mats - 1) * hidden + d if b else 0))
    per_norm = d + (d if b and config.norm == "layer" else 0)
    norms = (2 * L + 1) * per_norm
    lm_head = 0 if config.tie_weights else config.vocab_size * d
    total = embedding + attention + ffn + norms + lm_head
    return {"embedding": embedding, "attention": attention, "ffn": ffn, "norms": norms,
            "lm_head": lm_head, "total": total}


def estimate_flops_per_token(config: GPTConfig, seq_len: int | None = None,
                             training: bool = False) -> int:
    """Floating-point operations to process one token (a multiply-add counts as 2).

    Forward: 2 per weight used in a matrix multiply (every weight except the embedding
    lookups; a tied lm_head counts once more here because it *is* a matmul), plus attention
    itself, 2 * 2 * n_layer * seq_len * n_embd for Q Kᵀ and weights @ V over `seq_len` keys
    (default block_size; causal masking would halve it, the usual estimate does not).
    Training (forward + backward) costs about 3x the forward: the famous 6N.

    >>> cfg = GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=1, n_embd=4, bias=False)
    >>> estimate_flops_per_token(cfg, seq_len=8)   # 2*(48+16+128+400) matmul + 2*2*8*4
    1312
    """
    parts = parameter_breakdown(config)
    d = config.n_embd
    # weights of the matrix multiplies only (biases and norms are cheap elementwise ops)
    matmul = parts["attention"] + parts["ffn"] + config.vocab_size * d
    if config.bias:
        hidden = config.ffn_width
        n_mats = 3 if config.mlp == "swiglu" else 2
        kv_width = config.kv_heads * config.head_dim
        matmul -= config.n_layer * ((d + 2 * kv_width) + d + (n_mats - 1) * hidden + d)
    seq_len = config.block_size if seq_len is None else seq_len
    forward = 2 * matmul + 2 * 2 * config.n_layer * seq_len * d
    return 3 * forward if training else forward
