"""How the weights move: AdamW written from its update rule, and the learning-rate schedule
(chapter 07).

    adamw_step(p, g, m, v, step, ...)   one AdamW update of one tensor, as plain arithmetic
    AdamW                               the same rule as a torch.optim.Optimizer
    lr_at(step, ...)                    linear warm-up, then cosine decay to a floor
    configure_adamw(model, ...)         torch.optim.AdamW with decay on matrices only

The trainer uses PyTorch's own `torch.optim.AdamW` (fused into one kernel on CUDA);
chapter 07 checks that our `AdamW` takes exactly the same steps, so the reader knows what
the fast one computes.

>>> p, m, v = adamw_step(torch.tensor([1.0]), torch.tensor([0.5]), torch.zeros(1),
...                      torch.zeros(1), step=1, lr=0.1, weight_decay=0.0)
>>> round(p.item(), 4)   # the first step moves every weight by about lr, whatever the gradient
0.9
"""

from __future__ import annotations

import math

import torch
from torch import nn


def adamw_step(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
               step: int, lr: float, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 0.01,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW update; returns new (param, m, v) and leaves the inputs untouched.

    `step` counts from 1 (the first update has step=1), which is what the bias correction
    needs: after t updates, m is a weighted sum of t gradients whose weights add up to
    1 - beta1**t, not 1, so dividing by that undoes the pull towards m's starting zero.
    """
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad            # running mean of the gradient
    v = beta2 * v + (1 - beta2) * grad * grad     # running mean of its square
    m_hat = m / (1 - beta1 ** step)               # bias correction
    v_hat = v / (1 - beta2 ** step)
    # Decoupled weight decay: shrink the weight directly, not through the gradient. (Adding
    # wd * param to the gradient, "L2", would be divided by sqrt(v) like everything else, so
    # weights with large gradients would hardly be decayed at all.)
    param = param * (1 - lr * weight_decay)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param, m, v


class AdamW(torch.optim.Optimizer):
    """AdamW from its update rule: `adamw_step` applied to every parameter, in place.

    Same arguments and, step for step, the same numbers as `torch.optim.AdamW`
    (chapter 07 and tests/test_train_optim.py check this).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW settings: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # first update of this parameter
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                new_p, state["exp_avg"], state["exp_avg_sq"] = adamw_step(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                    group["lr"], group["betas"], group["eps"], group["weight_decay"])
                p.copy_(new_p)
        return loss


def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int,
          min_lr: float = 0.0) -> float:
    """The learning rate for update number `step` (counting from 0).

    Warm-up: rises linearly so that update 0 uses max_lr / warmup_steps and update
    warmup_steps - 1 uses the full max_lr (Adam's first steps are large and noisy while its
    averages fill up; small steps then keep them from knocking a fresh model off course).
    Then a cosine from max_lr at step warmup_steps down to min_lr at step total_steps,
    and min_lr after that.

    >>> [round(lr_at(s, 1.0, 4, 12), 3) for s in (0, 3, 4, 8, 12, 99)]
    [0.25, 1.0, 1.0, 0.5, 0.0, 0.0]
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)   # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay on matrices and embeddings (dim >= 2), none on biases and
    normalisation gains, which are few and which decay would only pull towards zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def configure_adamw(model: nn.Module, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    device_type: str = "cpu") -> torch.optim.AdamW:
    """PyTorch's AdamW over `param_groups(model)`; on CUDA the fused kernel updates every
    tensor in one launch instead of a dozen small ones per tensor."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             fused=device_type == "cuda")
