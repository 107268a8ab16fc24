"""AdamW from its update rule and the learning-rate schedule (utils/optim.py)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from utils.optim import AdamW, adamw_step, configure_adamw, lr_at, param_groups


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))


def _train(model, optimizer, steps=12):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.8, 0.95)])
def test_our_adamw_takes_the_same_steps_as_torch(wd, betas):
    ours, theirs = _model(), _model()
    _train(ours, AdamW(ours.parameters(), lr=1e-2, betas=betas, weight_decay=wd))
    _train(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-2, betas=betas, weight_decay=wd))
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_our_adamw_with_param_groups_matches_torch():
    ours, theirs = _model(), _model()
    _train(ours, AdamW(param_groups(ours, 0.3), lr=5e-3))
    _train(theirs, torch.optim.AdamW(param_groups(theirs, 0.3), lr=5e-3))
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_adamw_step_is_pure_and_decays_decoupled():
    p, g = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 0.0])
    m, v = torch.zeros(2), torch.zeros(2)
    new_p, new_m, new_v = adamw_step(p, g, m, v, step=1, lr=0.1, weight_decay=0.5)
    assert torch.equal(p, torch.tensor([2.0, -1.0])) and torch.equal(m, torch.zeros(2))
    # zero gradient: only the decay acts, and it shrinks by lr * wd, whatever v is
    assert torch.allclose(new_p, p * (1 - 0.1 * 0.5))
    assert torch.equal(new_m, torch.zeros(2)) and torch.equal(new_v, torch.zeros(2))


def test_first_adamw_step_has_size_lr_thanks_to_bias_correction():
    for grad in (1e-4, 3.0, -50.0):
        p, _, _ = adamw_step(torch.tensor([0.0]), torch.tensor([grad]), torch.zeros(1),
                             torch.zeros(1), step=1, lr=0.01, weight_decay=0.0)
        assert math.isclose(abs(p.item()), 0.01, rel_tol=1e-3)


def test_adamw_rejects_bad_settings():
    with pytest.raises(ValueError, match="betas"):
        AdamW(_model().parameters(), betas=(1.0, 0.9))


def test_param_groups_decay_only_matrices():
    model = _model()
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = configure_adamw(model, lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2


def test_schedule_landmarks():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)        # never a wasted step at lr 0
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)        # warm-up ends at the peak
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)       # cosine starts at the peak
    assert lr_at(55, 1.0, 10, 100, 0.1) == pytest.approx(0.55)  # halfway: the mean
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(10_000, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(0, 1.0, 0, 100) == pytest.approx(1.0)         # no warm-up at all


@settings(max_examples=60, deadline=None)
@given(warmup=st.integers(0, 50), extra=st.integers(1, 500), max_lr=st.floats(1e-5, 1.0),
       floor=st.floats(0.0, 1.0))
def test_schedule_is_bounded_and_monotone_after_warmup(warmup, extra, max_lr, floor):
    total, min_lr = warmup + extra, max_lr * floor
    lrs = [lr_at(s, max_lr, warmup, total, min_lr) for s in range(total + 5)]
    assert all(0 < lr <= max_lr + 1e-12 for lr in lrs[:warmup])
    assert all(min_lr - 1e-12 <= lr <= max_lr + 1e-12 for lr in lrs[warmup:])
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:warmup], lrs[1:warmup + 1], strict=False))
    assert all(a >= b - 1e-12 for a, b in zip(lrs[warmup:], lrs[warmup + 1:], strict=False))
