"""Which process am I, and how many are there? (chapter 07)

Under `torchrun` every process runs the same script; torch.distributed tells each one its rank
(0, 1, ...) and the world size. Outside torchrun there is one process: rank 0 of a world of 1.
The trainer, its configs and the sharded optimizers ask these two questions, so they live here.
"""

from __future__ import annotations

import torch


def world_size() -> int:
    """How many processes train together (1 unless torch.distributed is initialised)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_rank() -> int:
    """This process's number, 0 to world_size() - 1 (0 unless torch.distributed is initialised)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
