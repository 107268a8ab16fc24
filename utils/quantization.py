"""Smaller weights: int8 and 4-bit (NF4) quantisation (chapters 09 and 10).

A trained weight matrix is stored in float32: 4 bytes a number. Quantisation stores each
number in fewer bits plus a few float "scales" that map the small integers back:

    int8, per output channel (chapter 09)     w ~ q * scale        q in -127..127, one scale a row
    NF4, per block of 64 (chapter 10, QLoRA)  w ~ level[c] * absmax   c in 0..15, one absmax a block

Both are *weight-only*: activations stay in floating point, and every forward turns the
small integers back into floats before (or right after) the matrix multiply. That saves memory
and memory bandwidth; whether it saves time depends on a kernel that does the conversion where
the data already is (see `Int8Linear.forward`). In PyTorch eager on a CPU it usually does not.

What stays in float32 here: embeddings, norms, biases, and any Linear whose weight is shared
with another module (GPT's `lm_head` is tied to the token embedding). Quantising a tied
Linear would cut the tie and store the matrix twice (fp32 for the lookup, int8 for the
output), which is more memory, not less; `model_size_bytes` counts the shared matrix once.

    >>> small = quantize_model_int8(nn.Sequential(nn.Linear(256, 256), nn.ReLU()))
    >>> model_size_bytes(nn.Linear(256, 256)), model_size_bytes(small)
    (263168, 67584)
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INT8_MAX = 127   # symmetric: -127..127, so +x and -x round to +q and -q (-128 is never used)


# ------------------------------------------------------------------------------------ int8

def _check_matrix(weight: torch.Tensor, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 2-D tensor [out_features, in_features], got {shape}")
    if not weight.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} holds inf or nan; a scale cannot represent them")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one scale per output channel (row).

    Returns (q int8 [out, in], scale float32 [out, 1]) with scale = max|row| / 127, so the
    largest number of each row maps to +-127 and rounding costs at most scale / 2 per entry.
    One scale a *row* rather than one for the whole matrix: a single row with large weights
    would otherwise stretch the grid of every other row. An all-zero row gets scale 1 (any
    value works, its q is 0), so nothing divides by zero.

    >>> q, scale = quantize_int8(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    >>> q
    tensor([[  64, -127,   32],
            [   0,    0,    0]], dtype=torch.int8)
    >>> scale.flatten()
    tensor([0.0079, 1.0000])
    """
    _check_matrix(weight)
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1, keepdim=True)                          # [out, 1]
    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    q = torch.round(w / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight that `quantize_int8` approximated: q * scale, row by row."""
    if q.dtype != torch.int8:
        raise ValueError(f"q must be an int8 tensor, got {q.dtype}")
    if scale.shape != (q.shape[0], 1):
        raise ValueError(f"scale must have shape [{q.shape[0]}, 1] (one per row of q), "
                         f"got {tuple(scale.shape)}")
    return q.float() * scale


class Int8Linear(nn.Module):
    """A Linear layer whose weight is stored as int8 with a float32 scale per output row.

    Build it from a trained layer with `Int8Linear.from_linear(linear)`. It holds buffers
    (`weight_q`, `scale`, and `bias` if the layer had one), not parameters: it is for
    inference, not training.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, 1))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scale = quantize_int8(linear.weight)
        device = linear.weight.device
        layer.weight_q, layer.scale = q.to(device), scale.to(device)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised float32 weight (a fresh tensor each time, for code that reads
        `.weight`; the module itself only stores the int8 copy)."""
        return dequantize_int8(self.weight_q, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Where the time goes: matrix products run in floating point, so at every call the
        # int8 weight is first converted to x's dtype (a pass over all out * in weights that
        # writes a temporary float copy) and then the same float matmul as nn.Linear runs.
        # The per-row scale can be applied to the weight (out * in multiplies) or to the
        # output (rows * out multiplies, rows = tokens in x); we take whichever is fewer:
        # the output for a few tokens (decoding), the weight for a big batch.
        # Either way this is a little SLOWER than float32 in eager PyTorch. It wins where
        # the weight must be read from slow memory (a big model, one token at a time, a GPU
        # kernel that converts inside the matmul): 1 byte a weight crosses the bus, not 4.
        bias = None if self.bias is None else self.bias.to(x.dtype)
        rows = x.numel() // self.in_features
        if rows > self.in_features:                     # the bias add fuses into the matmul
            return F.linear(x, self.weight_q.to(x.dtype) * self.scale.to(x.dtype), bias)
        y = F.linear(x, self.weight_q.to(x.dtype))
        scale = self.scale.view(-1).to(x.dtype)
        return y * scale if bias is None else torch.addcmul(bias, y, scale)  # bias + y * scale

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int8 per-row")


# ------------------------------------------------------------------------- whole models

def _tied_linears(model: nn.Module) -> set[str]:
    """Names of Linear layers whose weight is also used by another module (weight tying)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module_name)
    return {name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and len(owners.get(id(module.weight), [])) > 1}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """True when the dotted module name is one of `patterns` or ends with '.<pattern>'."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def _replace_linears(model: nn.Module, make, select) -> nn.Module:
    """A deep copy of `model` in which each Linear `select(name)` accepts becomes `make(linear)`.
    Tied Linears are left alone (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)           # the caller's model stays as it was
    tied = _tied_linears(model)
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name not in tied and select(name)]
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(linear))
    return model


