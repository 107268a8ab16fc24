"""The training loop: everything chapter 07 builds around `loss.backward()` (chapter 07).

One loop trains any model whose `forward(idx, targets)` returns `(logits, loss)`:

    for step in range(start, max_steps):
        lr = lr_at(step, ...)                       # warm-up, then cosine decay (or wsd)
        x, y = batch_for_step(step)                 # random windows, targets shifted by one
        loss = model(x, y)[1] / grad_accum_steps    # (several micro-batches per step)
        loss.backward()
        clip_grad_norm(..., grad_clip)              # utils.optim: one global norm
        optimizer.step(); optimizer.zero_grad()     # AdamW, or Muon + AdamW (utils.muon)
        every log_interval: loss, lr, gradient norm, tokens/s and MFU into `history`
        every eval_interval: estimate train/val loss, save a checkpoint

and around it what a real run needs: device and precision (bf16 autocast and TF32 on CUDA),
gradient accumulation, optional torch.compile, a tqdm progress bar, callbacks for live
plots, checkpoints written atomically and exactly resumable, and several processes under
`torchrun`: DDP, ZeRO-1 or FSDP (`TrainConfig.shard`, see `utils.parallel`).

Budgets are counted in **steps**, never in seconds, so the same command gives the same
model on any machine. Every random draw of step s (its data windows and its dropout masks)
comes from a seed made of (seed, s), so a run resumed at step s continues exactly as if it
had never stopped.

From a notebook:

    result = train(model, train_ids, val_ids, TrainConfig(max_steps=200), callbacks=[plot])

The settings are in `utils.train_config`, the checkpoint files in `utils.checkpoints`, and the
command line (`python -m utils.train --preset shakespeare-char`) in `utils.train`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.data import get_batch
from utils.device import get_device
from utils.distributed import process_rank, world_size

# estimate_loss and split_loss are also imported from here by chapters and benchmarks
from utils.evaluation import estimate_loss, maybe_autocast, split_loss  # noqa: F401
from utils.optim import clip_grad_norm, lr_at, lr_wsd_at
from utils.parallel import Parallel
from utils.resume import check_resumable, resumed_schedule
from utils.train_config import TrainConfig

# --------------------------------------------------------------------------- the result

@dataclass
class TrainResult:
    """What `train` returns. `history` holds the logged curves:

    step, loss, lr           the training loss every log_interval steps: one batch, scored
                             before that step's update (noisy, but not optimistic)
    grad_norm                that step's global gradient norm, before clipping
    clipped                  the fraction of the steps since the last log that were clipped
                             (their norm was above grad_clip)
    tokens_per_s, mfu        training tokens per second over those steps (evaluations and
                             checkpoints not counted), and the model FLOPs utilisation that
                             makes: the GPT's FLOPs per token (utils.model, attention
                             included) x tokens/s over the device's peak (utils.throughput;
                             nan for a model that is not a utils.model.GPT)
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
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "clipped": [],
            "tokens_per_s": [], "mfu": [], "eval_step": [], "train": [], "val": []}



# --------------------------------------------------------------------------- devices

def resolve_device(config: TrainConfig) -> torch.device:
    if world_size() > 1 and torch.cuda.is_available() and config.device in ("auto", "cuda"):
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
    world, rank = world_size(), process_rank()
    rows = config.batch_size * config.grad_accum_steps * world
    generator = torch.Generator().manual_seed(step_seed(config.seed, step))
    x, y = get_batch(data, rows, config.block_size, generator)
    start = (micro_step * world + rank) * config.batch_size
    part = slice(start, start + config.batch_size)
    return x[part].to(device), y[part].to(device)


# --------------------------------------------------------------------------- the loop

Callback = Callable[[dict[str, Any]], Any]


