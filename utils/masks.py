"""Attention masks: who may look at whom (chapter 06).

One convention everywhere, the same as `utils.attention` and PyTorch's
`scaled_dot_product_attention`: a mask is a **boolean** tensor whose last two dimensions are
(queries, keys), and **True means "may attend"**. Scores where the mask is False are set to
-inf before the softmax, so they get exactly zero weight.

Shapes broadcast against the scores [B, T, S] of one head:

* `causal_mask(T)` and `sliding_window_mask(T, w)` are [T, S]: the same for every sequence;
* `padding_mask(lengths, S)` is [B, 1, S]: one row of "real key or padding" per sequence,
  shared by all its queries;
* `combine_masks(...)` ANDs any of them: a key is visible only if every mask allows it.

Multi-head scores are [B, h, T, S]; `for_heads(mask)` inserts the head axis ([B, T, S] ->
[B, 1, T, S]) so a per-sequence mask is not mistaken for a per-head one.

A query whose every key is masked (a padding query under left padding and a causal mask, say)
would compute softmax(-inf, ..., -inf) = 0/0 = NaN; `masked_softmax` gives it all-zero
weights instead, as `utils.attention.scaled_dot_product_attention` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from utils.attention import causal_mask  # chapter 03 built it; re-exported as a mask builder

__all__ = ["causal_mask", "padding_mask", "sliding_window_mask", "combine_masks", "for_heads",
           "additive_mask", "apply_mask", "masked_softmax", "pad_sequences"]


def padding_mask(lengths: Sequence[int] | torch.Tensor, max_len: int | None = None,
                 side: str = "right", device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean [B, 1, max_len] mask: True where the *key* is a real token, False on padding.

    Sequence b has `lengths[b]` real tokens; with `side="right"` they come first and the
    padding after them, with `side="left"` the padding comes first. The mask hides padded
    keys from every query; it says nothing about padded queries (their outputs are simply
    ignored), which is why the query axis has size 1.

    >>> padding_mask([3, 1], 4).int()
    tensor([[[1, 1, 1, 0]],
    <BLANKLINE>
            [[1, 0, 0, 0]]], dtype=torch.int32)
    >>> padding_mask([3, 1], 4, side="left")[:, 0].int()
    tensor([[0, 1, 1, 1],
            [0, 0, 0, 1]], dtype=torch.int32)
    """
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.dim() != 1:
        raise ValueError(f"lengths should be a 1-D list of sequence lengths, got shape "
                         f"{tuple(lengths.shape)}")
    max_len = int(lengths.max()) if max_len is None and len(lengths) else (max_len or 0)
    if len(lengths) and (lengths.min() < 0 or lengths.max() > max_len):
        raise ValueError(f"lengths must lie between 0 and max_len={max_len}, got "
                         f"{lengths.tolist()}")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    positions = torch.arange(max_len, device=lengths.device)            # [S]
    if side == "right":
        real = positions[None, :] < lengths[:, None]                    # [B, S]
    else:
        real = positions[None, :] >= max_len - lengths[:, None]
    return real[:, None, :]                                             # [B, 1, S]


def sliding_window_mask(T: int, window: int, S: int | None = None, causal: bool = True,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean [T, S] mask: each query sees only the `window` most recent keys, itself included.

    Query t may attend keys t - window + 1 ... t. With `causal=False` it sees `window - 1`
    keys on each side instead (a local, bidirectional window). With S > T the queries are the
    last T of S positions, aligned bottom-right as in `causal_mask`. A window of at least S
    gives back the plain causal mask (chapter 09 uses this to bound the KV cache).

    >>> sliding_window_mask(4, 2).int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [0, 1, 1, 0],
            [0, 0, 1, 1]], dtype=torch.int32)
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 (a query always sees itself), got {window}")
    S = T if S is None else S
    query_pos = torch.arange(S - T, S, device=device)[:, None]         # [T, 1] absolute position
    key_pos = torch.arange(S, device=device)[None, :]                  # [1, S]
    distance = query_pos - key_pos                                     # > 0: key is in the past
    if causal:
        return (distance >= 0) & (distance < window)
    return distance.abs() < window


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """AND of boolean masks, broadcast together: a key is visible only if every mask allows it.

    `None` entries (no mask) are skipped; with no mask at all the result is None.

    >>> combine_masks(causal_mask(3), padding_mask([3, 2], 3)).int()[1]
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 0]], dtype=torch.int32)
    """
    result = None
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        if mask.dtype != torch.bool:
            raise TypeError(f"combine_masks: mask {i} has dtype {mask.dtype}; expected a boolean "
                            "mask (True = may attend). Convert 0/1 masks with `.bool()`")
        result = mask if result is None else result & mask
    return result


def for_heads(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Make a mask broadcast against multi-head scores [B, h, T, S].

    A [B, T, S] (or [B, 1, S]) mask gets a head axis: [B, 1, T, S]. Without it, broadcasting
    would line the batch axis up with the head axis. [T, S] masks already broadcast.

    >>> for_heads(padding_mask([2, 1], 3)).shape
    torch.Size([2, 1, 1, 3])
    """
    if mask is None or mask.dim() <= 2:
        return mask
    if mask.dim() == 3:
        return mask[:, None]
    return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same mask as numbers to add to the scores: 0 where allowed, -inf where not.

    >>> additive_mask(causal_mask(2))
    tensor([[0., -inf],
            [0., 0.]])
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)


def apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores with every disallowed entry replaced by -inf (a new tensor; `scores` is untouched).

    >>> apply_mask(torch.ones(2, 2), causal_mask(2))
    tensor([[1., -inf],
            [1., 1.]])
    """
    if mask is None:
        return scores.clone()
    if mask.dtype != torch.bool:
        raise TypeError(f"apply_mask: mask has dtype {mask.dtype}; expected a boolean mask "
                        "(True = may attend)")
    return scores.masked_fill(~mask, -math.inf)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None,
                   dim: int = -1) -> torch.Tensor:
    """softmax over keys of the masked scores; a row with no allowed key gets all zeros.

    The mask must go in *before* the softmax: zeroing weights afterwards would leave the
    remaining ones summing to less than 1.

    >>> w = masked_softmax(torch.zeros(2, 3), torch.tensor([[True, True, False], [False] * 3]))
    >>> w
    tensor([[0.5000, 0.5000, 0.0000],
            [0.0000, 0.0000, 0.0000]])
    """
    masked = apply_mask(scores, mask)
    has_key = (masked > -math.inf).any(dim=dim, keepdim=True)
    # softmax of an all -inf row is 0/0 = NaN; softmax a harmless row of zeros instead and
    # multiply the result by 0, so both the output and its gradient stay finite.
    return torch.softmax(masked.masked_fill(~has_key, 0.0), dim=dim) * has_key


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int = 0, side: str = "right",
                  max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists of unequal length into one [B, max_len] tensor.

    Returns (ids, lengths); pass `lengths` and the same `side` to `padding_mask`.

    >>> ids, lengths = pad_sequences([[5, 6, 7], [8]], pad_id=0, side="left")
    >>> ids
    tensor([[5, 6, 7],
            [0, 0, 8]])
    >>> lengths
    tensor([3, 1])
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    lengths = [len(s) for s in sequences]
    max_len = max(lengths, default=0) if max_len is None else max_len
    if any(n > max_len for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit max_len={max_len}")
    ids = torch.full((len(sequences), max_len), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            if side == "right":
                ids[row, :len(seq)] = torch.as_tensor(seq)
            else:
                ids[row, max_len - len(seq):] = torch.as_tensor(seq)
    return ids, torch.tensor(lengths, dtype=torch.long)
