"""How the weights move: AdamW written from its update rule, and the learning-rate schedule
(chapter 07).

    adamw_step(p, g, m, v, step, ...)   one AdamW update of one tensor, as plain arithmetic
    AdamW                               the same rule as a torch.optim.Optimizer
    lr_at(step, ...)                    linear warm-up, then cosine decay to a floor
    clip_grad_norm(params, max_norm)    scale all gradients so their global L2 norm <= max_norm
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
import sys
from collections.abc import Iterable

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
    This is `max_lr * (step + 1) / warmup_steps`, deliberately: the common
    `max_lr * step / warmup_steps` (nanoGPT's first version, transformers'
    get_cosine_schedule_with_warmup) gives update 0 a learning rate of exactly 0, a step
    that computes a whole forward and backward pass and changes nothing, and reaches max_lr
    only at update warmup_steps. Here every update moves the weights.
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


def lr_wsd_at(step: int, max_lr: float, warmup_steps: int, total_steps: int,
              min_lr: float = 0.0, warmdown_frac: float = 0.2) -> float:
    """Warm-up, stable, decay: linear warm-up, max_lr held, then a straight line down to
    min_lr over the last `warmdown_frac` of `total_steps` (the "warm-down" of the speedruns).

    Holding the peak keeps the steps large for most of the run; the loss then drops fast
    during the warm-down, as the shrinking steps let the weights settle. Unlike the cosine,
    the stable part does not depend on total_steps, so a run can be extended before its
    warm-down starts.

    >>> [round(lr_wsd_at(s, 1.0, 2, 10, warmdown_frac=0.5), 2) for s in (0, 1, 4, 5, 7, 10)]
    [0.5, 1.0, 1.0, 1.0, 0.6, 0.0]
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    decay_start = max(warmup_steps, total_steps - round(warmdown_frac * total_steps))
    if step < decay_start:
        return max_lr
    progress = (step - decay_start) / max(1, total_steps - decay_start)    # 0 -> 1
    return max_lr + progress * (min_lr - max_lr)


def clip_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor,
                   max_norm: float) -> torch.Tensor:
    """Scale all gradients together so that their global L2 norm is at most `max_norm`;
    return the norm they had before (a float32 scalar tensor).

    The global norm treats every gradient of the model as one long vector: the square root of
    the sum of every squared entry of every tensor. Multiplying all of them by
    max_norm / norm when the norm is larger keeps the direction of the step and bounds its
    length, so one bad batch cannot throw the weights far away. Same numbers as
    `torch.nn.utils.clip_grad_norm_`, its 1e-6 included (it keeps a zero norm from dividing
    by zero); parameters without a gradient are skipped.

    A non-finite norm (an inf or nan in some gradient) is returned as it is and the gradients
    are left untouched. Scaling by max_norm / inf = 0 would turn each inf into a nan (0 * inf)
    and every finite entry into 0, hiding where it came from; torch's version does that.
    Under float16 loss scaling an inf is expected now and then (the GradScaler skips that
    step and lowers its scale); without it the caller should stop: the trainer raises.

    Under FSDP each rank holds one piece of each gradient (a DTensor): the squares of the
    pieces add up over the ranks, so one all-reduce of this rank's sum gives the total.

    >>> w = torch.zeros(2, requires_grad=True); w.grad = torch.tensor([3.0, 4.0])
    >>> clip_grad_norm([w], max_norm=1.0).item(), [round(g, 4) for g in w.grad.tolist()]
    (5.0, [0.6, 0.8])
    """
    if not max_norm > 0:   # a negative max_norm would flip the gradients; nan is no bound
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    squares = [g.detach().float().pow(2).sum() for g in grads]
    sharded = [s for s in squares if _is_dtensor(s)]
    total = torch.zeros((), device=device)
    for s in squares:
        if not _is_dtensor(s):
            total += s.to(device)
    if sharded:   # this rank's pieces, added as DTensors: full_tensor() sums over the ranks
        total += sum(sharded[1:], start=sharded[0]).full_tensor().to(device)
    norm = total.sqrt()
    # where() rather than `if`: no wait for the GPU to say whether the norm is finite
    scale = torch.where(norm.isfinite(), (max_norm / (norm + 1e-6)).clamp(max=1.0), 1.0)
    for g in grads:
        g.mul_(scale.to(g.device, g.dtype))
    return norm


def _is_dtensor(t: torch.Tensor) -> bool:
    """Is `t` a DTensor (FSDP's sharded tensor)? One can exist only once its module has been
    imported, so this never imports it (that alone takes about a second)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


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