def train(model: nn.Module, train_data: torch.Tensor, val_data: torch.Tensor | None,
          config: TrainConfig, callbacks: Iterable[Callback] = (),
          checkpoint_path: Path | str | None = None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train `model` (any module with `forward(idx, targets) -> (logits, loss)`) on token ids.

    callbacks       called (on rank 0) with a dict for every event:
                    {"event": "train", "step", "loss", "lr", "grad_norm", "clipped",
                    "tokens_per_s", "mfu"} every log_interval steps (see TrainResult),
                    {"event": "eval", "step", "train", "val"} at every evaluation,
                    {"event": "end", "step", "history"} when the run ends
    checkpoint_path where to save (atomically) at every evaluation and at the end
    resume          continue from checkpoint_path if it exists (exactly: same final weights);
                    a larger max_steps keeps the saved run's decay length unless
                    decay_steps is given (a printed line says which)
    progress        show a tqdm progress bar

    Under `torchrun` (torch.distributed initialised) each process gets its own rows of
    every global batch, and config.shard says how the processes split the model
    (`utils.parallel`: DDP, ZeRO-1 or FSDP). Under FSDP `model` stays whole on the CPU and
    receives the trained weights at every checkpoint and at the end.

    A gradient norm that is not finite stops the run with FloatingPointError (the last
    checkpoint holds the weights before it), except under float16 loss scaling, where the
    GradScaler skips that step and lowers its scale.
    """
    device = resolve_device(config)
    amp_dtype = autocast_dtype(config, device)
    rank = process_rank()
    train_data = torch.as_tensor(train_data, dtype=torch.long)
    val_data = None if val_data is None else torch.as_tensor(val_data, dtype=torch.long)
    history, start_step, state = empty_history(), 0, None
    checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, map_location=device)
        check_resumable(state, config, checkpoint_path)
        config = resumed_schedule(state["train_config"], config, state["step"], rank)
        model.load_state_dict(state["model"])
        # (a checkpoint older than some curves has none of them: they start empty)
        history, start_step = {**empty_history(), **state["history"]}, state["step"]

    # The module the loop calls (maybe compiled, maybe wrapped or sharded for several
    # processes) and its optimizer. Checkpoints always save the whole model, so they load
    # anywhere.
    spread = Parallel(model, config, device)
    runner, optimizer = spread.runner, spread.optimizer
    if state is not None:
        spread.load_optimizer_state(state["optimizer"])
    # float16 overflows without loss scaling; bfloat16 and float32 do not need it.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    callbacks = list(callbacks) if rank == 0 else []
    bar = _progress_bar(start_step, config.max_steps, progress and rank == 0)
    decay_end = config.decay_steps or config.max_steps
    start_time = time.perf_counter()
    runner.train()
    flops_per_token, peak_flops = _model_flops_per_token(model), _peak_flops(device, amp_dtype)
    # the steps since the last log: how many, how many were clipped, their seconds
    interval = {"steps": 0, "clipped": 0, "seconds": 0.0}

    def evaluate(step: int) -> None:
        scored = spread.evaluated
        train_loss = estimate_loss(scored, train_data, config, device, amp_dtype)
        val_loss = (estimate_loss(scored, val_data, config, device, amp_dtype)
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
            step_start = time.perf_counter()
            if config.schedule == "wsd":
                lr = lr_wsd_at(step, config.lr, config.warmup_steps, decay_end, config.min_lr,
                               config.warmdown_frac)
            else:
                lr = lr_at(step, config.lr, config.warmup_steps, decay_end, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(step_seed(config.seed, step, rank))  # this step's dropout masks
            step_loss = 0.0
            for micro in range(config.grad_accum_steps):
                x, y = batch_for_step(train_data, config, step, micro, device)
                # Gradients are averaged across processes after a backward; between the
                # micro-batches of one step that would be wasted traffic: only on the last.
                with spread.gradient_sync(micro == config.grad_accum_steps - 1):
                    with maybe_autocast(device, amp_dtype):
                        _, loss = runner(x, y)
                    # the mean over the micro-batches, not the sum, so lr means the same thing
                    # whatever grad_accum_steps is
                    scaler.scale(loss / config.grad_accum_steps).backward()
                step_loss += loss.item() / config.grad_accum_steps
            scaler.unscale_(optimizer)   # the true gradients, not the loss-scaled ones
            # The norm is measured every step, clipped or not (max_norm inf scales by 1): it
            # is the first thing to look at when a run goes wrong.
            norm = clip_grad_norm(spread.parameters, config.grad_clip or math.inf).item()
            if not scaler.is_enabled() and not math.isfinite(norm):
                raise FloatingPointError(
                    f"step {step}: the gradient norm is {norm}, so this update "
                    f"would break the weights; the run diverged (try a lower lr)")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            interval["steps"] += 1
            interval["clipped"] += int(config.grad_clip > 0 and norm > config.grad_clip)
            interval["seconds"] += time.perf_counter() - step_start

            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % config.log_interval == 0 or done == config.max_steps:
                tokens_per_s = interval["steps"] * config.tokens_per_step / interval["seconds"]
                # MFU per device: each process does 1/world of the tokens on its own device
                mfu = tokens_per_s / world_size() * flops_per_token / peak_flops
                logged = {"step": done, "loss": step_loss, "lr": lr, "grad_norm": norm,
                          "clipped": interval["clipped"] / interval["steps"],
                          "tokens_per_s": tokens_per_s, "mfu": mfu}
                for key, value in logged.items():
                    history[key].append(value)
                interval = {"steps": 0, "clipped": 0, "seconds": 0.0}
                _notify(callbacks, {"event": "train", **logged})
            if done % config.eval_interval == 0 or done == config.max_steps:
                evaluate(done)
            every = config.checkpoint_interval or config.eval_interval
            if checkpoint_path is not None and (done % every == 0 or done == config.max_steps):
                whole_model, whole_optimizer = spread.whole()   # every rank: it may gather
                if rank == 0:
                    save_checkpoint(checkpoint_path, whole_model, whole_optimizer, done,
                                    config, history, extra={"world_size": world_size()})
        if bar is not None:
            _close_progress_bar(bar)
    spread.gather_weights()   # FSDP: the trained weights into the whole `model`
    model.eval()
    _notify(callbacks, {"event": "end", "step": config.max_steps, "history": history})
    return TrainResult(model, history, config.max_steps, time.perf_counter() - start_time,
                       checkpoint_path, config)


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


def _model_flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token of a utils.model.GPT (chapter 05's count x 3), else nan."""
    from utils.model import GPTConfig, estimate_flops_per_token

    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig):
        return math.nan
    return float(estimate_flops_per_token(config, training=True))


_PEAKS: dict[tuple, float] = {}


def _peak_flops(device: torch.device, amp_dtype: torch.dtype | None) -> float:
    """The device's peak FLOP/s for the dtype the run multiplies in (utils.throughput): the
    datasheet's on a known GPU, else one measured matmul. Measured once per process (and
    per thread count)."""
    from utils.throughput import device_peak

    dtype = amp_dtype or torch.float32
    # a CPU's peak depends on how many threads torch uses (chapters train with one)
    key = (str(device), dtype) + ((torch.get_num_threads(),) if device.type == "cpu" else ())
    if key not in _PEAKS:
        # 1024 x 1024 on a CPU: a fraction of a second, close to what 2048 gives there
        _PEAKS[key] = device_peak(device, dtype, n=1024 if device.type == "cpu" else 4096)[0]
    return _PEAKS[key]


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The course's GPT (utils.model) with this run's shape, initialised from config.seed."""
    from utils.model import GPT, GPTConfig

    torch.manual_seed(config.seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=config.block_size,
                         n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                         dropout=config.dropout, bias=config.bias,
                         checkpoint_activations=config.checkpoint_activations))
