"""How the trainer spreads one model over several processes: DDP, ZeRO-1 or FSDP (chapter 07).

`TrainConfig.shard` picks what each of the N processes (one per GPU) keeps:

    none    DDP: the whole model, its gradients and AdamW's moments on every process; after
            each backward the gradients are averaged (an all-reduce), then every process
            takes the same step
    zero1   DDP's gradients, but AdamW's moments split N ways (utils.zero.ShardedAdamW):
            each process updates its slice of the weights, then all-gathers the rest
    fsdp    FSDP2 (torch.distributed.fsdp.fully_shard): weights, gradients and moments all
            split N ways; each block's weights are gathered just before the block runs and
            freed after it, so no process ever holds the whole model on its GPU

`TrainConfig.optimizer` = "muon" (utils/muon.py) is for `none` only: Muon orthogonalises each
whole weight matrix, which ZeRO-1 and FSDP cut into pieces across the processes.

Each is the same arithmetic on the same global batch, so all three train the model one
process would (tests/test_distributed.py checks it to 1e-5). Whichever runs, a checkpoint
holds the whole model and the whole optimizer state as one process would save them
(`Parallel.whole`), so it loads, and resumes, under any other choice.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from utils.distributed import world_size
from utils.muon import configure_muon
from utils.optim import configure_adamw, param_groups
from utils.zero import ShardedAdamW


class Parallel:
    """The module the loop calls (`runner`), the optimizer, and what they keep, for one
    run of `world_size()` processes (a single process trains its `model` directly).

    Under FSDP the shards live in a copy of `model`: `model` itself stays whole on the CPU
    (4 bytes per parameter of host memory), and `whole()` / `gather_weights()` copy the
    trained weights back into it for checkpoints and for the caller.
    """

    def __init__(self, model: nn.Module, config, device: torch.device):
        self.model, self.world = model, world_size()
        self.kind = config.shard if (self.world > 1 or config.shard == "zero1") else "none"
        lr, betas, wd = config.lr, (config.beta1, config.beta2), config.weight_decay
        self.sharded = None
        if self.kind == "fsdp":
            self.sharded = _fully_shard(copy.deepcopy(model.cpu()), device, self.world)
            self.optimizer = torch.optim.AdamW(param_groups(self.sharded, wd), lr=lr,
                                               betas=betas)
            self.runner = self.sharded
        else:
            model.to(device)
            self.runner = model
            if self.kind == "zero1":
                self.optimizer = ShardedAdamW(param_groups(model, wd), lr=lr, betas=betas)
            elif config.optimizer == "muon":   # TrainConfig allows it with DDP only
                self.optimizer = configure_muon(model, lr, wd, betas, device_type=device.type)
            else:
                self.optimizer = configure_adamw(model, lr, wd, betas, device_type=device.type)
        if config.compile:
            self.runner = torch.compile(self.runner)
        if self.world > 1 and self.kind != "fsdp":
            from torch.nn.parallel import DistributedDataParallel
            self.runner = DistributedDataParallel(
                self.runner, device_ids=[device.index] if device.type == "cuda" else None)
        # what clipping adds up, in the model's order (a sum in another order rounds
        # differently): the tensors this process updates, FSDP's pieces under FSDP
        self.parameters = list((model if self.sharded is None else self.sharded).parameters())

    @property
    def evaluated(self) -> nn.Module:
        """The module to score (no gradients, no syncing): FSDP's shards, else `model`."""
        return self.sharded if self.sharded is not None else self.model

    def gradient_sync(self, on: bool):
        """A context for one micro-batch's backward: average the gradients across the
        processes (on), or keep adding them up locally (off), which saves the traffic
        between the micro-batches of one step."""
        if self.sharded is not None:
            self.sharded.set_requires_gradient_sync(on)
        if on or self.world == 1 or self.kind == "fsdp":
            return contextlib.nullcontext()
        return self.runner.no_sync()

    def load_optimizer_state(self, state: dict) -> None:
        """Resume from a whole optimizer state (any `shard` may have written it)."""
        if self.sharded is not None:   # cut each whole moment into this process's piece
            from torch.distributed.tensor import distribute_tensor
            params = [p for g in self.optimizer.param_groups for p in g["params"]]  # ids' order
            pieces = {}
            for i, entry in state["state"].items():
                p = params[i]
                pieces[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                             if k != "step" else v for k, v in entry.items()}
            state = {**state, "state": pieces}
        self.optimizer.load_state_dict(state)

    def whole(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model and an optimizer whose state_dict() is the whole state, for a checkpoint.

        A collective under zero1 and fsdp: every process calls it, then rank 0 saves."""
        if isinstance(self.optimizer, ShardedAdamW):
            self.optimizer.consolidate_state_dict()
        if self.sharded is None:
            return self.model, self.optimizer
        self.gather_weights()
        state = self.optimizer.state_dict()   # AdamW's format; its moments are DTensor pieces
        state["state"] = {i: {k: v.full_tensor().cpu() if k != "step" else v
                              for k, v in entry.items()} for i, entry in state["state"].items()}
        whole = torch.optim.AdamW(param_groups(self.model, 0.0))  # groups as one process has
        whole.load_state_dict(state)          # (and the saved lr, betas, weight decay)
        return self.model, whole

    @torch.no_grad()
    def gather_weights(self) -> None:
        """FSDP: copy the trained weights, piece by piece, into the whole `model` (every rank)."""
        if self.sharded is not None:
            # after a forward without backward (an evaluation) FSDP keeps the outermost
            # unit's weights gathered, expecting a backward; put them back in pieces first
            self.sharded.reshard()
            for whole, piece in zip(self.model.parameters(), self.sharded.parameters(),
                                    strict=True):
                whole.copy_(piece.full_tensor())


def _fully_shard(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """FSDP2 on each block, then on the rest (embeddings, final norm, output layer).

    Each `fully_shard` call makes one unit whose weights are gathered together: a block at a
    time, so the whole model never sits on one GPU. A model without `.blocks` becomes one
    unit (gradients and moments still split; its weights gathered all at once)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))
    for block in getattr(model, "blocks", ()):
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)
