"""The course's stopwatch: repeats, warm-up, and a device synchronisation around every timing."""

import time

import pytest
import torch

from utils import timing
from utils.timing import Timing, stopwatch, time_call


def test_time_call_warms_up_then_times_each_repeat():
    calls = []
    result = time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6
    assert len(result.seconds) == 4
    assert result.best <= result.median <= result.worst


def test_time_call_measures_the_work():
    result = time_call(lambda: time.sleep(0.02), repeats=3, warmup=0)
    assert result.best >= 0.02


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_the_median_is_reported_not_the_mean():
    t = Timing([0.001, 0.002, 1.0])
    assert t.median == 0.002
    assert str(t).startswith("2 ms (median of 3")


def test_stopwatch_times_a_block():
    with stopwatch() as watch:
        time.sleep(0.02)
    assert watch.seconds >= 0.02


def test_a_cuda_timing_synchronizes_before_and_after(monkeypatch):
    """On a GPU the clock must wait for queued kernels; fake CUDA and count the waits."""
    synced = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synced.append("sync"))
    time_call(lambda: None, repeats=3, warmup=1, device="cuda")
    assert synced == ["sync"] * 6
    synced.clear()
    with stopwatch("cuda"):
        pass
    assert synced == ["sync", "sync"]
    synced.clear()
    timing.synchronize("cpu")  # a CPU timing has nothing to wait for
    assert synced == []
