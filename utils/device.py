"""Pick the device to compute on, and make runs repeatable.

Every chapter calls `get_device()` once and moves its tensors there, so the same notebook
uses a GPU when one is present and the CPU otherwise, with no edits.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

# Set COURSE_DEVICE=cpu (or cuda, cuda:1, mps) to override the automatic choice, e.g. to
# compare speeds or to keep a GPU free for something else.
DEVICE_ENV_VAR = "COURSE_DEVICE"

# Apple's MPS backend gained the operations this course relies on (scaled_dot_product_attention
# with masks, index_add, autocast) over several releases; we only pick it automatically from
# this version on. It is not exercised by our CI (no Apple hardware there), so it is opt-out:
# COURSE_DEVICE=cpu if something misbehaves on your Mac.
MIN_TORCH_FOR_MPS = (2, 5)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def mps_usable() -> bool:
    """True when Apple's Metal backend is present and torch is new enough to trust it."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available() and _torch_version() >= MIN_TORCH_FOR_MPS)


def get_device(override: str | None = None) -> torch.device:
    """Return the best available device: cuda, then mps, then cpu.

    `override` (or the COURSE_DEVICE environment variable) forces a choice; asking for a
    device that is not there raises a ValueError that says what is available.

    >>> get_device("cpu")
    device(type='cpu')
    """
    choice = override or os.environ.get(DEVICE_ENV_VAR, "").strip() or None
    if choice is not None:
        try:
            device = torch.device(choice)
        except RuntimeError:
            raise ValueError(f"unknown device {choice!r}; use one of {available_devices()}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{choice!r} was requested but CUDA is not available; "
                             f"available: {available_devices()}")
        if device.type == "mps" and not mps_usable():
            raise ValueError(f"{choice!r} was requested but MPS is not usable here "
                             f"(needs torch >= {'.'.join(map(str, MIN_TORCH_FOR_MPS))}); "
                             f"available: {available_devices()}")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unknown device {choice!r}; use one of {available_devices()}")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_usable():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """Names of the devices this machine can use, e.g. ['cuda', 'cpu']."""
    found = ["cuda"] if torch.cuda.is_available() else []
    if mps_usable():
        found.append("mps")
    return found + ["cpu"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a cell gives the same numbers twice.

    >>> set_seed(0); a = torch.rand(1); set_seed(0); bool(torch.rand(1) == a)
    True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def one_thread():
    """Run PyTorch on a single CPU thread inside a `with` block, then restore the setting.

    For small tensors (a widget's redraw, a tiny model): splitting each product across
    threads costs more than it saves, and on a busy 2-core machine a second thread mostly
    waits for a free core (measured: a redraw of about 1 s on one thread took 5-30 s on two).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def describe_environment() -> dict[str, str]:
    """The versions and device a learner should report when asking for help."""
    import platform

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(get_device()),
        "cpu threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_description() -> str:
    """One line about the hardware, for the record of a run."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core CPU ({cpu}), {torch.get_num_threads()} torch threads"

