"""The parts of a transformer block besides attention (chapter 05): norms and feed-forward.

Each block of `utils/model.py` wraps attention and a feed-forward network in a norm and a
residual connection. This module holds those two kinds of part, in the variants the course
compares:

* normalisation: LayerNorm (GPT-2: subtract the mean, divide by the standard deviation,
  scale and shift) and RMSNorm (Llama: divide by the root mean square, scale);
* feed-forward: a GELU network 4x wide (GPT-2's tanh approximation, or the exact erf form
  that PyTorch and BERT use), the speedruns' ReLU² network (also 4x wide) and Llama's gated
  SwiGLU network, about 8/3x wide.

`HeadRMSNorm` is RMSNorm without a gain, for QK-norm inside attention (`utils/attention.py`).

`layer_norm` and `rms_norm` are the formulas written out; `LayerNorm` and `RMSNorm` are the
modules the model uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- normalisation

def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm written out: standardise each vector over its features, then scale and shift.

    The variance is the plain mean of squared deviations (divide by d, not d - 1), and eps
    goes inside the square root. Same numbers as `torch.nn.functional.layer_norm`.

    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> layer_norm(x)
    tensor([[-1.2247,  0.0000,  1.2247]])
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None,
             eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm written out: divide each vector by its root mean square, then scale.

    No mean is subtracted and there is no bias: one reduction instead of two.

    >>> rms_norm(torch.tensor([[3.0, -3.0, 3.0, -3.0]]))
    tensor([[ 1.0000, -1.0000,  1.0000, -1.0000]])
    """
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own always has one when it has a weight).

    >>> ln = LayerNorm(4)
    >>> x = torch.randn(2, 3, 4)
    >>> torch.allclose(ln(x), nn.LayerNorm(4)(x), atol=1e-6)
    True
    """

    def __init__(self, d: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))                   # the gain, gamma
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None  # the shift, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the fused kernel computes exactly `layer_norm` above, both statistics in one pass over memory
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama). Computed in float32, returned in the input's dtype.

    >>> norm = RMSNorm(4)
    >>> norm(torch.full((1, 4), 5.0))
    tensor([[1.0000, 1.0000, 1.0000, 1.0000]], grad_fn=<MulBackward0>)
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In bf16 the mean of squares loses precision; do the statistics in float32.
        return self.weight * rms_norm(x.float(), eps=self.eps).to(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMS-normalise the last dimension, with no parameters: QK-norm's normaliser.

    Applied to each head's queries and keys ([B, heads, T, d_head]): every vector gets unit
    root mean square, so a query-key score is at most d_head / sqrt(d_head) = sqrt(d_head).
    No gain, as in the speedruns; the statistics in float32 as in `RMSNorm`.

    >>> HeadRMSNorm()(torch.tensor([[3.0, -3.0, 3.0, -3.0]]))
    tensor([[ 1.0000, -1.0000,  1.0000, -1.0000]])
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x.float(), eps=self.eps).to(x.dtype)


# ------------------------------------------------------------------------------ feed-forward

# mlp kind -> the `approximate` argument of F.gelu, for the two GELU networks. GPT-2 was
# trained with the tanh approximation, so its weights only reproduce its outputs with that;
# PyTorch's default (and BERT's, and many test suites') is the exact form x * Phi(x).
GELU_APPROXIMATION = {"gelu": "tanh", "gelu_exact": "none"}
MLPS = (*GELU_APPROXIMATION, "relu2", "swiglu")


def ffn_hidden_size(n_embd: int, mlp: str = "gelu") -> int:
    """The usual width of the feed-forward network's hidden layer.

    GELU and ReLU²: 4 * n_embd. SwiGLU has three matrices instead of two, so its width is 2/3 of that
    (rounded up to a multiple of 8), which keeps the parameter count about the same. Real
    Llamas round their own way (Llama-2-7B: 11008, not 10928); `GPTConfig.ffn_hidden` sets
    such a width explicitly.

    >>> ffn_hidden_size(768), ffn_hidden_size(768, "swiglu")
    (3072, 2048)
    """
    if mlp in GELU_APPROXIMATION or mlp == "relu2":
        return 4 * n_embd
    if mlp == "swiglu":
        return 8 * math.ceil(8 * n_embd / 3 / 8)
    raise ValueError(f"mlp must be one of {MLPS}, got {mlp!r}")


class FeedForward(nn.Module):
    """The position-wise feed-forward network: the same small MLP applied to every token.

    mlp="gelu"        down(gelu(up(x)))           (GPT-2: GELU's tanh approximation)
    mlp="gelu_exact"  down(gelu(up(x)))           (exact GELU, x * Phi(x) with the erf)
    mlp="relu2"       down(relu(up(x))²)          (the speedruns: sparse like ReLU, but
                                                   smooth at 0, and cheaper than GELU)
    mlp="swiglu"      down(silu(gate(x)) * up(x)) (Llama)

    `hidden` is the width of the middle layer (default: `ffn_hidden_size(n_embd, mlp)`).

    >>> ffn = FeedForward(16, mlp="swiglu")
    >>> ffn(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, n_embd: int, mlp: str = "gelu", hidden: int | None = None,
                 bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {mlp!r}")
        hidden = ffn_hidden_size(n_embd, mlp) if hidden is None else hidden
        self.mlp = mlp
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.gate = nn.Linear(n_embd, hidden, bias=bias) if mlp == "swiglu" else None
        self.down = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp == "relu2":
            h = F.relu(self.up(x)).square()                 # [B, T, hidden]
        elif self.gate is None:
            h = F.gelu(self.up(x), approximate=GELU_APPROXIMATION[self.mlp])   # [B, T, hidden]
        else:
            h = F.silu(self.gate(x)) * self.up(x)           # the gate decides what passes
        return self.dropout(self.down(h))                   # [B, T, n_embd]
