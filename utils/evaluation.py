"""Scoring a model on token ids: a quick estimate during training, the whole split at the end.

    estimate_loss(model, data, config)   mean loss over a fixed sample of random windows: cheap,
                                         what the trainer logs at every evaluation
    split_loss(model, data, block_size)  every token of the split scored once: the number to
                                         quote for a finished model
    text_bits_per_char(model, tok, text, block_size)   the same in bits per character, which
                                         compares models with different tokenizers

Both switch dropout off while they score and put the model back as it was. The trainer
(utils/trainer.py) calls the first; chapters and benchmarks report the second.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from utils.data import get_batch
from utils.train_config import TrainConfig


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
        with maybe_autocast(device, autocast):
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


@torch.no_grad()
def text_bits_per_char(model: nn.Module, tokenizer, text: str, block_size: int,
                       batch_size: int = 64, device: torch.device | str = "cpu") -> float:
    """Bits per character of `text` under `model`: the fair measure across tokenizers.

    A loss per token cannot compare a character model with a BPE one (a BPE token holds
    several characters, so it is harder to guess). The total information is comparable:
    `split_loss` scores every token once, and the total nats over the characters those
    tokens spell, divided by ln 2, is bits per character. For a character tokenizer it is
    simply split_loss / ln 2.
    """
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    nats_per_token = split_loss(model, ids, block_size, batch_size, device)
    scored = ids[1 : (len(ids) - 1) // block_size * block_size + 1]   # what split_loss scored
    characters = len(tokenizer.decode(scored.tolist()))
    return nats_per_token * len(scored) / characters / math.log(2)


def maybe_autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast in `dtype` on `device`, or nothing when dtype is None (plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
