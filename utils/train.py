"""The trainer: everything chapter 07 builds around `loss.backward()` (chapter 07).

One loop trains any model whose `forward(idx, targets)` returns `(logits, loss)`:

    for step in range(start, max_steps):
        lr = lr_at(step, ...)                       # warm-up, then cosine decay
        x, y = batch_for_step(step)                 # random windows, targets shifted by one
        loss = model(x, y)[1] / grad_accum_steps    # (several micro-batches per step)
        loss.backward()
        clip_grad_norm_(..., grad_clip)
        optimizer.step(); optimizer.zero_grad()
        every eval_interval: estimate train/val loss, save a checkpoint

and around it what a real run needs: device and precision (bf16 autocast and TF32 on CUDA),
gradient accumulation, optional torch.compile, a tqdm progress bar, callbacks for live
plots, checkpoints written atomically and exactly resumable, and several processes with
DistributedDataParallel under `torchrun`.

Budgets are counted in **steps**, never in seconds, so the same command gives the same
model on any machine. Every random draw of step s (its data windows and its dropout masks)
comes from a seed made of (seed, s), so a run resumed at step s continues exactly as if it
had never stopped.

From a notebook:

    result = train(model, train_ids, val_ids, TrainConfig(max_steps=200), callbacks=[plot])

From a shell (`--help` lists every flag):

    python -m utils.train --preset shakespeare-char
    python -m utils.train --preset shakespeare-char --resume          # after an interruption
    torchrun --nproc_per_node=2 -m utils.train --preset shakespeare-char   # several GPUs
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import math
import os
import pickle
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.data import get_batch
from utils.optim import configure_adamw, lr_at
from utils.paths import REPO_ROOT, RUNS_DIR

CHECKPOINT_FORMAT = "transformers-course/train-checkpoint"


def _flag(default: Any, help: str) -> Any:
    """A config field that carries its own --help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run needs besides the data. The model fields build a `GPTConfig`."""

    # the model (used by `build_model`; a model you build yourself ignores them)
    n_layer: int = _flag(4, "transformer blocks")
    n_head: int = _flag(4, "attention heads per block")
    n_embd: int = _flag(128, "model width (embedding size)")
    block_size: int = _flag(128, "context length in tokens; training windows have this length")
    dropout: float = _flag(0.0, "dropout probability in the model (0 = off)")
    bias: bool = _flag(True, "biases in linear layers and LayerNorms")
    # optimisation
    batch_size: int = _flag(32, "windows per micro-batch, per process")
    grad_accum_steps: int = _flag(1, "micro-batches per optimizer step (gradient accumulation)")
    max_steps: int = _flag(1000, "optimizer steps to train for (the budget: steps, not seconds)")
    lr: float = _flag(1e-3, "peak learning rate, reached at the end of warm-up")
    min_lr: float = _flag(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _flag(100, "steps of linear learning-rate warm-up")
    decay_steps: int = _flag(0, "step where the cosine decay ends (0 = max_steps)")
    weight_decay: float = _flag(0.1, "AdamW decoupled weight decay (matrices only)")
    beta1: float = _flag(0.9, "AdamW beta1 (momentum of the gradient average)")
    beta2: float = _flag(0.99, "AdamW beta2 (momentum of the squared-gradient average)")
    grad_clip: float = _flag(1.0, "clip the global gradient norm to this (0 = no clipping)")
    # evaluation, logging, checkpoints
    eval_interval: int = _flag(250, "estimate train/val loss every this many steps")
    eval_batches: int = _flag(20, "batches per loss estimate")
    log_interval: int = _flag(10, "report the training loss to callbacks every this many steps")
    checkpoint_interval: int = _flag(0, "save a checkpoint every this many steps "
                                        "(0 = at every evaluation)")
    # machine
    device: str = _flag("auto", "cpu, cuda, cuda:1, mps, or auto (utils.device.get_device)")
    dtype: str = _flag("auto", "float32, bfloat16 or float16 autocast; auto = bfloat16 on a "
                               "CUDA GPU with native bf16, float16 (loss-scaled) on an older "
                               "CUDA GPU, float32 elsewhere")
    compile: bool = _flag(False, "torch.compile the model (faster on GPUs after a warm-up)")
    seed: int = _flag(1337, "seed of the initial weights, the data order and dropout")

    def __post_init__(self) -> None:
        positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                    "grad_accum_steps", "eval_interval", "eval_batches", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "decay_steps", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"TrainConfig.dtype must be auto, float32, bfloat16 or float16, "
                             f"got {self.dtype!r}")

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step, summed over every process."""
        return self.batch_size * self.grad_accum_steps * self.block_size * _world_size()


