"""Attention without the T×T matrix: the online softmax, tiled attention and a FlashAttention-style
backward pass in plain PyTorch (chapter 09).

Naive attention builds the whole score matrix q kᵀ, [..., T, S] for each head, so its memory
grows as T². Nothing forces that: the softmax over a row of keys can be computed one block of
keys at a time, as long as each block's partial result carries three things:

* `m`, the largest score seen so far in the row, [..., T, 1];
* `l`, the sum of exp(score - m) over the keys seen so far, [..., T, 1];
* `o`, the *unnormalised* output, sum of exp(score - m) · v over those keys, [..., T, d_v].

Two such partial results over disjoint key blocks merge exactly (`online_softmax_merge`), and
the final output is o / l. `tiled_attention` loops over query blocks and key blocks, so the
largest temporary is one [block, block] tile. `FlashAttention` makes it trainable: the forward
saves only q, k, v, the output and one number per row, the log-sum-exp m + log l, and the
backward recomputes each tile's weights from them instead of storing a T×T matrix.

Shapes are [B, h, T, d] (any leading dimensions work): q is [..., T, d], k is [..., S, d],
v is [..., S, d_v]; scores are scaled by 1/√d. `causal=True` aligns the diagonal bottom-right
as `utils.attention.causal_mask` does, so query t (of the last T positions) sees keys up to its
own position. Ring attention and sliding-window attention, built on the same merge, live in
`utils.ring_attention`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["online_softmax_merge", "naive_attention", "tiled_attention", "tiled_attention_lse",
           "FlashAttention", "flash_attention", "fused_sdpa_backend"]


def online_softmax_merge(m1: torch.Tensor, l1: torch.Tensor, o1: torch.Tensor,
                         m2: torch.Tensor, l2: torch.Tensor, o2: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge two partial softmax results computed over disjoint sets of keys.

    Each part describes, for every query row, the keys it has seen:

    * `m` [..., T, 1]: the row's largest score among those keys (-inf if it saw none);
    * `l` [..., T, 1]: sum over those keys of exp(score - m);
    * `o` [..., T, d]: sum over those keys of exp(score - m) · v (NOT divided by `l`).

    The merged part uses the larger maximum m = max(m1, m2); each part's sums were taken
    relative to its own maximum, so they are rescaled by exp(m1 - m) and exp(m2 - m) before
    being added. Dividing the final `o` by `l` gives softmax(scores) @ v over all keys.
    A row where one part saw no key (m = -inf, l = 0, o = 0) takes the other part unchanged;
    a row where neither did stays (-inf, 0, 0), never NaN.

    >>> s, v = torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[1.0], [2.0], [3.0]])
    >>> def part(cols):  # the (m, l, o) of one block of keys
    ...     m = s[:, cols].amax(-1, keepdim=True)
    ...     p = torch.exp(s[:, cols] - m)
    ...     return m, p.sum(-1, keepdim=True), p @ v[cols]
    >>> m, l, o = online_softmax_merge(*part([0]), *part([1, 2]))
    >>> torch.allclose(o / l, torch.softmax(s, -1) @ v)
    True
    """
    m = torch.maximum(m1, m2)
    # exp(-inf - -inf) would be NaN: where both parts are empty, subtract 0 instead (both
    # rescale factors are then exp(-inf) = 0 and the row stays empty).
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    scale1, scale2 = torch.exp(m1 - m_safe), torch.exp(m2 - m_safe)
    return m, scale1 * l1 + scale2 * l2, scale1 * o1 + scale2 * o2


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> None:
    """Raise a ValueError naming the argument if q, k, v cannot be attention inputs."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"{name} should be a tensor [..., T, d] (e.g. [B, h, T, d]), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"q, k and v need the same leading (batch, head) dimensions, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k need the same feature size d, got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k and v need the same number of positions, got k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)}")
    if causal and k.size(-2) < q.size(-2):
        raise ValueError(f"causal attention needs at least as many keys as queries, got "
                         f"{q.size(-2)} queries and {k.size(-2)} keys")


def check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return block_size


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool = False) -> torch.Tensor:
    """softmax(q kᵀ/√d) v with the whole [..., T, S] score matrix in memory: the reference.

    >>> q = torch.randn(1, 2, 5, 4)
    >>> naive_attention(q, q, q, causal=True).shape
    torch.Size([1, 2, 5, 4])
    """
    check_qkv(q, k, v, causal)
    T, S = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))         # [..., T, S]
    if causal:
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1)
        scores = scores.masked_fill(future, -math.inf)
    return torch.softmax(scores, dim=-1) @ v


def key_mask(q_start: int, q_stop: int, k_start: int, k_stop: int, offset: int,
             causal: bool, window: int | None, device) -> torch.Tensor | None:
    """Boolean [q_stop - q_start, k_stop - k_start] tile of the mask (True = may attend).

    Positions are absolute: query i sits at position i + offset (offset = S - T aligns the
    queries with the last T keys). `window` keeps only keys less than `window` positions back
    (and, when not causal, less than `window` positions ahead). None means "every key of the
    tile is visible", as for all tiles below a causal diagonal: they need no mask at all.
    """
    nearest = q_start + offset - (k_stop - 1)          # smallest query - key distance in the tile
    farthest = q_stop - 1 + offset - k_start           # largest
    fully_visible = ((not causal or nearest >= 0)
                     and (window is None or max(farthest, -nearest if not causal else 0) < window))
    if fully_visible:
        return None
    distance = (torch.arange(q_start, q_stop, device=device)[:, None] + offset
                - torch.arange(k_start, k_stop, device=device)[None, :])   # > 0: key in the past
    allowed = torch.ones_like(distance, dtype=torch.bool)
    if causal:
        allowed &= distance >= 0
    if window is not None:
        allowed &= distance < window if causal else distance.abs() < window
    return allowed


def attend_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The partial softmax (m, l, o) of queries q over one block of keys, as in
    `online_softmax_merge`. Masked keys count as absent; a row with no key gets (-inf, 0, 0)."""
    scores = (q @ k.transpose(-2, -1)) * scale                          # [..., tq, tk]: one tile
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    m = scores.amax(dim=-1, keepdim=True)
    p = torch.exp(scores - torch.where(torch.isneginf(m), torch.zeros_like(m), m))
    return m, p.sum(dim=-1, keepdim=True), p @ v


