"""The training loop: everything chapter 07 builds around `loss.backward()` (chapter 07).

One loop trains any model whose `forward(idx, targets)` returns `(logits, loss)`:

    for step in range(start, max_steps):
        lr = lr_at(step, ...)                       # warm-up, then cosine decay
        x, y = batch_for_step(step)                 # random windows, targets shifted by one
        loss = model(x, y)[1] / grad_accum_steps    # (several micro-batches per step)
        loss.backward()
        clip_grad_norm(..., grad_clip)              # utils.optim: one global norm
        optimizer.step(); optimizer.zero_grad()
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
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.data import get_batch
from utils.device import get_device
from utils.distributed import process_rank, world_size
from utils.optim import clip_grad_norm, lr_at
from utils.parallel import Parallel
from utils.train_config import TrainConfig

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
        _check_resumable(state, config, checkpoint_path)
        config = _resumed_schedule(state["train_config"], config, state["step"], rank)
        model.load_state_dict(state["model"])
        history, start_step = state["history"], state["step"]

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
                    with _autocast(device, amp_dtype):
                        _, loss = runner(x, y)
                    # the mean over the micro-batches, not the sum, so lr means the same thing
                    # whatever grad_accum_steps is
                    scaler.scale(loss / config.grad_accum_steps).backward()
                step_loss += loss.item() / config.grad_accum_steps
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)   # clip the true gradients, not the scaled ones
                norm = clip_grad_norm(spread.parameters, config.grad_clip)
                if not scaler.is_enabled() and not torch.isfinite(norm):
                    raise FloatingPointError(
                        f"step {step}: the gradient norm is {norm.item()}, so this update "
                        f"would break the weights; the run diverged (try a lower lr)")
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


# Fields that may change between a run and its resumption. All but two leave what each step
# computes as it was (a checkpoint holds the whole state, whichever `shard` wrote it);
# max_steps and decay_steps move where the cosine ends, so `_resumed_schedule` keeps the
# saved decay length unless decay_steps asks for a new one.
_RESUME_MAY_DIFFER = {"max_steps", "decay_steps", "eval_interval", "eval_batches",
                      "log_interval", "checkpoint_interval", "device", "compile", "shard"}


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
    may_differ = set(_RESUME_MAY_DIFFER)
    # Another number of processes may resume a run if the global batch is the same: every
    # step's windows are drawn as one global batch (batch_for_step), however it is split.
    saved_world = state.get("extra", {}).get("world_size", 1)
    rows = saved.get("batch_size", 0) * saved.get("grad_accum_steps", 1) * saved_world
    if rows == config.batch_size * config.grad_accum_steps * world_size():
        may_differ |= {"batch_size", "grad_accum_steps"}
    differ = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in asdict(config).items()
              if k in saved and k not in may_differ and saved[k] != v]
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


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The course's GPT (utils.model) with this run's shape, initialised from config.seed."""
    from utils.model import GPT, GPTConfig

    torch.manual_seed(config.seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=config.block_size,
                         n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                         dropout=config.dropout, bias=config.bias))