# Named configurations. A preset may differ by device type: on a GPU the same command trains
# a bigger model for longer, with no edits.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The course's character-level Shakespeare model (the shipped checkpoint is the CPU one).
    "shakespeare-char": {
        "cpu": dict(n_layer=6, n_head=4, n_embd=128, block_size=128, dropout=0.0,
                    batch_size=32, max_steps=2000, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                    eval_interval=250, eval_batches=16),
        "cuda": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
                     batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                     eval_interval=250, eval_batches=50),
    },
    # A few minutes on a CPU (bench/bench_train.py races it against the baby settings below).
    # On so small a budget a shallower model that sees more text wins: 2 blocks cost about
    # half of 4 per token, batches of 16 x 128 tokens, and a big step (lr 8e-3, short warm-up,
    # cosine to lr/10 at the budget); block 128 gives the longer context of the preset above.
    "shakespeare-char-fast": {
        "cpu": dict(n_layer=2, n_head=4, n_embd=128, block_size=128, dropout=0.0, bias=False,
                    batch_size=16, max_steps=1500, lr=8e-3, min_lr=8e-4, warmup_steps=50,
                    eval_interval=500, eval_batches=20),
    },
    # The draft model of speculative decoding (chapter 09): it guesses a few tokens that the
    # shipped model then checks in one pass, so it must be cheap per token more than good.
    # Same tokenizer and block size as `shakespeare-char`; 2 blocks (one block cannot form an
    # induction head, which copies names and words from earlier in the text) of width 96, so
    # the shipped file stays under 1 MB; the fast preset's big-step recipe, a few CPU minutes.
    "shakespeare-char-draft": {
        "cpu": dict(n_layer=2, n_head=4, n_embd=96, block_size=128, dropout=0.0, bias=False,
                    batch_size=16, max_steps=1000, lr=8e-3, min_lr=8e-4, warmup_steps=50,
                    eval_interval=500, eval_batches=20),
    },
    # nanoGPT's "baby" CPU settings, for bench/bench_train.py's comparison.
    "baby": {
        "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                    batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                    eval_interval=2000, eval_batches=20),
    },
    # A few seconds on a CPU: for tests and for trying flags.
    "tiny": {
        "cpu": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0,
                    batch_size=8, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                    eval_interval=10, eval_batches=2, log_interval=1),
    },
}


def preset(name: str, device: torch.device | str = "cpu", **overrides: Any) -> TrainConfig:
    """The TrainConfig of a named preset for this device type, with `overrides` applied.

    >>> preset("tiny", max_steps=5).max_steps
    5
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    kind = torch.device(device).type
    by_device = PRESETS[name]
    settings = by_device.get(kind, by_device["cpu"])
    return TrainConfig(**{**settings, "device": str(device), **overrides})


# --------------------------------------------------------------------------- the result

@dataclass
class TrainResult:
    """What `train` returns. `history` holds the logged curves:

    step, loss, lr           the training loss every log_interval steps: one batch, scored
                             before that step's update (noisy, but not optimistic)
    eval_step, train, val    the estimated losses at every evaluation
    """

    model: nn.Module
    history: dict[str, list]
    steps: int
    seconds: float
    checkpoint: Path | None = None
    config: TrainConfig | None = None   # as the run used it (a resumed run's schedule included)

    @property
    def final_val_loss(self) -> float:
        return self.history["val"][-1] if self.history["val"] else math.nan

    @property
    def final_train_loss(self) -> float:
        return self.history["train"][-1] if self.history["train"] else math.nan


def empty_history() -> dict[str, list]:
    return {"step": [], "loss": [], "lr": [], "eval_step": [], "train": [], "val": []}


# --------------------------------------------------------------------------- devices

def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def resolve_device(config: TrainConfig) -> torch.device:
    from utils.device import get_device

    if _world_size() > 1 and torch.cuda.is_available() and config.device in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per process
    return get_device(None if config.device == "auto" else config.device)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype the forward pass runs in under autocast, or None for plain float32.

    Weights and the optimizer stay in float32 either way ("mixed" precision); bfloat16 keeps
    float32's range, so unlike float16 it needs no loss scaling.
    """
    if config.dtype == "auto":
        if device.type != "cuda":
            return None
        # is_bf16_supported() says True by default on GPUs that only *emulate* bf16 (a T4, a
        # V100), where it is slow; those get float16, which the GradScaler below makes safe.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]


