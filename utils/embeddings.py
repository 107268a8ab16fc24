"""Turning token ids into the vectors that enter the first transformer block (chapter 02).

Two questions are answered here:

* *what* a token is: a row of a learned table (`nn.Embedding`), which is the same thing as a
  one-hot vector times a matrix (`one_hot_lookup` shows it), only much cheaper;
* *where* it is: attention alone cannot tell positions apart, so we either add a position
  vector to each token (learned table, or fixed sinusoids), rotate queries and keys by an
  angle that grows with position (RoPE), or penalise attention scores by distance (ALiBi).

`TokenPositionEmbedding` combines a token table with absolute positions and returns the
[B, T, d_model] tensor that the GPT of chapters 05-07 feeds to its first block.

Conventions used throughout:

* dimensions come in pairs (0, 1), (2, 3), ... ("interleaved"), pair i turning at angle
  `position * base ** (-2i / d)`. This is the layout of the original sinusoid and RoPE papers,
  so the sinusoidal table and the RoPE rotation use the same frequencies on the same pairs.
  Llama-style code pairs dimension i with i + d/2 instead ("half split"); the two are the same
  up to a fixed reordering of dimensions, which matters only when loading weights trained
  with the other convention.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

POSITION_KINDS = ("learned", "sinusoidal", "none")


def one_hot_lookup(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Embed ids as one-hot vectors times the table: what `weight[ids]` computes, slowly.

    >>> weight = torch.arange(6.0).view(3, 2)
    >>> one_hot_lookup(torch.tensor([2, 0]), weight)
    tensor([[4., 5.],
            [0., 1.]])
    """
    return F.one_hot(ids, num_classes=weight.shape[0]).to(weight.dtype) @ weight


def _check_even(d: int) -> None:
    if d <= 0 or d % 2:
        raise ValueError(f"the dimension must be a positive even number (it is split into "
                         f"(sin, cos) or rotation pairs), got {d}")


def pair_frequencies(d: int, base: float = 10000.0) -> torch.Tensor:
    """Angular frequency of each dimension pair: `base ** (-2i / d)` for i = 0 .. d/2 - 1.

    Pair 0 turns by one radian per position; the last pair by about 1/base, so together they
    span wavelengths from 2*pi to about 2*pi*base positions.

    >>> pair_frequencies(4, base=100.0)
    tensor([1.0000, 0.1000])
    """
    _check_even(d)
    return base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d).float()


def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed sinusoidal position table of "Attention Is All You Need", shape [T, d].

    Row p holds `sin(p * w_i)` in column 2i and `cos(p * w_i)` in column 2i + 1, with
    `w_i = base ** (-2i / d)`. The dot product of rows p and p + k is `sum_i cos(k * w_i)`: it
    depends on the offset k only, not on p.

    >>> pe = sinusoidal_positions(3, 4)
    >>> pe.shape
    torch.Size([3, 4])
    >>> pe[0]  # position 0: sin(0) = 0, cos(0) = 1
    tensor([0., 1., 0., 1.])
    >>> round(pe[1, 0].item(), 4) == round(math.sin(1.0), 4)
    True
    """
    if T < 0:
        raise ValueError(f"T must be >= 0, got {T}")
    angles = torch.arange(T, dtype=torch.float64)[:, None] * pair_frequencies(d, base).double()
    # stack then flatten interleaves: [sin w0, cos w0, sin w1, cos w1, ...]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2).float()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair (x[..., 2i], x[..., 2i+1]) by the angle with this cos/sin.

    `cos` and `sin` have shape [..., d/2] and broadcast against x's leading dimensions.

    >>> x = torch.tensor([1.0, 0.0])
    >>> rotate_pairs(x, torch.tensor([0.0]), torch.tensor([1.0]))  # 90 degrees
    tensor([0., 1.])
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


def rope_angles(positions: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angle of every (position, pair): `positions[:, None] * w_i`, shape [T, d/2]."""
    return positions.to(torch.float64)[:, None] * pair_frequencies(d, base).double()


