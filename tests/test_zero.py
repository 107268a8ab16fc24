"""ZeRO-1 from scratch (utils/zero.py): one process gives torch.optim.AdamW's steps, its state
is AdamW's format both ways, and under torchrun each of two ranks keeps half the moments yet
both end with the weights and (gathered) moments of one unsharded process."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from utils.optim import param_groups
from utils.paths import REPO_ROOT
from utils.zero import ShardedAdamW


def _model(seed=0):
    torch.manual_seed(seed)
    # groups of 56 matrix entries and 21 vector entries: 21 does not split evenly in two
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3, bias=False))


def _steps(model, optimizer, steps, start=0):
    for s in range(start, start + steps):
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(s))
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


def _assert_same(a, b, atol=1e-6):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=atol, rtol=0), (p - q).abs().max()


def _pair(lr=1e-2):
    ours, theirs = _model(), _model()
    return (ours, ShardedAdamW(param_groups(ours, 0.3), lr=lr, betas=(0.9, 0.95)),
            theirs, torch.optim.AdamW(param_groups(theirs, 0.3), lr=1e-2, betas=(0.9, 0.95)))


def test_one_process_takes_torch_adamws_steps():
    ours, opt, theirs, ref = _pair()
    _steps(ours, opt, 10)
    _steps(theirs, ref, 10)
    _assert_same(ours, theirs)


def test_the_comparison_rejects_a_different_learning_rate():
    ours, opt, theirs, ref = _pair(lr=1.1e-2)   # negative control
    _steps(ours, opt, 10)
    _steps(theirs, ref, 10)
    with pytest.raises(AssertionError):
        _assert_same(ours, theirs)


def test_state_dict_is_adamws_format_in_both_directions():
    ours, opt, theirs, ref = _pair()
    _steps(ours, opt, 4)
    _steps(theirs, ref, 4)
    saved, expected = opt.state_dict(), ref.state_dict()
    assert saved["state"].keys() == expected["state"].keys()
    for i, entry in expected["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.allclose(saved["state"][i][key], entry[key], atol=1e-6), (i, key)
    # ours -> torch's, torch's -> ours: both go on exactly as the unsharded run
    moved = _model()
    moved.load_state_dict(ours.state_dict())
    moved_opt = torch.optim.AdamW(param_groups(moved, 0.0))
    moved_opt.load_state_dict(saved)
    back = _model()
    back.load_state_dict(theirs.state_dict())
    back_opt = ShardedAdamW(param_groups(back, 0.0))
    back_opt.load_state_dict(expected)
    for model, optimizer in ((moved, moved_opt), (back, back_opt), (theirs, ref)):
        _steps(model, optimizer, 4, start=4)
    _assert_same(moved, theirs)
    _assert_same(back, theirs)


def test_a_group_where_only_some_parameters_have_gradients_is_refused():
    model = _model()
    opt = ShardedAdamW(param_groups(model, 0.1))
    model(torch.randn(2, 5)).sum().backward()
    model[2].weight.grad = None
    with pytest.raises(ValueError, match="together"):
        opt.step()


def test_mismatched_parameter_groups_are_refused():
    opt = ShardedAdamW(param_groups(_model(), 0.1))
    with pytest.raises(ValueError, match="groups"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0]}]})


# Two ranks average their gradients by hand (what DDP does), step ShardedAdamW, and save what
# they hold; the test compares with one process that sees both ranks' rows.
WORKER = """
import os, sys, torch
import torch.distributed as dist
from torch import nn
from utils.optim import param_groups
from utils.zero import ShardedAdamW
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3, bias=False))
opt = ShardedAdamW(param_groups(model, 0.3), lr=1e-2, betas=(0.9, 0.95))
for s in range(8):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(s))[rank * 4:(rank + 1) * 4]
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    opt.step()
opt.consolidate_state_dict()
torch.save({"weights": model.state_dict(), "state": opt.state_dict(),
            "held": [m["exp_avg"].numel() for m in opt.slices]},
           os.path.join(sys.argv[1], f"rank{rank}.pt"))
dist.destroy_process_group()
"""


def test_two_ranks_hold_half_the_moments_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    model = _model()
    reference = torch.optim.AdamW(param_groups(model, 0.3), lr=1e-2, betas=(0.9, 0.95))
    _steps(model, reference, 8)
    groups = param_groups(model, 0.3)
    sizes = [sum(p.numel() for p in g["params"]) for g in groups]
    expected_state = reference.state_dict()["state"]
    for held in ranks:
        assert sizes == [56, 21] and held["held"] == [28, 11]   # half each, 21 padded to 22
        for name, tensor in model.state_dict().items():
            assert torch.equal(held["weights"][name], ranks[0]["weights"][name]), name
            assert torch.allclose(held["weights"][name], tensor, atol=1e-5, rtol=0), name
        for i, entry in expected_state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(held["state"]["state"][i][key], entry[key], atol=1e-6)
    assert not torch.allclose(ranks[0]["weights"]["0.weight"], _model()[0].weight)  # it trained
