"""Attention, built up from one dot product to multi-head attention (chapters 03 and 04).

Shapes follow one convention everywhere: the last two dimensions are (positions, features),
anything in front is batch-like. `q` is [..., T, d_k], `k` is [..., S, d_k], `v` is
[..., S, d_v]; the output is [..., T, d_v] and the attention weights are [..., T, S]
(row t says how much query t takes from each of the S keys).

Masks come in two flavours, both broadcastable to [..., T, S]:

* boolean: True means "may attend" (the same convention as
  `torch.nn.functional.scaled_dot_product_attention`);
* additive (float): added to the scores before the softmax, 0 to keep and -inf to block.

A query whose every key is masked gets all-zero weights and an all-zero output (not NaN),
which is also what PyTorch's own scaled_dot_product_attention returns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.layers import HeadRMSNorm


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None
                ) -> torch.Tensor:
    """Boolean [T, S] mask where query t may attend to keys up to its own position.

    With S > T (queries are the last T of S positions, as with a KV cache) the diagonal is
    aligned bottom-right, so the last query still sees every key.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d_k) v, returning (output, weights).

    `mask` is boolean ("may attend") or additive (see the module docstring); `is_causal`
    adds a causal mask on top. `scale` defaults to 1/√d_k.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> out, w = scaled_dot_product_attention(q, q, torch.eye(2))
    >>> w.sum(-1)
    tensor([1., 1.])
    >>> out.shape, w.shape
    (torch.Size([2, 2]), torch.Size([2, 2]))
    """
    d_k = q.size(-1)
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale              # [..., T, S]
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), -math.inf)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, -math.inf)
        else:
            scores = scores + mask
    # A row with no allowed key would be softmax(-inf, ..., -inf) = 0/0 = NaN. Give such rows
    # zero weights instead: the query then receives nothing (output 0), and gradients stay finite.
    has_key = (scores > -math.inf).any(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1) * has_key
    return weights @ v, weights


class AttentionHead(nn.Module):
    """One learned attention head: x -> (softmax(Q Kᵀ/√d_head) V, weights).

    Q = x W_Q, K = x W_K, V = x W_V, each a d_model -> d_head linear map.

    >>> head = AttentionHead(d_model=8, d_head=4)
    >>> out, w = head(torch.randn(2, 5, 8))
    >>> out.shape, w.shape
    (torch.Size([2, 5, 4]), torch.Size([2, 5, 5]))
    """

    def __init__(self, d_model: int, d_head: int, bias: bool = False) -> None:
        super().__init__()
        self.W_Q = nn.Linear(d_model, d_head, bias=bias)  # what this token looks for
        self.W_K = nn.Linear(d_model, d_head, bias=bias)  # what this token offers
        self.W_V = nn.Linear(d_model, d_head, bias=bias)  # what it hands over when chosen

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.W_Q(x), self.W_K(x), self.W_V(x)    # each [B, T, d_head]
        return scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, n_heads * d_head] -> [B, n_heads, T, d_head]; head h owns channels h*d_head... .

    >>> split_heads(torch.arange(8.).view(1, 2, 4), n_heads=2)[0, 1]  # head 1: channels 2, 3
    tensor([[2., 3.],
            [6., 7.]])
    """
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, n_heads, T, d_head] -> [B, T, n_heads * d_head], the inverse of split_heads.

    >>> x = torch.randn(2, 3, 4)
    >>> torch.equal(merge_heads(split_heads(x, 2)), x)
    True
    """
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, n_kv, T, d] -> [B, n_kv * n_rep, T, d]: each key/value head serves n_rep query heads.

    Query heads are grouped in order: kv head 0 serves query heads 0..n_rep-1, and so on.

    >>> repeat_kv(torch.tensor([10., 20.]).view(1, 2, 1, 1), 2).flatten()
    tensor([10., 10., 20., 20.])
    """
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a fused QKV projection and optional grouped-query attention.

    `n_kv_heads` (default: `n_heads`) below `n_heads` gives grouped-query attention; 1 gives
    multi-query attention. `use_sdpa=True` runs PyTorch's fused kernel, otherwise the
    from-scratch `scaled_dot_product_attention` above; both give the same output.

    Fused layout: `qkv.weight` rows are [Q heads | K heads | V heads], each block ordered by
    head (rows h*d_head:(h+1)*d_head belong to head h).

    `forward(x, mask=None, is_causal=False, need_weights=False, context=None)`:
    `mask` and `is_causal` as in `scaled_dot_product_attention`; `context` ([B, S, d_model])
    makes it cross-attention (queries from x, keys and values from context); with
    `need_weights=True` it returns (output, weights [B, n_heads, T, S]) and always takes the
    from-scratch path, since the fused kernel never materialises the weights.

    `cache` (optional, chapters 08-09): a `KVCache`; this layer's keys and values (after the
    rotation) are appended to slot `layer` and the queries attend to everything cached, so
    only the new tokens need to be fed in. Use `is_causal=True` with it: the causal mask is
    then aligned bottom-right (the new tokens see every cached one).

    `rope` (optional, chapter 05): a module such as `utils.embeddings.RotaryEmbedding` that
    rotates queries and keys per head, called as `rope(t, offset)` on [B, heads, T, d_head];
    `offset` in `forward` is the position of the first of the T tokens (non-zero when the
    keys of earlier tokens are cached, chapter 09), or a [B, T] tensor of every token's
    position (left-padded batches, `utils.batch_generation`). Values are never rotated.

    `qk_norm=True` (the speedruns' QK-norm): each head's query and key vectors are divided by
    their root mean square (`utils.layers.HeadRMSNorm`, no parameters) before the rotation,
    so a score can never exceed sqrt(d_head) and no head's softmax saturates however large
    the weights grow; that tolerates a bigger learning rate. The cache then holds normalised
    keys. `q_norm` and `k_norm` are the two modules (hook them to see the vectors).

    >>> mha = MultiHeadAttention(d_model=16, n_heads=4, n_kv_heads=2)
    >>> out, w = mha(torch.randn(2, 5, 16), is_causal=True, need_weights=True)
    >>> out.shape, w.shape
    (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]))
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 dropout: float = 0.0, bias: bool = True, use_sdpa: bool = False,
                 rope: nn.Module | None = None, qk_norm: bool = False) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.d_head = d_model // n_heads
        self.use_sdpa, self.dropout = use_sdpa, dropout
        # One matmul makes Q, K and V for every head at once: [B, T, (h + 2 h_kv) d_head].
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.d_head, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # W_O: mixes the heads' outputs
        self.attn_drop, self.resid_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.rope = rope  # may be shared by every layer: it only holds cos/sin tables
        self.q_norm = HeadRMSNorm() if qk_norm else None
        self.k_norm = HeadRMSNorm() if qk_norm else None

    def _project(self, x: torch.Tensor, context: torch.Tensor | None):
        sizes = [self.n_heads * self.d_head, self.n_kv_heads * self.d_head,
                 self.n_kv_heads * self.d_head]
        if context is None:
            return self.qkv(x).split(sizes, dim=-1)
        # Cross-attention: the same weights, but K and V read the other sequence.
        w_q, w_kv = self.qkv.weight.split([sizes[0], sizes[1] + sizes[2]])
        b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split(
            [sizes[0], sizes[1] + sizes[2]])
        q = F.linear(x, w_q, b_q)
        k, v = F.linear(context, w_kv, b_kv).split(sizes[1:], dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                need_weights: bool = False, context: torch.Tensor | None = None,
                offset: int | torch.Tensor = 0, cache: KVCache | None = None, layer: int = 0):
        q, k, v = self._project(x, context)
        q = split_heads(q, self.n_heads)                    # [B, h, T, d_head]
        k = split_heads(k, self.n_kv_heads)                 # [B, h_kv, S, d_head]
        v = split_heads(v, self.n_kv_heads)
        if self.q_norm is not None:                         # QK-norm: unit RMS per head
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:                           # position enters through rotation
            q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:                               # prepend the earlier tokens' K, V
            k, v = cache.update(layer, k, v)                # [B, h_kv, past + T, d_head]
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)     # [B, h, S, d_head]
        weights = None
        if self.use_sdpa and not need_weights:
            if is_causal and mask is None and q.size(-2) == k.size(-2):
                attn_mask, causal = None, True              # the kernel's fast causal path
            else:
                attn_mask, causal = mask, False
                if is_causal:                               # fold causality into the mask
                    cm = causal_mask(q.size(-2), k.size(-2), q.device)
                    attn_mask = cm if mask is None else (
                        mask & cm if mask.dtype == torch.bool
                        else mask.masked_fill(~cm, -math.inf))
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=causal,
                dropout_p=self.dropout if self.training else 0.0)
        else:
            y, weights = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
            y = self.attn_drop(weights) @ v if self.training and self.dropout > 0 else y
        y = self.resid_drop(self.proj(merge_heads(y)))      # [B, T, d_model]
        return (y, weights) if need_weights else y

    @classmethod
    def from_heads(cls, heads: list[AttentionHead], proj: nn.Linear) -> MultiHeadAttention:
        """Fuse separate AttentionHeads and an output projection into one module.

        >>> heads = [AttentionHead(8, 4) for _ in range(2)]
        >>> mha = MultiHeadAttention.from_heads(heads, nn.Linear(8, 8, bias=False))
        >>> x = torch.randn(1, 3, 8)
        >>> y = torch.cat([h(x)[0] for h in heads], -1) @ mha.proj.weight.T
        >>> torch.allclose(mha(x), y, atol=1e-6)
        True
        """
        d_model, d_head = heads[0].W_Q.in_features, heads[0].W_Q.out_features
        bias = heads[0].W_Q.bias is not None
        mha = cls(d_model, len(heads), bias=bias)
        if mha.d_head != d_head:
            raise ValueError(f"{len(heads)} heads of width {d_head} do not make d_model={d_model}")
        with torch.no_grad():
            for part, name in enumerate(("W_Q", "W_K", "W_V")):
                block = torch.cat([getattr(h, name).weight for h in heads])
                mha.qkv.weight[part * d_model:(part + 1) * d_model] = block
                if bias:
                    mha.qkv.bias[part * d_model:(part + 1) * d_model] = torch.cat(
                        [getattr(h, name).bias for h in heads])
            mha.proj.weight.copy_(proj.weight)
            if bias and proj.bias is not None:
                mha.proj.bias.copy_(proj.bias)
            elif bias:
                mha.proj.bias.zero_()
        return mha


