"""Two checks to run before a long training run, to tell a broken run from a slow one
(chapter 07).

    overfit_one_batch(model, x, y, steps, lr)    train on ONE batch, over and over: a model
                                                 and optimizer that work drive its loss to
                                                 near zero; a bug shows as a loss that stalls
    lr_range_test(model, data, config, ...)      a short run whose learning rate grows
                                                 exponentially each step: the loss against
                                                 the lr says which learning rates learn at all
                                                 and where training blows up

Both train a model in place (pass a fresh copy) with AdamW as the trainer sets it up
(`utils.optim.configure_adamw`), on the trainer's batches (`utils.trainer.batch_for_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from utils.optim import configure_adamw
from utils.train_config import TrainConfig
from utils.trainer import batch_for_step


def overfit_one_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150,
                      lr: float = 3e-3, weight_decay: float = 0.0) -> list[float]:
    """The loss at each of `steps` AdamW steps on the same batch (x, y), before the step.

    A model with a few hundred thousand parameters can memorise a few thousand tokens, so
    the loss must fall towards 0. If it stops far above, the model cannot see what it needs
    (inputs cut off, a mask the wrong way round), gradients do not reach the weights
    (detached tensors, frozen parameters, an optimizer holding other tensors), or the
    learning rate is far off. No weight decay: it would pull against memorising.
    """
    optimizer = configure_adamw(model, lr, weight_decay)
    model.train()
    losses = []
    for _ in range(steps):
        _, loss = model(x, y)
        losses.append(loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return losses


@dataclass
class RangeTest:
    """What `lr_range_test` measured: the lr of each step and the loss of its batch, and
    the same losses smoothed (an exponential moving average, bias-corrected like Adam's)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]

    def steepest_lr(self) -> float:
        """The lr where the smoothed loss fell fastest per step (a common pick is a bit
        below it); only the part before the loss blows up is searched."""
        end = self.blow_up_index()
        drops = [self.smoothed[i] - self.smoothed[i + 1] for i in range(end - 1)]
        return self.lrs[max(range(len(drops)), key=drops.__getitem__)]

    def blow_up_index(self) -> int:
        """The first step whose smoothed loss is above 1.2 x the lowest so far (or the end)."""
        best = math.inf
        for i, loss in enumerate(self.smoothed):
            if loss > 1.2 * best:
                return i
            best = min(best, loss)
        return len(self.smoothed)


def lr_range_test(model: nn.Module, data: torch.Tensor, config: TrainConfig,
                  lr_min: float = 1e-5, lr_max: float = 1.0, steps: int = 100,
                  smoothing: float = 0.9) -> RangeTest:
    """Train `model` for `steps` steps with an lr growing from lr_min to lr_max by the same
    factor every step (a straight line on a log axis); stop early once the loss is nan or
    above four times its first value, since nothing after that is informative.

    At tiny learning rates the loss does not move; over a band it falls, fastest somewhere
    in the middle; past that the steps are too big and it climbs. A run's peak lr goes in
    the falling band, below where it blows up: the warm-up and the lower lr later in the
    run then stay safely inside it.
    """
    device = next(model.parameters()).device      # the batches go where the model is
    optimizer = configure_adamw(model, lr_min, config.weight_decay,
                                (config.beta1, config.beta2))
    factor = (lr_max / lr_min) ** (1 / max(1, steps - 1))
    model.train()
    lrs, losses, smoothed, average = [], [], [], 0.0
    for step in range(steps):
        lr = lr_min * factor ** step
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch_for_step(data, config, step, 0, device)
        _, loss = model(x, y)
        value = loss.item()
        if not math.isfinite(value) or (losses and value > 4 * losses[0]):
            break
        average = smoothing * average + (1 - smoothing) * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(average / (1 - smoothing ** (step + 1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return RangeTest(lrs, losses, smoothed)