def tiled_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention's output [..., T, d_v] and each row's log-sum-exp [..., T].

    logsumexp = m + log(l) is all the backward pass needs to rebuild any weight of the row:
    softmax weight = exp(score - logsumexp). A row with no visible key has logsumexp -inf and
    output 0.
    """
    check_qkv(q, k, v, causal)
    block = check_block_size(block_size)
    T, S = q.size(-2), k.size(-2)
    scale, offset = 1.0 / math.sqrt(q.size(-1)), S - T
    out = q.new_empty(*q.shape[:-1], v.size(-1))
    lse = q.new_empty(q.shape[:-1])
    for q0 in range(0, T, block):
        q1 = min(q0 + block, T)
        qi = q[..., q0:q1, :]
        m = qi.new_full((*qi.shape[:-1], 1), -math.inf)               # nothing seen yet
        l_sum = qi.new_zeros(*qi.shape[:-1], 1)
        o = qi.new_zeros(*qi.shape[:-1], v.size(-1))
        # Causal: keys after this block's last query are never seen, so stop the loop there.
        k_end = min(S, q1 + offset) if causal else S
        for k0 in range(0, k_end, block):
            k1 = min(k0 + block, k_end)
            mask = key_mask(q0, q1, k0, k1, offset, causal, None, q.device)
            part = attend_block(qi, k[..., k0:k1, :], v[..., k0:k1, :], scale, mask)
            m, l_sum, o = online_softmax_merge(m, l_sum, o, *part)
        out[..., q0:q1, :] = o / l_sum.clamp_min(torch.finfo(l_sum.dtype).tiny)  # empty row: 0
        lse[..., q0:q1] = (m + torch.log(l_sum)).squeeze(-1)          # log 0 = -inf when empty
    return out, lse


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    block_size: int = 128) -> torch.Tensor:
    """Attention computed tile by tile with an online softmax; equals `naive_attention`.

    Peak extra memory is one [..., block_size, block_size] tile plus the output, instead of
    the [..., T, S] score matrix.

    >>> q, k, v = torch.randn(3, 2, 2, 70, 16).unbind(0)
    >>> torch.allclose(tiled_attention(q, k, v, True, block_size=32),
    ...                naive_attention(q, k, v, True), atol=1e-5)
    True
    """
    return tiled_attention_lse(q, k, v, causal, block_size)[0]


class FlashAttention(torch.autograd.Function):
    """Tiled attention with a memory-light backward pass (the idea of FlashAttention).

    Autograd through `tiled_attention` would keep every tile's weights for the backward pass:
    T×S numbers again. This Function saves only q, k, v, the output and the per-row
    log-sum-exp, and in backward recomputes each tile's weights p = exp(s - logsumexp). With
    dO the gradient of the output, per tile:

        dV += pᵀ dO          dP = dO Vᵀ          dS = p ⊙ (dP - rowsum(dO ⊙ O))
        dQ += dS K · scale   dK += dSᵀ Q · scale

    (rowsum(dO ⊙ O) equals rowsum(p ⊙ dP) over the whole row, the softmax's correction term,
    computed once from the saved output.) Call it as `flash_attention(q, k, v, causal)`.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=False, block_size=128):
        out, lse = tiled_attention_lse(q, k, v, causal, block_size)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.block_size = causal, block_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable   # a second derivative would need more saving
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        causal, block = ctx.causal, ctx.block_size
        T, S = q.size(-2), k.size(-2)
        scale, offset = 1.0 / math.sqrt(q.size(-1)), S - T
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        row_dot = (grad_out * out).sum(dim=-1, keepdim=True)              # [..., T, 1]
        # A row that saw no key has lse = -inf and zero weights; +inf makes exp(s - lse) = 0.
        lse = torch.where(torch.isneginf(lse), torch.full_like(lse, math.inf), lse)[..., None]
        for q0 in range(0, T, block):
            q1 = min(q0 + block, T)
            qi, dOi = q[..., q0:q1, :], grad_out[..., q0:q1, :]
            k_end = min(S, q1 + offset) if causal else S
            for k0 in range(0, k_end, block):
                k1 = min(k0 + block, k_end)
                kj, vj = k[..., k0:k1, :], v[..., k0:k1, :]
                scores = (qi @ kj.transpose(-2, -1)) * scale
                mask = key_mask(q0, q1, k0, k1, offset, causal, None, q.device)
                if mask is not None:
                    scores = scores.masked_fill(~mask, -math.inf)
                p = torch.exp(scores - lse[..., q0:q1, :])                # this tile's weights
                dv[..., k0:k1, :] += p.transpose(-2, -1) @ dOi
                dscores = p * (dOi @ vj.transpose(-2, -1) - row_dot[..., q0:q1, :])
                dq[..., q0:q1, :] += (dscores @ kj) * scale
                dk[..., k0:k1, :] += (dscores.transpose(-2, -1) @ qi) * scale
        return dq, dk, dv, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    block_size: int = 128) -> torch.Tensor:
    """Differentiable tiled attention that never stores a T×S matrix, forward or backward.

    >>> q, k, v = torch.randn(3, 1, 1, 40, 8, requires_grad=True).unbind(0)
    >>> flash_attention(q, k, v, causal=True, block_size=16).sum().backward()
    """
    check_qkv(q, k, v, causal)
    check_block_size(block_size)
    return FlashAttention.apply(q, k, v, causal, block_size)


