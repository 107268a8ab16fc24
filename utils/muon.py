"""Muon: momentum, then the update orthogonalised, for the weight matrices of the blocks;
AdamW for everything else (chapter 07).

    newton_schulz(G, steps, ...)    G's singular values pushed into a band around 1, by matmuls
    adjusted_lr(lr, shape, rule)    the shape-dependent scale of a Muon step
    Muon                            the update rule as a torch.optim.Optimizer (2-D only)
    muon_param_groups(model)        a GPT's parameters: block matrices for Muon, the rest
    MuonWithAdamW                   Muon and AdamW stepped, zeroed and saved as one optimizer
    configure_muon(model, lr, ...)  the pair, built for a GPT the way the trainer needs it

Why orthogonalise. The gradient of a weight matrix is usually dominated by a few directions
(its top singular vectors): a plain or Adam step moves the weights a lot along those and
hardly at all along the rest. Write the momentum as U S Vᵀ (its SVD) and step along U Vᵀ
instead: the same directions, every one of them given the same size. Rare directions get a
real step, and no single direction can blow up, so a larger learning rate is safe.

Same arguments and, step for step, the same numbers as `torch.optim.Muon` (torch 2.13.0);
tests/test_muon.py checks this.

>>> G = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
>>> s = torch.linalg.svdvals(newton_schulz(G, steps=5, dtype=torch.float32))
>>> bool(s.min() > 0.6 and s.max() < 1.25)    # every singular value near 1, none exactly
True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from utils.optim import param_groups

# The quintic's coefficients and the defaults of torch.optim.Muon (from Keller Jordan's Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def newton_schulz(G: torch.Tensor, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = EPS, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximation of U Vᵀ, where G = U S Vᵀ, from matrix products only (no SVD).

    One step maps X to a X + b (X Xᵀ) X + c (X Xᵀ)² X = U p(S) Vᵀ with p(s) = a s + b s³ + c s⁵:
    every singular value goes through the same polynomial, and U, V stay as they are. So
    iterating p on numbers in [0, 1] is all there is to it:

    * The coefficients are chosen for speed, not exactness. a = 3.4445 is p's slope at 0, so a
      small singular value grows about 3.4 times per step: 5 steps lift any value above
      1/300 of the norm G is divided by (below) into the band; weaker directions of a nearly
      low-rank gradient stay small. The price: p(1) = a + b + c = 0.701, so 1 is not a fixed
      point and the values do not converge; they keep bouncing inside about [0.68, 1.2]. Not
      U Vᵀ but U S' Vᵀ with S' near 1, which Keller Jordan found trains as well; the classic
      cubic (1.5, -0.5, 0) converges to 1, but lifts small values only 1.5 times a step.
    * p only keeps values in the band if they start in [0, 1]: dividing by the Frobenius
      norm (the root of the sum of every s², so at least the largest s) guarantees that
      without knowing the largest singular value. eps keeps a zero matrix from dividing by 0.
    * A tall matrix (rows > cols) is transposed first and back at the end. The result is the
      same in exact arithmetic (it is U p(S) Vᵀ either way), but X Xᵀ is then cols x cols,
      the smaller of the two Gram matrices: a 4C x C feed-forward matrix costs C x C
      products, not 4C x 4C.
    * In bfloat16 by default, as torch does: on a GPU its matmuls run on tensor cores, and
      the iteration forgives rounding (each step pulls values back into the band; a value off
      by 1% lands as well as the exact one). The result stays in `dtype`.
    """
    if G.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.to(dtype)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    # Out of place: when G already has `dtype`, X is G itself, which must not change.
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T                                      # the Gram matrix, rows x rows
        B = torch.addmm(A, A, A, beta=b, alpha=c)        # b A + c A², rounded once
        X = torch.addmm(X, B, X, beta=a)                 # a X + B X
    return X.T if tall else X


def adjusted_lr(lr: float, shape: torch.Size | tuple[int, ...], adjust_lr_fn: str | None) -> float:
    """The learning rate a Muon step of a [rows, cols] matrix actually uses.

    An orthogonalised update has min(rows, cols) singular values near 1 spread over
    rows * cols entries, so the size of one entry (its root mean square, RMS) is about
    1 / sqrt(max(rows, cols)): a bigger matrix would get smaller steps. Two fixes:

    "original" (also None; Keller Jordan's): lr * sqrt(max(1, rows / cols)). A tall matrix
        gets a larger step, so every shape ends at an RMS of lr / sqrt(cols): the learning
        rate is per input dimension, and tuned separately from AdamW's (0.02 is typical).
    "match_rms_adamw" (Moonshot's "Muon is Scalable"): lr * 0.2 * sqrt(max(rows, cols)), an
        RMS of about 0.2 * lr for every shape, which is the RMS of a typical AdamW step. Muon
        can then reuse AdamW's learning rate and weight decay, and one schedule drives both.
    """
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")


