"""utils.diagnostics: overfitting one batch tells a working model from a broken one, and the
lr range test sweeps, smooths and finds where the loss falls fastest and where it blows up."""

from __future__ import annotations

import math

import pytest
import torch

from utils.diagnostics import RangeTest, lr_range_test, overfit_one_batch
from utils.model import GPT
from utils.train_config import TrainConfig
from utils.trainer import build_model

VOCAB = 13
CONFIG = TrainConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, device="cpu")


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(VOCAB, (4, 16), generator=g)
    return x, torch.randint(VOCAB, (4, 16), generator=g)   # random targets: only memorising works


def test_a_working_model_memorises_one_batch():
    losses = overfit_one_batch(build_model(CONFIG, VOCAB), *_batch(), steps=120, lr=1e-2)
    assert len(losses) == 120
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.2) and losses[-1] < 0.1


def test_a_model_that_cannot_see_its_input_stalls():
    class Blind(GPT):
        def forward(self, idx, targets=None, **kwargs):
            return super().forward(idx * 0, targets, **kwargs)

    torch.manual_seed(0)
    losses = overfit_one_batch(Blind(build_model(CONFIG, VOCAB).config), *_batch(), steps=120,
                               lr=1e-2)
    assert losses[-1] > 1.0   # it can only learn each position's target frequencies


def test_the_range_test_grows_the_lr_geometrically_and_stops_when_the_loss_explodes():
    data = torch.arange(4000) % VOCAB
    result = lr_range_test(build_model(CONFIG, VOCAB), data, CONFIG, lr_min=1e-4, lr_max=100.0,
                           steps=60)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert all(r == pytest.approx((100.0 / 1e-4) ** (1 / 59)) for r in ratios)
    assert result.lrs[0] == pytest.approx(1e-4)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed)
    assert len(result.lrs) < 60                        # lr 100 diverges before the end
    assert min(result.losses) < result.losses[0] - 0.5  # and somewhere in between it learned
    assert 1e-4 < result.steepest_lr() < result.lrs[result.blow_up_index() - 1]


def test_smoothing_is_a_bias_corrected_moving_average():
    data = torch.arange(4000) % VOCAB
    r = lr_range_test(build_model(CONFIG, VOCAB), data, CONFIG, steps=5, smoothing=0.5)
    average = 0.0
    for i, loss in enumerate(r.losses):
        average = 0.5 * average + 0.5 * loss
        assert r.smoothed[i] == pytest.approx(average / (1 - 0.5 ** (i + 1)))
    assert r.smoothed[0] == pytest.approx(r.losses[0])   # no pull towards 0 at the start


def test_steepest_and_blow_up_on_a_made_up_curve():
    smoothed = [5.0, 4.9, 4.5, 3.0, 2.8, 2.7, 3.5, 9.0]
    r = RangeTest(lrs=[10.0 ** -k for k in range(8, 0, -1)], losses=smoothed, smoothed=smoothed)
    assert r.blow_up_index() == 6                      # 3.5 > 1.2 x 2.7
    assert r.steepest_lr() == r.lrs[2]                 # 4.5 -> 3.0 is the biggest drop
    flat = RangeTest(lrs=[1.0, 2.0, 3.0], losses=[3.0, 2.0, 1.0], smoothed=[3.0, 2.0, 1.0])
    assert flat.blow_up_index() == 3
