"""ZeRO stage 1 written out: AdamW whose moments are split across the processes (chapter 07).

Under DDP every process holds the whole model, the whole gradient and the whole AdamW state:
per parameter 4 bytes of float32 weight, 4 of gradient and 8 of moments (exp_avg and
exp_avg_sq). The moments are half of it, and no process needs all of them: AdamW is
elementwise, so entry i of the update reads only entry i of the weight, the gradient and the
two moments. ZeRO-1 (Rajbhandari et al., 2020) therefore cuts the parameters, laid end to end
as one long vector, into N equal slices, one per process, and each step:

    1. gradients are averaged over the processes exactly as in DDP (every rank has all of them)
    2. each rank updates only its own slice, with the moments of that slice only
    3. all-gather: every rank sends its updated slice to all the others, so all of them hold
       the whole new model again

The moments then cost 8/N bytes per parameter instead of 8, and the update is the same
arithmetic on the same numbers, so training matches the unsharded run
(tests/test_zero.py checks it under torchrun). `torch.distributed.optim.ZeroRedundancyOptimizer`
is PyTorch's version of the same idea.

>>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.full((3,), 0.5)
>>> ShardedAdamW([w], lr=0.1, weight_decay=0.0).step()   # one process: one slice, all of it
>>> [round(x, 4) for x in w.tolist()]
[0.9, 0.9, 0.9]
"""

from __future__ import annotations

import math

import torch

from utils.distributed import process_rank, world_size
from utils.optim import adamw_step


def _piece(tensors: list[torch.Tensor], start: int, size: int) -> torch.Tensor:
    """Entries start .. start + size of the tensors laid end to end, zero-padded past the
    end: one rank's slice, cut out without building the whole long vector."""
    parts, offset = [], 0
    for t in tensors:
        lo, hi = max(start, offset), min(start + size, offset + t.numel())
        if lo < hi:   # this tensor overlaps the slice
            parts.append(t.detach().reshape(-1)[lo - offset:hi - offset])
        offset += t.numel()
    piece = torch.cat(parts) if parts else tensors[0].new_zeros(0)
    return torch.nn.functional.pad(piece, (0, size - piece.numel()))


def _gather(piece: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's `piece`, in rank order, on every rank (the all-gather of step 3)."""
    if world == 1:
        return piece
    whole = piece.new_empty(world * piece.numel())
    torch.distributed.all_gather_into_tensor(whole, piece.contiguous())
    return whole


class ShardedAdamW(torch.optim.Optimizer):
    """AdamW (`utils.optim.adamw_step`) where each rank keeps and updates one slice.

    Each parameter group is laid end to end on its own, so lr, betas and weight decay stay
    per group. The all-gather lands in a temporary vector as long as the group (4 bytes per
    parameter, freed after the step); production versions keep the weights as views of one
    such buffer all along and need no copy, at the price of owning the model's storage.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.rank, self.world = process_rank(), world_size()
        self.slices = []   # per group: this rank's moments and the step count
        for group in self.param_groups:
            numel = sum(p.numel() for p in group["params"])
            size = math.ceil(numel / self.world)          # every rank gets the same length
            like = group["params"][0] if group["params"] else torch.empty(0)
            self.slices.append({"step": 0, "size": size,
                                "exp_avg": like.new_zeros(size, dtype=torch.float32),
                                "exp_avg_sq": like.new_zeros(size, dtype=torch.float32)})
        self._whole_state = None   # filled by consolidate_state_dict()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        self._whole_state = None   # a consolidated state is out of date after a step
        for group, mine in zip(self.param_groups, self.slices, strict=True):
            params = group["params"]
            with_grad = [p.grad is not None for p in params]
            if not any(with_grad):
                continue
            if not all(with_grad):   # a slice spans many tensors: they must step together
                raise ValueError("ShardedAdamW updates a group's parameters together; some "
                                 "have a gradient and some do not")
            start, size = self.rank * mine["size"], mine["size"]
            mine["step"] += 1
            new_slice, mine["exp_avg"], mine["exp_avg_sq"] = adamw_step(
                _piece(params, start, size), _piece([p.grad for p in params], start, size),
                mine["exp_avg"], mine["exp_avg_sq"], mine["step"], group["lr"],
                group["betas"], group["eps"], group["weight_decay"])
            whole = _gather(new_slice, self.world)   # everyone's updated slice, everywhere
            offset = 0
            for p in params:
                p.copy_(whole[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        return loss

    # A checkpoint holds the state in torch.optim.AdamW's own format (moments per parameter),
    # so a run saved under ZeRO-1 resumes in one process, and the other way round.

    def consolidate_state_dict(self) -> None:
        """Gather every rank's moments so that state_dict() can return the whole state.

        A collective: every rank must call it (the trainer does, before rank 0 saves)."""
        state, groups, index = {}, [], 0
        for group, mine in zip(self.param_groups, self.slices, strict=True):
            exp_avg = _gather(mine["exp_avg"], self.world)
            exp_avg_sq = _gather(mine["exp_avg_sq"], self.world)
            offset, ids = 0, []
            for p in group["params"]:
                n = p.numel()
                if mine["step"]:   # torch.optim.AdamW has no entry for a parameter never updated
                    state[index] = {"step": torch.tensor(float(mine["step"])),
                                    "exp_avg": exp_avg[offset:offset + n].view_as(p).clone(),
                                    "exp_avg_sq": exp_avg_sq[offset:offset + n].view_as(p).clone()}
                ids.append(index)
                offset, index = offset + n, index + 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        self._whole_state = {"state": state, "param_groups": groups}

    def state_dict(self) -> dict:
        """The whole state, as torch.optim.AdamW.state_dict() would give it."""
        if self._whole_state is None:
            if self.world > 1:   # gathering here, on rank 0 alone, would wait forever
                raise RuntimeError("call consolidate_state_dict() on every rank first")
            self.consolidate_state_dict()
        return self._whole_state

    def load_state_dict(self, state_dict: dict) -> None:
        """Take this rank's slice of a whole state (ours or torch.optim.AdamW's)."""
        saved_groups, saved = state_dict["param_groups"], state_dict["state"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"])
                                                        for g in self.param_groups]:
            raise ValueError("the saved optimizer state has different parameter groups")
        for group, saved_group, mine in zip(self.param_groups, saved_groups, self.slices,
                                            strict=True):
            group.update({k: saved_group[k] for k in ("lr", "betas", "eps", "weight_decay")})
            entries = [saved.get(i) for i in saved_group["params"]]
            if not any(entries):
                continue
            start = self.rank * mine["size"]
            mine["step"] = int(next(e for e in entries if e)["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                moments = [e[key].to(p.device) if e else torch.zeros_like(p)
                           for e, p in zip(entries, group["params"], strict=True)]
                mine[key] = _piece(moments, start, mine["size"]).float().clone()
        self._whole_state = None
