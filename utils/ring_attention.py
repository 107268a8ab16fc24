"""Two more ways to avoid the T×T matrix, both built on the online softmax of
`utils.tiled_attention` (chapter 09).

* Ring attention spreads one long sequence over several devices. Each device keeps one chunk
  of queries and starts with the matching chunk of keys and values; the K/V chunks are passed
  around a ring, and every device merges what it sees into its running (m, l, o). After
  n_devices - 1 passes every query has met every key, and no device ever held more than two
  chunks. Here the devices are simulated in one process, so the equality with full attention
  can be checked and the ring can be traced step by step.
* Sliding-window attention lets each query see only the `window` most recent keys. It costs
  O(T·W) time and memory instead of O(T²), and it cannot see further: one layer moves
  information at most W - 1 positions, L layers at most L·(W - 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from utils.masks import sliding_window_mask
from utils.tiled_attention import attend_block, check_block_size, check_qkv, key_mask, online_softmax_merge

__all__ = ["RingStep", "chunk_bounds", "ring_attention", "format_ring_trace",
           "sliding_window_mask", "sliding_window_attention"]


class RingStep(NamedTuple):
    """One entry of ring attention's trace: at `step`, `device` held K/V chunk `chunk`;
    `attended` is False when a causal mask hid that whole chunk from the device's queries."""
    step: int
    device: int
    chunk: int
    attended: bool


def chunk_bounds(T: int, n_chunks: int) -> list[tuple[int, int]]:
    """Split positions 0..T-1 into `n_chunks` contiguous (start, stop) ranges whose sizes
    differ by at most one (the first T % n_chunks get the extra position).

    >>> chunk_bounds(10, 4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    size, extra = divmod(T, n_chunks)
    bounds, start = [], 0
    for i in range(n_chunks):
        stop = start + size + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_devices: int,
                   causal: bool = False, trace: list | None = None) -> torch.Tensor:
    """Full attention over [..., T, d] computed as a simulated ring of `n_devices` devices.

    Device r holds query chunk r throughout; at step s it holds K/V chunk (r - s) mod n, then
    passes it on to device r + 1. T need not divide evenly (see `chunk_bounds`). Pass a list
    as `trace` to receive one `RingStep` per (step, device); `format_ring_trace` prints it.

    >>> q, k, v = torch.randn(3, 1, 2, 10, 4).unbind(0)
    >>> from utils.tiled_attention import naive_attention
    >>> torch.allclose(ring_attention(q, k, v, 3, causal=True), naive_attention(q, k, v, True),
    ...                atol=1e-6)
    True
    """
    check_qkv(q, k, v, causal)
    T = q.size(-2)
    if k.size(-2) != T:
        raise ValueError(f"ring attention splits one sequence: q and k need the same length, "
                         f"got {T} and {k.size(-2)}")
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or not 1 <= n_devices <= T:
        raise ValueError(f"n_devices must be an integer from 1 to T={T} (each device holds at "
                         f"least one position), got {n_devices!r}")
    bounds = chunk_bounds(T, n_devices)
    scale = 1.0 / math.sqrt(q.size(-1))
    queries = [q[..., a:b, :] for a, b in bounds]                  # stays on its device
    kv = [(k[..., a:b, :], v[..., a:b, :], i) for i, (a, b) in enumerate(bounds)]  # travels
    state = [(qc.new_full((*qc.shape[:-1], 1), -math.inf), qc.new_zeros(*qc.shape[:-1], 1),
              qc.new_zeros(*qc.shape[:-1], v.size(-1))) for qc in queries]
    for step in range(n_devices):
        for device, (k_chunk, v_chunk, chunk) in enumerate(kv):
            (q0, q1), (k0, k1) = bounds[device], bounds[chunk]
            attended = not (causal and k0 >= q1)           # a chunk wholly in the future: skip
            if trace is not None:
                trace.append(RingStep(step, device, chunk, attended))
            if attended:
                mask = key_mask(q0, q1, k0, k1, 0, causal, None, q.device)
                part = attend_block(queries[device], k_chunk, v_chunk, scale, mask)
                state[device] = online_softmax_merge(*state[device], *part)
        if step < n_devices - 1:
            kv = kv[-1:] + kv[:-1]                  # pass along the ring: r receives from r - 1
    return torch.cat([o / l_sum for _, l_sum, o in state], dim=-2)


def format_ring_trace(trace: list[RingStep]) -> str:
    """The trace as a table: one row per step, one column per device, 'K/V c' in each cell
    (with '(skip)' where a causal mask hid the whole chunk).

    >>> trace = []
    >>> _ = ring_attention(*torch.randn(3, 1, 1, 4, 2).unbind(0), n_devices=2, trace=trace)
    >>> print(format_ring_trace(trace))
    step | device 0 | device 1
       0 | K/V 0    | K/V 1
       1 | K/V 1    | K/V 0
    """
    n_devices = 1 + max(entry.device for entry in trace)
    cells = {(e.step, e.device): f"K/V {e.chunk}" + ("" if e.attended else " (skip)")
             for e in trace}
    width = max(len("device 00"), *(len(c) for c in cells.values()))
    lines = ["step | " + " | ".join(f"device {d}".ljust(width) for d in range(n_devices))]
    for step in sorted({e.step for e in trace}):
        lines.append(f"{step:>4} | " + " | ".join(cells[step, d].ljust(width)
                                                 for d in range(n_devices)))
    return "\n".join(line.rstrip() for line in lines)


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                             block_size: int = 128, causal: bool = True) -> torch.Tensor:
    """Attention where each query sees only keys less than `window` positions back (and, with
    `causal=False`, less than `window` ahead): equal to attention masked with
    `sliding_window_mask(T, window, S, causal)`, in O(T·window) time and memory.

    Each block of queries needs only the band of keys its window reaches, so one tile is
    [block_size, block_size + window - 1] (twice the window wide when not causal).

    >>> q, k, v = torch.randn(3, 1, 2, 50, 8).unbind(0)
    >>> from utils.attention import scaled_dot_product_attention
    >>> band = sliding_window_mask(50, 6)
    >>> torch.allclose(sliding_window_attention(q, k, v, 6, block_size=16),
    ...                scaled_dot_product_attention(q, k, v, band)[0], atol=1e-6)
    True
    """
    check_qkv(q, k, v, causal)
    block = check_block_size(block_size)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer (a query always sees itself), "
                         f"got {window!r}")
    T, S = q.size(-2), k.size(-2)
    scale, offset = 1.0 / math.sqrt(q.size(-1)), S - T
    out = q.new_empty(*q.shape[:-1], v.size(-1))
    for q0 in range(0, T, block):
        q1 = min(q0 + block, T)
        k0 = max(0, q0 + offset - window + 1)                         # the band's first key
        k1 = min(S, q1 + offset) if causal else min(S, q1 + offset + window - 1)
        mask = key_mask(q0, q1, k0, k1, offset, causal, window, q.device)
        _, l_sum, o = attend_block(q[..., q0:q1, :], k[..., k0:k1, :], v[..., k0:k1, :], scale, mask)
        out[..., q0:q1, :] = o / l_sum.clamp_min(torch.finfo(l_sum.dtype).tiny)
    return out
