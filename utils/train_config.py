"""The trainer's settings: TrainConfig, and named presets of it (chapter 07).

A TrainConfig holds everything a run needs besides the data: the model's shape, the
optimisation, evaluation and checkpoints, and the machine. Every field carries its own help
text, which `python -m utils.train --help` shows as a flag. A preset is a named TrainConfig
that may differ by device type, so the same command trains a bigger model on a GPU.

    config = preset("shakespeare-char", device, max_steps=500)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from utils.distributed import world_size


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
    optimizer: str = _flag("adamw", "adamw, or muon: Muon for the blocks' matrices and AdamW "
                                    "for the rest, at the same lr (utils.muon.configure_muon)")
    schedule: str = _flag("cosine", "cosine: warm-up, then cosine decay to min_lr; wsd: "
                                    "warm-up, lr held, then a straight line to min_lr over "
                                    "the last warmdown_frac of the steps (utils.optim)")
    warmdown_frac: float = _flag(0.2, "wsd only: the fraction of the steps spent decaying")
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
    checkpoint_activations: bool = _flag(False, "recompute each block in the backward pass "
                                                "instead of storing its activations: less "
                                                "memory, about a third more time")
    shard: str = _flag("none", "how several torchrun processes split the model: none (DDP: "
                               "each holds everything), zero1 (AdamW moments split, "
                               "utils.zero), fsdp (weights, gradients and moments split, "
                               "FSDP2); see utils.parallel")
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
        if self.shard not in ("none", "zero1", "fsdp"):
            raise ValueError(f"TrainConfig.shard must be none, zero1 or fsdp, got {self.shard!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"TrainConfig.optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.optimizer == "muon" and self.shard != "none":
            raise ValueError(f"optimizer='muon' works with shard='none' (DDP) only: Muon "
                             f"orthogonalises each whole matrix, which shard={self.shard!r} "
                             f"splits across processes")
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"TrainConfig.schedule must be cosine or wsd, got {self.schedule!r}")
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ValueError(f"TrainConfig.warmdown_frac must be in [0, 1], "
                             f"got {self.warmdown_frac}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"TrainConfig.dtype must be auto, float32, bfloat16 or float16, "
                             f"got {self.dtype!r}")

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step, summed over every process."""
        return self.batch_size * self.grad_accum_steps * self.block_size * world_size()



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