def apply_rope(x: torch.Tensor, positions: torch.Tensor | None = None,
               base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding: rotate pair i of the vector at position p by p * w_i.

    `x` has shape [..., T, d] with d even (typically [B, n_heads, T, head_dim]); `positions`
    is a [T] tensor of integer positions (default 0 .. T-1). Apply it to queries and keys,
    never to values: then `apply_rope(q, m) . apply_rope(k, n)` depends on m - n only, because
    rotating both by the same extra angle leaves their dot product unchanged.

    >>> q, k = torch.randn(1, 8), torch.randn(1, 8)
    >>> s1 = apply_rope(q, torch.tensor([5])) @ apply_rope(k, torch.tensor([2])).T
    >>> s2 = apply_rope(q, torch.tensor([13])) @ apply_rope(k, torch.tensor([10])).T
    >>> torch.allclose(s1, s2, atol=1e-5)  # both offsets are 3
    True
    """
    T, d = x.shape[-2], x.shape[-1]
    _check_even(d)
    if positions is None:
        positions = torch.arange(T, device=x.device)
    if positions.shape != (T,):
        raise ValueError(f"positions must have shape ({T},) to match x, "
                         f"got {tuple(positions.shape)}")
    angles = rope_angles(positions, d, base).to(x.device)
    return rotate_pairs(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype))


class RotaryEmbedding(nn.Module):
    """`apply_rope` with the cos/sin tables computed once and cached for `max_len` positions.

    Call it on queries and keys of shape [..., T, head_dim]; `offset` is the position of the
    first of the T tokens (used when generating with a cache of past keys, chapter 09), or a
    [B, T] tensor giving every token of x [B, heads, T, head_dim] its own position (a batch
    of left-padded prompts, `utils.batch_generation`). Positions beyond the cache are
    computed on the fly, so there is no hard length limit.

    >>> rope = RotaryEmbedding(head_dim=8, max_len=16)
    >>> x = torch.randn(2, 4, 10, 8)            # [B, n_heads, T, head_dim]
    >>> rope(x).shape
    torch.Size([2, 4, 10, 8])
    >>> torch.allclose(rope(x), apply_rope(x), atol=1e-6)
    True
    """

    def __init__(self, head_dim: int, max_len: int = 2048, base: float = 10000.0) -> None:
        super().__init__()
        _check_even(head_dim)
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        angles = rope_angles(torch.arange(max_len), head_dim, base)
        # not persistent: derived from the config, so it is not saved in checkpoints
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        T = x.shape[-2]
        if isinstance(offset, torch.Tensor):                # [B, T]: each row its own positions
            if int(offset.max()) < self.max_len:
                cos, sin = self.cos[offset], self.sin[offset]           # [B, T, d/2]
            else:
                angles = rope_angles(offset.flatten().cpu(), self.head_dim, self.base)
                angles = angles.view(*offset.shape, -1).to(x.device)
                cos, sin = angles.cos().float(), angles.sin().float()
            cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)             # the same for every head
        elif offset + T <= self.max_len:
            cos, sin = self.cos[offset:offset + T], self.sin[offset:offset + T]
        else:
            angles = rope_angles(torch.arange(offset, offset + T), self.head_dim, self.base)
            cos, sin = angles.cos().float().to(x.device), angles.sin().float().to(x.device)
        return rotate_pairs(x, cos.to(x.dtype), sin.to(x.dtype))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base:g}"


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """One ALiBi slope per head (Press et al., 2022).

    For a power of two n the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...,
    2^(-8): eight heads get 1/2, 1/4, ..., 1/256. For other n, take the slopes of the closest
    smaller power of two c, then add every other slope (the 1st, 3rd, 5th, ...) of the
    sequence for 2c until there are n. The extra slopes fall halfway (in log scale) between
    the first ones, so all heads stay distinct and spread over the same range.

    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039])
    >>> alibi_slopes(6) * 256  # the four of n=4, then 1st and 3rd of n=8
    tensor([ 64.,  16.,   4.,   1., 128.,  32.])
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(closest)
    if closest != n_heads:
        slopes += geometric(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes)


