"""Timing that tells the truth on any device: the course's one stopwatch.

A GPU runs kernels asynchronously: `y = model(x)` returns as soon as the work is *queued*, so
`time.perf_counter()` around it measures the launch, not the work. Every timing in the course
goes through this module, which waits for the device before starting and before stopping the
clock, and repeats a measurement so one hiccup of a shared machine does not become the result.

    timing = time_call(lambda: model(x), repeats=5, device=x.device)
    print(timing)            # "12.3 ms (median of 5, 11.9-14.0)"
    timing.median            # seconds

    with stopwatch(device) as watch:
        train_for_a_while()
    watch.seconds
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until every kernel queued on `device` has finished (a no-op on a CPU)."""
    kind = torch.device(device).type if device is not None else None
    if kind in (None, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    mps = getattr(torch, "mps", None)
    if kind in (None, "mps") and mps is not None and torch.backends.mps.is_available():
        mps.synchronize()


@dataclass
class Timing:
    """Seconds per call over several repeats; the median is what to report."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)

    def __str__(self) -> str:
        return (f"{_readable(self.median)} (median of {len(self.seconds)}, "
                f"{_readable(self.best)}-{_readable(self.worst)})")


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Call `fn()` `warmup` times untimed (first calls allocate and compile), then `repeats`
    times, each timed between two device synchronisations."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        timing.seconds.append(time.perf_counter() - start)
    return timing


class _Watch:
    seconds: float = float("nan")


@contextmanager
def stopwatch(device: torch.device | str | None = None) -> Iterator[_Watch]:
    """Time one block of code (a training run, a generation) with device synchronisation."""
    watch = _Watch()
    synchronize(device)
    start = time.perf_counter()
    try:
        yield watch
    finally:
        synchronize(device)
        watch.seconds = time.perf_counter() - start


def _readable(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"