@contextlib.contextmanager
def tf32_matmuls(device: torch.device):
    """TF32 matrix products on a CUDA device while the block runs, then the previous settings.

    TF32 (Ampere and later): float32 range, ~10 bits of mantissa, several times faster; the
    loss curve does not notice. But the switch is global, so `train` scopes it: code run
    after `train()` returns (a notebook's exact fp32 comparison, say) sees the flags it had.

    >>> before = torch.backends.cuda.matmul.allow_tf32
    >>> with tf32_matmuls(torch.device("cuda")):
    ...     torch.backends.cuda.matmul.allow_tf32
    True
    >>> torch.backends.cuda.matmul.allow_tf32 == before
    True
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------- randomness

def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of everything random in one step: a pure function of (seed, step, rank).

    >>> step_seed(1337, 0) != step_seed(1337, 1) != step_seed(1337, 1, rank=1)
    True
    """
    return (seed * 1_000_003 + step) * 1_009 + rank


def batch_for_step(data: torch.Tensor, config: TrainConfig, step: int, micro_step: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """This process's micro-batch `micro_step` of step `step`.

    All processes draw the same *global* batch of step `step` (batch_size x grad_accum_steps
    x world_size windows, from a generator seeded by (seed, step)) and each takes its own
    rows. So two processes with batch 4 see exactly the windows one process with batch 8
    sees, and the averaged gradients are the same.
    """
    world, rank = _world_size(), _rank()
    rows = config.batch_size * config.grad_accum_steps * world
    generator = torch.Generator().manual_seed(step_seed(config.seed, step))
    x, y = get_batch(data, rows, config.block_size, generator)
    start = (micro_step * world + rank) * config.batch_size
    part = slice(start, start + config.batch_size)
    return x[part].to(device), y[part].to(device)


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def estimate_loss(model: nn.Module, data: torch.Tensor, config: TrainConfig,
                  device: torch.device | str = "cpu", autocast: torch.dtype | None = None,
                  batches: int | None = None) -> float:
    """Mean loss over `batches` fixed random windows of `data` (dropout off).

    The windows come from a fixed seed, so every evaluation of a run scores the same text and
    the curve shows the model changing, not the sample.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(config.seed + 1)
    was_training = model.training
    model.eval()
    total = 0.0
    n = batches or config.eval_batches
    for _ in range(n):
        x, y = get_batch(data, config.batch_size, config.block_size, generator, device)
        with _autocast(device, autocast):
            total += model(x, y)[1].item()
    model.train(was_training)
    return total / n


@torch.no_grad()
def split_loss(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 64,
               device: torch.device | str = "cpu") -> float:
    """Mean loss over ALL of `data`, cut into consecutive non-overlapping windows.

    Unlike `estimate_loss` (a sample of random windows), this scores every token of the
    split once, so it is the number to quote for a finished model. The first tokens of each
    window see little context, so it is slightly above a sliding-window evaluation.
    """
    data = torch.as_tensor(data, dtype=torch.long)
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(data)}")
    x_all = data[: n_windows * block_size].view(n_windows, block_size)
    y_all = data[1 : n_windows * block_size + 1].view(n_windows, block_size)
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, n_windows, batch_size):
        x, y = x_all[i : i + batch_size].to(device), y_all[i : i + batch_size].to(device)
        total += model(x, y)[1].item() * x.numel()   # weight each batch by its token count
    model.train(was_training)
    return total / x_all.numel()


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- checkpoints

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
                    config: TrainConfig, history: dict[str, list],
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


# --------------------------------------------------------------------------- the loop

Callback = Callable[[dict[str, Any]], Any]


def train(model: nn.Module, train_data: torch.Tensor, val_data: torch.Tensor | None,
          config: TrainConfig, callbacks: Iterable[Callback] = (),
          checkpoint_path: Path | str | None = None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train `model` (any module with `forward(idx, targets) -> (logits, loss)`) on token ids.

    callbacks       called (on rank 0) with a dict for every event:
                    {"event": "train", "step", "loss", "lr"} every log_interval steps,
                    {"event": "eval", "step", "train", "val"} at every evaluation,
                    {"event": "end", "step", "history"} when the run ends
    checkpoint_path where to save (atomically) at every evaluation and at the end
    resume          continue from checkpoint_path if it exists (exactly: same final weights);
                    a larger max_steps keeps the saved run's decay length unless
                    decay_steps is given (a printed line says which)
    progress        show a tqdm progress bar

    Under `torchrun` (torch.distributed initialised) the model is wrapped in
    DistributedDataParallel; each process gets its own rows of every global batch.
    """
    device = resolve_device(config)
    amp_dtype = autocast_dtype(config, device)
    rank, world = _rank(), _world_size()
    train_data = torch.as_tensor(train_data, dtype=torch.long)
    val_data = None if val_data is None else torch.as_tensor(val_data, dtype=torch.long)
    model.to(device)
    optimizer = configure_adamw(model, config.lr, config.weight_decay,
                                (config.beta1, config.beta2), device_type=device.type)
    history, start_step = empty_history(), 0
    checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, map_location=device)
        _check_resumable(state, config, checkpoint_path)
        config = _resumed_schedule(state["train_config"], config, state["step"], rank)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_step = state["history"], state["step"]

    # The module the loop calls: maybe compiled, maybe wrapped for several processes.
    # Checkpoints always save the plain `model`, so they load anywhere.
    runner: nn.Module = torch.compile(model) if config.compile else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type ==
                                         "cuda" else None)
    # float16 overflows without loss scaling; bfloat16 and float32 do not need it.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    callbacks = list(callbacks) if rank == 0 else []
    bar = _progress_bar(start_step, config.max_steps, progress and rank == 0)
    decay_end = config.decay_steps or config.max_steps
    start_time = time.perf_counter()
    model.train()

    def evaluate(step: int) -> None:
        train_loss = estimate_loss(model, train_data, config, device, amp_dtype)
        val_loss = (estimate_loss(model, val_data, config, device, amp_dtype)
                    if val_data is not None else math.nan)
        history["eval_step"].append(step)
        history["train"].append(train_loss)
        history["val"].append(val_loss)
        _notify(callbacks, {"event": "eval", "step": step, "train": train_loss, "val": val_loss})
        if bar is not None:
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")

    with tf32_matmuls(device):   # on CUDA; the old settings are back when train returns
        if start_step == 0 and config.max_steps > 0:
            evaluate(0)  # the loss before any training: about ln(vocab_size)
        for step in range(start_step, config.max_steps):
            lr = lr_at(step, config.lr, config.warmup_steps, decay_end, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(step_seed(config.seed, step, rank))  # this step's dropout masks
            step_loss = 0.0
            for micro in range(config.grad_accum_steps):
                x, y = batch_for_step(train_data, config, step, micro, device)
                last = micro == config.grad_accum_steps - 1
                # DDP averages gradients across processes after every backward; between
                # micro-batches that would be wasted traffic, so only sync on the last one.
                sync = runner.no_sync() if world > 1 and not last else contextlib.nullcontext()
                with sync:
                    with _autocast(device, amp_dtype):
                        _, loss = runner(x, y)
                    # the mean over the micro-batches, not the sum, so lr means the same thing
                    # whatever grad_accum_steps is
                    scaler.scale(loss / config.grad_accum_steps).backward()
                step_loss += loss.item() / config.grad_accum_steps
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % config.log_interval == 0 or done == config.max_steps:
                history["step"].append(done)
                history["loss"].append(step_loss)
                history["lr"].append(lr)
                _notify(callbacks, {"event": "train", "step": done, "loss": step_loss, "lr": lr})
            if done % config.eval_interval == 0 or done == config.max_steps:
                evaluate(done)
            every = config.checkpoint_interval or config.eval_interval
            if checkpoint_path is not None and rank == 0 and (done % every == 0
                                                              or done == config.max_steps):
                save_checkpoint(checkpoint_path, model, optimizer, done, config, history)
        if bar is not None:
            _close_progress_bar(bar)
    model.eval()
    _notify(callbacks, {"event": "end", "step": config.max_steps, "history": history})
    return TrainResult(model, history, config.max_steps, time.perf_counter() - start_time,
                       checkpoint_path, config)


# Fields that may change between a run and its resumption. All but two leave what each step
# computes as it was; max_steps and decay_steps move where the cosine ends, so
# `_resumed_schedule` keeps the saved decay length unless decay_steps asks for a new one.
_RESUME_MAY_DIFFER = {"max_steps", "decay_steps", "eval_interval", "eval_batches",
                      "log_interval", "checkpoint_interval", "device", "compile"}


def _resumed_schedule(saved: dict[str, Any], config: TrainConfig, step: int,
                      rank: int = 0) -> TrainConfig:
    """The config a resumed run goes on with: the cosine keeps the saved run's length.

    The decay ends at decay_steps, or at max_steps when decay_steps is 0. Extending a run of
    2000 steps with max_steps=3000 would otherwise refit the cosine to 3000 steps, and the
    learning rate would jump from min_lr back up at the step where the run resumes. So an
    extended run keeps the saved decay end (its extra steps run at min_lr), unless
    decay_steps is given explicitly; either way one printed line says what happens.
    """
    saved_end = saved.get("decay_steps") or saved["max_steps"]
    say = print if rank == 0 else (lambda *args, **kwargs: None)
    if config.decay_steps:
        if config.decay_steps != saved_end:
            before = lr_at(step - 1, config.lr, config.warmup_steps, saved_end, config.min_lr)
            after = lr_at(step, config.lr, config.warmup_steps, config.decay_steps, config.min_lr)
            say(f"resuming at step {step} with decay_steps={config.decay_steps}: the cosine is "
                f"refitted to end at step {config.decay_steps} instead of {saved_end}, so the "
                f"learning rate jumps from {before:.2e} to {after:.2e}", flush=True)
        return config
    if saved_end != config.max_steps:
        say(f"resuming at step {step} with max_steps={config.max_steps}: the cosine keeps the "
            f"saved run's length and still ends at step {saved_end} (min_lr after it); pass "
            f"decay_steps={config.max_steps} (--decay-steps {config.max_steps}) to refit it "
            f"instead", flush=True)
    return dataclasses.replace(config, decay_steps=saved_end)


def _check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = state["train_config"]
    differ = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in asdict(config).items()
              if k in saved and k not in _RESUME_MAY_DIFFER and saved[k] != v]
    if differ:
        raise ValueError(f"cannot resume from {path}: it was trained with different settings "
                         f"({'; '.join(differ)}). Use the same flags, or a new --out-dir.")