def alibi_bias(n_heads: int, T: int) -> torch.Tensor:
    """ALiBi's additive attention bias, shape [n_heads, T, T]: `-slope_h * |i - j|`.

    Query i looking at key j pays a penalty proportional to their distance, with a different
    slope per head (steep heads look locally, shallow ones far). Nothing is added to the
    token vectors. For j <= i this is the paper's `-slope * (i - j)`; for j > i (future keys)
    we use the same penalty on |i - j|, which suits a bidirectional encoder. A causal model
    masks those entries anyway (chapter 06), so the choice does not matter there.

    >>> alibi_bias(1, 3) * 256  # one head: slope 1/256
    tensor([[[ 0., -1., -2.],
             [-1.,  0., -1.],
             [-2., -1.,  0.]]])
    """
    position = torch.arange(T)
    distance = (position[:, None] - position[None, :]).abs().float()  # [T, T]
    return -alibi_slopes(n_heads)[:, None, None] * distance + 0.0  # + 0.0 turns -0.0 into 0.0


class TokenPositionEmbedding(nn.Module):
    """Token embedding plus absolute positions: ids [B, T] -> vectors [B, T, d_model].

    positions:
        "learned"     a second table with one trainable vector per position (GPT-2);
        "sinusoidal"  the fixed table of `sinusoidal_positions` (no parameters);
        "none"        token vectors only, for models that put position into attention
                      (RoPE or ALiBi) instead.

    Attributes: `token` (the nn.Embedding of tokens; a GPT can tie its output layer to
    `token.weight`), `position` (the nn.Embedding of positions, or None), `table` (the fixed
    sinusoidal buffer, only with positions="sinusoidal").

    Both tables start as N(0, 0.02^2), as in GPT-2. `start` is the position of the first id
    (non-zero when generating with a cache, chapter 09), or a tensor shaped like `ids` that
    gives every id its own position (left-padded batches, `utils.batch_generation`). Asking
    for positions beyond `max_len` raises a ValueError that says so: a learned table has no
    row for them.

    >>> emb = TokenPositionEmbedding(vocab_size=65, d_model=32, max_len=16)
    >>> emb(torch.zeros(4, 10, dtype=torch.long)).shape    # [B, T] -> [B, T, d_model]
    torch.Size([4, 10, 32])
    """

    def __init__(self, vocab_size: int, d_model: int, max_len: int,
                 positions: str = "learned", dropout: float = 0.0) -> None:
        super().__init__()
        if positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {positions!r}")
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.positions = positions
        self.token = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.token.weight, std=0.02)
        self.position: nn.Embedding | None = None
        if positions == "learned":
            self.position = nn.Embedding(max_len, d_model)
            nn.init.normal_(self.position.weight, std=0.02)
        elif positions == "sinusoidal":
            self.register_buffer("table", sinusoidal_positions(max_len, d_model),
                                 persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"expected token ids of shape [B, T], got {tuple(ids.shape)}")
        T = ids.shape[1]
        if isinstance(start, torch.Tensor):                   # one position per id
            if start.shape != ids.shape:
                raise ValueError(f"start: a tensor of positions must have the shape of ids "
                                 f"{tuple(ids.shape)}, got {tuple(start.shape)}")
            first, last, rows = int(start.min()), int(start.max()), start
        else:
            first, last, rows = start, start + T - 1, slice(start, start + T)
        if first < 0 or last >= self.max_len:
            raise ValueError(f"positions {first}..{last} do not fit: this embedding "
                             f"was built with max_len={self.max_len}; crop the input to the "
                             f"last {self.max_len} tokens or build it with a larger max_len")
        x = self.token(ids)                                    # [B, T, d_model]
        if self.position is not None:
            x = x + self.position.weight[rows]       # [T, d_model] broadcasts, or [B, T, d_model]
        elif self.positions == "sinusoidal":
            x = x + self.table[rows]
        return self.dropout(x)

    def extra_repr(self) -> str:
        return f"positions={self.positions!r}, max_len={self.max_len}"