class Muon(torch.optim.Optimizer):
    """Muon from its update rule, for 2-D parameters. For each matrix W with gradient g:

        m  <- momentum * m + (1 - momentum) * g             (a running mean, like Adam's m)
        u  <- (1 - momentum) * g + momentum * m  if nesterov, else m
        W  <- W * (1 - lr * weight_decay)                   (decoupled, with the plain lr)
        W  <- W - adjusted_lr(lr, W.shape) * newton_schulz(u)

    The scale of m hardly matters (newton_schulz divides it out); only its direction does.
    Same arguments, defaults and numbers as `torch.optim.Muon`, whose state ("momentum_buffer")
    it also shares, so either can load the other's state_dict. One argument more: ns_dtype,
    the dtype of the Newton-Schulz products. torch's bfloat16 is right on a GPU; on a CPU
    without bfloat16 arithmetic it is emulated and about 20 times slower than "float32" (a
    256 x 64 matrix: 12.6 ms against 0.56 ms per step on one core of this course's CPU).
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = EPS, ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 ns_dtype: str = "bfloat16"):
        if not (lr >= 0 and weight_decay >= 0 and momentum >= 0):
            raise ValueError(f"invalid Muon settings: lr={lr}, weight_decay={weight_decay}, "
                             f"momentum={momentum} (each must be >= 0)")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")
        if ns_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"ns_dtype must be 'bfloat16' or 'float32', got {ns_dtype!r}")
        if len(ns_coefficients) != 3 or not 0 <= ns_steps < 100:
            raise ValueError(f"need 3 ns_coefficients and 0 <= ns_steps < 100, got "
                             f"{ns_coefficients}, {ns_steps}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                                      ns_dtype=ns_dtype))

    def add_param_group(self, param_group: dict) -> None:
        """Refuse anything that is not a matrix, here rather than at the first step."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in params:
            if p.ndim != 2:
                raise ValueError(
                    f"Muon updates 2-D weight matrices only, got a parameter of shape "
                    f"{tuple(p.shape)}. Give biases, norm gains and embeddings to AdamW: "
                    f"configure_muon(model, lr) splits a GPT's parameters that way.")
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:   # first update of this matrix
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                m = state["momentum_buffer"]
                m.lerp_(p.grad, 1 - mu)          # mu * m + (1 - mu) * g, in place
                u = p.grad.lerp(m, mu) if group["nesterov"] else m
                # (a state saved by torch.optim.Muon has no ns_dtype: torch's bfloat16)
                dtype = getattr(torch, group.get("ns_dtype", "bfloat16"))
                update = newton_schulz(u, group["ns_steps"], group["ns_coefficients"],
                                       group["eps"], dtype=dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"]))
        return loss


def muon_param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(for Muon, for AdamW): the 2-D matrices inside `model.blocks`, and everything else.

    Muon is for the hidden layers, the matrices that map one vector of activations to
    another (attention's qkv and proj, the feed-forward's up/gate/down, an MoE router).
    The rest stays with AdamW: an embedding is a lookup table, whose rows are different
    tokens, not directions of one map; the output layer (lm_head, tied to the token
    embedding by default, and listed once) gets the same treatment in the Muon recipes; biases
    and norm gains are vectors. Trainable parameters only, each in exactly one list.
    """
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        raise ValueError(f"Muon needs to know which matrices are hidden layers: it takes the "
                         f"2-D weights under `model.blocks`, and {type(model).__name__} has no "
                         f"`.blocks`; use optimizer='adamw', or build the groups yourself")
    blocks = {id(p) for p in model.blocks.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]   # a tied matrix once
    matrices = [p for p in trainable if id(p) in blocks and p.ndim == 2]
    chosen = {id(p) for p in matrices}
    return matrices, [p for p in trainable if id(p) not in chosen]


class MuonWithAdamW:
    """Two optimizers that a training loop treats as one: step(), zero_grad(), param_groups,
    state_dict() and load_state_dict() go to both.

    A pair rather than one optimizer with two update rules inside: each half is an optimizer
    already checked against torch's (and AdamW keeps its fused CUDA kernel), and this class
    only forwards calls. `param_groups` lists Muon's groups, then AdamW's (the dicts
    themselves), so a loop that sets group["lr"] sets it for both, which is what
    adjust_lr_fn="match_rms_adamw" makes right. torch's GradScaler reads param_groups and
    calls step(), so it handles the pair too.
    """

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None):
        loss = None
        if closure is not None:   # evaluated once, not once per half
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError(f"not a Muon + AdamW state (keys {sorted(state)}): was this "
                             f"checkpoint written with another optimizer?")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])

    def __repr__(self) -> str:
        return f"MuonWithAdamW(\n{self.muon!r},\n{self.adamw!r})"


def configure_muon(model: nn.Module, lr: float, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                   momentum: float = 0.95, nesterov: bool = True,
                   adjust_lr_fn: str | None = "match_rms_adamw",
                   device_type: str = "cpu") -> MuonWithAdamW:
    """Muon for the blocks' matrices, AdamW (as `utils.optim.configure_adamw` sets it up)
    for the rest, both at the same `lr` and `weight_decay`.

    One learning rate for both works because of adjust_lr_fn="match_rms_adamw" (the default
    here, not torch's): a Muon step then has about AdamW's size, 0.2 * lr per entry, so the
    AdamW recipe's lr, weight decay and schedule carry over. With "original", lr is Muon's
    own (about 0.02) and far too large for AdamW: build the two yourself then. The
    Newton-Schulz products run in bfloat16 on CUDA and in float32 elsewhere (see Muon).
    """
    matrices, others = muon_param_groups(model)
    muon = Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                nesterov=nesterov, adjust_lr_fn=adjust_lr_fn,
                ns_dtype="bfloat16" if device_type == "cuda" else "float32")
    # utils.optim's rule for the rest: decay on embeddings (dim >= 2), none on vectors
    rest = {id(p) for p in others}
    groups = [{**g, "params": [p for p in g["params"] if id(p) in rest]}
              for g in param_groups(model, weight_decay)]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps,
                              fused=device_type == "cuda")
    return MuonWithAdamW(muon, adamw)