def quantize_model_int8(model: nn.Module, skip: Iterable[str] = ()) -> nn.Module:
    """A copy of `model` with every nn.Linear replaced by an `Int8Linear`.

    `skip`: names of Linear layers to keep in float32, matched on the end of their dotted
    name (("lm_head",) or ("blocks.0.attn.qkv",)). Tied Linears (GPT's lm_head shares the
    token embedding) always stay float32 and tied; embeddings and norms are not Linear and
    stay float32 too. The original model is not changed.
    """
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    return _replace_linears(model, Int8Linear.from_linear, lambda name: not _matches(name, skip))


def model_size_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers; a tensor shared by two modules (tied
    weights) counts once.

    >>> model_size_bytes(nn.Linear(10, 10))        # 110 float32 numbers
    440
    """
    seen: set[tuple[int, tuple[int, ...], torch.dtype]] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


# ------------------------------------------------------------------------------------- NF4

def _normal_float_levels() -> torch.Tensor:
    """The 16 levels of 4-bit NormalFloat (NF4, from the QLoRA paper), computed.

    Trained weights are roughly normally distributed, so instead of 16 evenly spaced levels
    NF4 puts them at quantiles of the standard normal: each level then covers about the same
    share of the weights. The construction:

    * the outermost quantiles of a normal are +-infinity, so the probabilities used stop at
      `p_max`, the average of 1 - 1/32 and 1 - 1/30 (half a step in from the edge of a grid
      of 16, resp. 15, equal-probability bins);
    * 8 positive levels: quantiles at 8 probabilities evenly spaced from 1/2 (excluded) to
      p_max; 7 negative levels: the mirror of 7 probabilities spaced the same way; and an
      exact 0, so zero weights (and padding) are stored without error. 8 + 7 + 1 = 16 codes;
    * divide by the largest level so the levels span exactly [-1, 1].
    """
    normal = statistics.NormalDist()
    p_max = ((1 - 1 / 32) + (1 - 1 / 30)) / 2

    def quantiles(n: int) -> list[float]:
        step = (p_max - 0.5) / n
        return [normal.inv_cdf(0.5 + step * i) for i in range(1, n + 1)]

    levels = sorted([-q for q in quantiles(7)] + [0.0] + quantiles(8))
    top = max(abs(v) for v in levels)
    return torch.tensor([v / top for v in levels], dtype=torch.float32)


NF4_LEVELS = _normal_float_levels()      # 16 sorted values, -1.0 ... 0.0 ... 1.0


def nf4_max_error_fraction() -> float:
    """Half the widest gap between neighbouring NF4 levels: the worst rounding error, as a
    fraction of a block's absmax."""
    return float((NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2)


@dataclass
class NF4Weight:
    """A tensor in 4-bit NormalFloat.

    codes      uint8 [ceil(numel / 2)]: two 4-bit level indices a byte (first in the high half)
    absmax     float32 [n_blocks]: the largest |w| of each block of `block_size` numbers
    shape      the original shape
    block_size numbers per block (the flattened tensor, padded with zeros to whole blocks)
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: tuple[int, ...]
    block_size: int

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.absmax.numel() * 4


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2 \
            or block_size % 2:
        raise ValueError(f"block_size must be an even int >= 2 (two codes share a byte), "
                         f"got {block_size!r}")


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> NF4Weight:
    """Blockwise NF4: cut the flattened tensor into blocks of `block_size`, divide each block
    by its largest |w| (so it lies in [-1, 1]), and store the index of the nearest NF4 level.

    >>> nf4 = quantize_nf4(torch.randn(128, 64))
    >>> nf4.codes.shape, nf4.absmax.shape, nf4.nbytes / (128 * 64 * 4)   # ~1/7.1 of float32
    (torch.Size([4096]), torch.Size([128]), 0.140625)
    """
    _check_block_size(block_size)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise ValueError("weight must be a floating-point tensor")
    if weight.numel() == 0:
        raise ValueError("weight is empty; there is nothing to quantise")
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds inf or nan; a block's absmax cannot represent them")
    flat = weight.detach().float().flatten()
    pad = -flat.numel() % block_size
    blocks = F.pad(flat, (0, pad)).view(-1, block_size)                # [n_blocks, block_size]
    absmax = blocks.abs().amax(dim=1)                                   # [n_blocks]
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))     # all-zero block: no /0
    normalized = blocks / safe[:, None]                                 # in [-1, 1]
    levels = NF4_LEVELS.to(weight.device)
    # nearest level: count how many midpoints between neighbouring levels lie below the value
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize(normalized.flatten(), midpoints).to(torch.uint8)
    packed = (codes[0::2] << 4) | codes[1::2]
    return NF4Weight(packed, absmax, tuple(weight.shape), block_size)


def dequantize_nf4(nf4_weight: NF4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor `quantize_nf4` approximated: level[code] * absmax of its block."""
    codes = torch.stack([nf4_weight.codes >> 4, nf4_weight.codes & 0x0F], dim=1).flatten()
    levels = NF4_LEVELS.to(codes.device)[codes.long()].view(-1, nf4_weight.block_size)
    w = levels * nf4_weight.absmax[:, None]
    numel = 1
    for size in nf4_weight.shape:
        numel *= size
    return w.flatten()[:numel].view(nf4_weight.shape).to(dtype)


class NF4Linear(nn.Module):
    """A frozen Linear layer stored in 4-bit NF4: the base layer of QLoRA (chapter 10).

    Nothing here trains: the codes, the block scales and the bias are buffers. The forward is
    `F.linear(x, dequantized_weight(), bias)`: the whole weight is rebuilt in float for every
    call, which costs time but means only 4.5 bits a weight sit in memory between calls.
    """

    def __init__(self, in_features: int, out_features: int, nf4_weight: NF4Weight,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if nf4_weight.shape != (out_features, in_features):
            raise ValueError(f"nf4_weight has shape {nf4_weight.shape}, expected "
                             f"{(out_features, in_features)}")
        self.in_features, self.out_features = in_features, out_features
        self.block_size = nf4_weight.block_size
        self.register_buffer("codes", nf4_weight.codes)
        self.register_buffer("absmax", nf4_weight.absmax)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64) -> NF4Linear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.in_features, linear.out_features,
                   quantize_nf4(linear.weight, block_size), linear.bias)

    def nf4_weight(self) -> NF4Weight:
        return NF4Weight(self.codes, self.absmax, (self.out_features, self.in_features),
                         self.block_size)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight [out_features, in_features] the codes stand for."""
        return dequantize_nf4(self.nf4_weight())

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=nf4 block_size={self.block_size}")


def quantize_model_nf4(model: nn.Module, targets: Iterable[str] | None = None,
                       block_size: int = 64) -> nn.Module:
    """A copy of `model` with Linear layers replaced by frozen `NF4Linear`s.

    `targets`: which Linears, by the end of their dotted name (("qkv", "proj", "up", "down")
    quantises attention and feed-forward; None = every Linear). Tied Linears (GPT's lm_head)
    stay float32 and tied, as in `quantize_model_int8`. Only the replaced layers are frozen;
    embeddings and norms keep requires_grad as they were (freeze them yourself for QLoRA).
    """
    _check_block_size(block_size)
    if isinstance(targets, str):
        targets = (targets,)
    targets = None if targets is None else tuple(targets)
    return _replace_linears(model, lambda linear: NF4Linear.from_linear(linear, block_size),
                            lambda name: targets is None or _matches(name, targets))
