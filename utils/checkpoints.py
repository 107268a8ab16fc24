"""Checkpoints that survive a crash and refuse a damaged file (chapter 07).

A training checkpoint holds everything needed to continue exactly: weights, optimizer
moments, the step and the curves. Three habits make it safe:

    atomic_save      write to a temporary file, then rename: never half a file on disk
    checksum         a SHA-256 of every tensor and value, stored inside: a flipped byte shows
    load_checkpoint  `weights_only=True`: a file from elsewhere cannot run code on load

The trainer writes these files; `utils.pretrained` uses the same checksum for the shipped
weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = "transformers-course/train-checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, corrupted, or not ours."""


def _digest(obj: Any, h: hashlib._Hash) -> None:
    """Feed a nested structure of tensors, numbers and strings into a hash, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _digest(obj[key], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _digest(item, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def checksum(obj: Any) -> str:
    """SHA-256 of every tensor and value in a (nested) state: detects a flipped byte."""
    h = hashlib.sha256()
    _digest(obj, h)
    return h.hexdigest()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename it into place.

    A rename within a folder is atomic: a reader (or a run killed halfway through saving)
    sees either the old complete file or the new complete file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: Any, history: dict[str, list],
                    extra: dict[str, Any] | None = None) -> None:
    """Everything needed to continue exactly: weights, optimizer moments, step, curves.

    Only tensors, numbers, strings, lists and dicts go in, so `torch.load(weights_only=True)`
    can read it without running any pickled code.
    """
    model_config = getattr(model, "config", None)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_config": asdict(config),
        "model_config": asdict(model_config) if dataclasses.is_dataclass(model_config) else None,
        "history": history,
        "extra": extra or {},
    }
    state["checksum"] = checksum(state)
    atomic_save(state, path)


def load_checkpoint(path: Path | str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, safely.

    `weights_only=True` refuses anything but tensors and plain values, so a file from
    elsewhere cannot run code on load. Every way a file can be unusable raises a
    `CheckpointError` (or FileNotFoundError) that names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain "
            f"values, which weights_only loading never unpickles (it is not a checkpoint "
            f"written by utils.train). Details: {str(error).splitlines()[0]}") from None
    except Exception as error:  # zip reader errors, EOF, ...: the bytes are damaged
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupted "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Delete it and restart the run, or resume from an older copy.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a checkpoint written by utils.train (expected "
                              f"format {CHECKPOINT_FORMAT!r}; found {found})")
    stored = state.pop("checksum", None)
    if stored != checksum(state):
        raise CheckpointError(f"checkpoint {path} is corrupted: its contents do not match the "
                              "checksum stored when it was written")
    return state

