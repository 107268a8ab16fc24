"""Resuming a run from its checkpoint: which settings may change, and the schedule it goes on with.

A checkpoint (utils/checkpoints.py) holds the weights, the optimizer state, the step and the
TrainConfig it was trained with. `utils.trainer.train(..., resume=True)` calls
`check_resumable` (refuse a checkpoint trained with other settings, saying which) and then
`resumed_schedule` (where the learning-rate decay ends now).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

from utils.distributed import world_size
from utils.optim import lr_at
from utils.train_config import TrainConfig

# Fields that may change between a run and its resumption. All but two leave what each step
# computes as it was (a checkpoint holds the whole state, whichever `shard` wrote it);
# max_steps and decay_steps move where the cosine ends, so `resumed_schedule` keeps the
# saved decay length unless decay_steps asks for a new one.
RESUME_MAY_DIFFER = {"max_steps", "decay_steps", "eval_interval", "eval_batches",
                     "log_interval", "checkpoint_interval", "device", "compile", "shard",
                     "checkpoint_activations"}


def resumed_schedule(saved: dict[str, Any], config: TrainConfig, step: int,
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


def check_resumable(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = state["train_config"]
    may_differ = set(RESUME_MAY_DIFFER)
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