# The dtypes each device's fused flash kernel accepts (PyTorch's CUDA FlashAttention-2 takes
# only 16-bit floats; its CPU version also runs float32 and float64).
_FLASH_DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                 "cuda": (torch.float16, torch.bfloat16)}


def fused_sdpa_backend(device: torch.device | str, dtype: torch.dtype):
    """(backend, note): the SDPA kernel to restrict `F.scaled_dot_product_attention` to with
    `torch.nn.attention.sdpa_kernel` for q, k, v of this device and dtype, and one line saying
    why. The fused flash kernel where it accepts the dtype, else the math kernel (which runs
    anywhere), so that restricting the choice never fails with "No available kernel".

    >>> backend, note = fused_sdpa_backend("cpu", torch.float32)
    >>> backend.name
    'FLASH_ATTENTION'
    >>> fused_sdpa_backend("cuda", torch.bfloat16)[0].name
    'FLASH_ATTENTION'
    >>> backend, note = fused_sdpa_backend("cuda", torch.float32)
    >>> backend.name, note
    ('MATH', "cuda's flash kernel takes only float16/bfloat16, not float32: using the math kernel")

    Restricted to the kernel it names, SDPA runs (here on a CPU, both ways):

    >>> import torch.nn.functional as F
    >>> from torch.nn.attention import sdpa_kernel
    >>> for dtype in (torch.float32, torch.float16):
    ...     q = torch.randn(1, 2, 8, 4).to(dtype)
    ...     backend, note = fused_sdpa_backend("cpu", dtype)
    ...     with sdpa_kernel(backend):
    ...         print(backend.name, F.scaled_dot_product_attention(q, q, q, is_causal=True).dtype)
    FLASH_ATTENTION torch.float32
    MATH torch.float16
    """
    from torch.nn.attention import SDPBackend

    kind = torch.device(device).type
    accepted = _FLASH_DTYPES.get(kind, ())
    if dtype in accepted:
        return SDPBackend.FLASH_ATTENTION, f"fused flash kernel ({kind}, {_name(dtype)})"
    if not accepted:
        return SDPBackend.MATH, f"no fused kernel is picked on {kind} here: using the math kernel"
    names = "/".join(_name(d) for d in accepted)
    return SDPBackend.MATH, (f"{kind}'s flash kernel takes only {names}, not {_name(dtype)}: "
                             "using the math kernel")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