def _notify(callbacks: list[Callback], event: dict[str, Any]) -> None:
    for callback in callbacks:
        callback(event)


def _progress_bar(start: int, total: int, enabled: bool):
    """A tqdm bar: text in a terminal, a widget in a notebook (tqdm.auto picks)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    settings = dict(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True)
    if not issubclass(tqdm, notebook_tqdm):
        return tqdm(**settings)
    # A saved notebook keeps only the text the widget had when it was displayed ("0/400").
    # Displaying it under a display id lets `_close_progress_bar` redraw that text at the end.
    from IPython.display import display

    bar = tqdm(display=False, **settings)
    bar.display_handle = display(bar.container, display_id=True)
    return bar


def _close_progress_bar(bar) -> None:
    bar.close()
    handle = getattr(bar, "display_handle", None)
    if handle is not None:
        handle.update(bar.container)   # the stored text now shows the finished bar


# --------------------------------------------------------------------------- the command

def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The course's GPT (utils.model) with this run's shape, initialised from config.seed."""
    from utils.model import GPT, GPTConfig

    torch.manual_seed(config.seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=config.block_size,
                         n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                         dropout=config.dropout, bias=config.bias))


def default_out_dir(name: str, config: TrainConfig) -> Path:
    """runs/train/<preset>_L<layers>_d<width>_T<block>_s<steps>: named after what it holds."""
    return (RUNS_DIR / "train" / f"{name}_L{config.n_layer}_d{config.n_embd}"
            f"_T{config.block_size}_s{config.max_steps}")


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m utils.train",
        description="Train a character-level GPT on the course corpus. A preset gives every "
                    "setting (a larger one on CUDA); each flag below overrides one. Writes a "
                    "resumable checkpoint.pt and the final weights (model.safetensors + "
                    "model.json) under --out-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="shakespeare-char", choices=sorted(PRESETS),
                        help="named configuration to start from")
    parser.add_argument("--corpus", default="shakespeare", help="corpus in data/ to train on")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write the checkpoint and the final weights (default: "
                             "runs/train/<preset>_L.._d.._T.._s<max_steps>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out-dir>/checkpoint.pt if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata["help"] + " (default: from the preset)")
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=None,
                                help=f.metadata["help"] + " (default: from the preset)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    device_name = overrides.get("device", "auto")
    from utils.device import get_device

    kind = "cuda" if (device_name == "auto" and torch.cuda.is_available()) else (
        get_device(None if device_name == "auto" else device_name).type)
    by_device = PRESETS[args.preset]
    settings = by_device.get(kind, by_device["cpu"])
    return TrainConfig(**{**settings, **overrides})


def run_from_args(argv: list[str] | None = None) -> TrainResult:
    """What `python -m utils.train` does; returns the TrainResult (rank 0 writes the files)."""
    from utils.data import load_corpus, train_val_split
    from utils.pretrained import save_pretrained
    from utils.tokenizers import CharTokenizer

    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available()
                                             else "gloo")
    config = config_from_args(args)
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args.preset, config)
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    text = load_corpus(args.corpus)
    tokenizer = CharTokenizer(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train_ids, val_ids = train_val_split(data)
    model = build_model(config, tokenizer.vocab_size)
    rank = _rank()
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{args.preset}: {n_params:,} parameters, {config.max_steps} steps of "
              f"{config.tokens_per_step:,} tokens on {resolve_device(config)} "
              f"({_world_size()} process(es)); writing to {_shown(out_dir)}", flush=True)
    result = train(model, train_ids, val_ids, config, checkpoint_path=out_dir / "checkpoint.pt",
                   resume=args.resume, progress=not args.no_progress)
    if rank == 0:
        record = {
            "command": "python -m utils.train " + " ".join(shlex.quote(a) for a in (
                sys.argv[1:] if argv is None else argv)),
            "machine": machine_description(),
            "torch": torch.__version__,
            "seconds_this_session": round(result.seconds, 1),
            "steps": result.steps,
            "tokens_per_step": config.tokens_per_step,
            "final_train_loss": round(result.final_train_loss, 4),
            "final_val_loss": round(result.final_val_loss, 4),
            "train_config": asdict(result.config),
            "history": result.history,
        }
        save_pretrained(out_dir / "model.safetensors", model, tokenizer, record)
        print(f"done: {result.steps} steps, train {result.final_train_loss:.4f}, "
              f"val {result.final_val_loss:.4f}, {result.seconds:.0f} s; weights in "
              f"{_shown(out_dir / 'model.safetensors')}", flush=True)
    if distributed:
        torch.distributed.barrier()
    return result


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (no machine paths in logs)."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    try:
        run_from_args(argv)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["TrainConfig", "TrainResult", "PRESETS", "preset", "train", "estimate_loss", "split_loss",
           "batch_for_step", "step_seed", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "atomic_save", "checksum", "build_model", "tf32_matmuls"]