class KVCache:
    """The keys and values of the tokens a model has already read, one pair per layer.

    Generating token t+1 needs the keys and values of tokens 0..t in every layer. Without a
    cache they are recomputed from scratch at every step; with one, each step computes them
    for the single new token and appends it here. Stored before `repeat_kv`, so a
    grouped-query model keeps only its n_kv heads: [B, n_kv_heads, seq_len, d_head] per layer.

    >>> cache = KVCache(n_layer=1)
    >>> k, v = cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    >>> k, v = cache.update(0, torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    >>> k.shape, cache.seq_len
    (torch.Size([1, 2, 4, 4]), 4)
    """

    def __init__(self, n_layer: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def seq_len(self) -> int:
        """Positions cached so far (read it before a forward pass: layer 0 is updated first)."""
        return 0 if self.keys[0] is None else self.keys[0].size(-2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' k, v [B, h_kv, T, d] to `layer`; return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def num_bytes(self) -> int:
        """Memory held by the cached tensors."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


def attention_cost(d_model: int, n_heads: int, T: int, n_kv_heads: int | None = None,
                   bias: bool = False) -> dict[str, int]:
    """Parameters, forward FLOPs and KV-cache floats of one MultiHeadAttention layer.

    FLOPs count a multiply-add as 2 and ignore the softmax (O(h T²), no d factor).
    The split into heads changes neither parameters nor FLOPs, only their arrangement:

    >>> one, many = attention_cost(64, 1, 32), attention_cost(64, 8, 32)
    >>> one["params"] == many["params"], one["flops"] == many["flops"]
    (True, True)
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d_head = d_model // n_heads
    qkv_out = (n_heads + 2 * n_kv_heads) * d_head
    params = d_model * qkv_out + d_model * d_model + (qkv_out + d_model if bias else 0)
    proj_flops = 2 * T * d_model * qkv_out + 2 * T * d_model * d_model
    attn_flops = 2 * 2 * n_heads * T * T * d_head       # Q Kᵀ and weights @ V
    return {"params": params, "flops": proj_flops + attn_flops, "proj_flops": proj_flops,
            "attn_flops": attn_flops, "kv_cache_floats": 2 * n_kv_heads * d_head * T,
            "weights_floats": n_heads * T * T}
