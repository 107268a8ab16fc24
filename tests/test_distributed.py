"""The trainer under torchrun: two CPU processes (gloo) with each `--shard` (DDP, ZeRO-1,
FSDP2) must finish, end with identical weights on both ranks, and match one process that sees
the same global batch, weights and optimizer state (the checkpoint's) alike."""

import os
import subprocess
import sys

import pytest
import torch

from utils.paths import REPO_ROOT

# Each rank runs the real command-line entry point and saves the weights it ended with.
WORKER = """
import os, sys, torch
from utils.train import run_from_args
result = run_from_args(sys.argv[2:])
rank = int(os.environ.get("RANK", 0))
torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()},
           os.path.join(sys.argv[1], f"rank{rank}.pt"))
"""

FLAGS = ["--preset", "tiny", "--device", "cpu", "--max-steps", "6", "--eval-interval", "3",
         "--dropout", "0.0", "--no-progress"]


def _run(tmp_path, name, processes, batch_size, *flags, exist_ok=False):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / name
    out.mkdir(exist_ok=exist_ok)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable])
    run = subprocess.run(
        [*launch, str(script), str(out), *FLAGS, "--batch-size", str(batch_size),
         "--out-dir", str(out), *flags],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One process with the global batch of 8 windows: the run all the others must equal."""
    out, _ = _run(tmp_path_factory.mktemp("single"), "single", 1, 8)
    return out


def _state(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def assert_close(got, expected, what, atol=1e-5):
    assert got.keys() == expected.keys(), what
    for name, tensor in expected.items():
        if isinstance(tensor, dict):
            assert_close(got[name], tensor, f"{what} {name}", atol)
        else:
            assert torch.allclose(got[name], tensor, atol=atol, rtol=0), (
                f"{what} {name}: differs by {(got[name] - tensor).abs().max():.2e}")


@pytest.mark.parametrize("shard", ["none", "zero1", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, one_process,
                                                                    shard):
    out, stdout = _run(tmp_path, shard, 2, 4, "--shard", shard)
    assert "(2 process(es))" in stdout and stdout.count("done: 6 steps") == 1
    assert (out / "checkpoint.pt").exists() and (out / "model.safetensors").exists()

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    reference = torch.load(one_process / "rank0.pt", weights_only=True)
    for name in reference:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
    assert_close(rank0, reference, f"{shard}: final weights")
    # the checkpoint holds the whole model and the whole AdamW state, as one process saves it
    saved, expected = _state(out), _state(one_process)
    assert_close(saved["model"], expected["model"], f"{shard}: checkpoint weights")
    assert_close(saved["optimizer"]["state"], expected["optimizer"]["state"],
                 f"{shard}: checkpoint optimizer state")
    keys = ("params", "lr", "betas", "eps", "weight_decay")
    assert ([{k: g[k] for k in keys} for g in saved["optimizer"]["param_groups"]]
            == [{k: g[k] for k in keys} for g in expected["optimizer"]["param_groups"]])


@pytest.mark.parametrize("shard", ["zero1", "fsdp"])
def test_two_sharded_processes_resume_a_one_process_checkpoint(tmp_path, one_process, shard):
    # one process trains 3 of the 6 steps (same schedule), two processes resume it sharded:
    # each rank cuts its own pieces out of the whole checkpoint, and the end is the same
    half, _ = _run(tmp_path, "half", 1, 8, "--max-steps", "3", "--decay-steps", "6")
    out = tmp_path / shard
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((half / "checkpoint.pt").read_bytes())
    out, stdout = _run(tmp_path, shard, 2, 4, "--shard", shard, "--resume", exist_ok=True)
    assert "done: 6 steps" in stdout
    reference = torch.load(one_process / "rank0.pt", weights_only=True)
    for r in (0, 1):
        assert_close(torch.load(out / f"rank{r}.pt", weights_only=True), reference,
                     f"{shard} resumed, rank {r}")
    assert_close(_state(out)["optimizer"]["state"], _state(one_process)["optimizer"]["state"],
                 f"{shard} resumed: checkpoint optimizer state")


def test_the_comparison_can_fail(one_process):
    # negative control: the untouched model differs from the trained one, and a single
    # changed moment is caught (so the 1e-5 comparisons above compare something)
    from utils.train_config import preset
    from utils.trainer import build_model
    reference = torch.load(one_process / "rank0.pt", weights_only=True)
    untouched = build_model(preset("tiny"), vocab_size=reference["embed.token.weight"].shape[0])
    with pytest.raises(AssertionError):
        assert_close(untouched.state_dict(), reference, "untouched")
    expected = _state(one_process)["optimizer"]["state"]
    nudged = {i: dict(entry) for i, entry in expected.items()}
    nudged[0]["exp_avg"] = nudged[0]["exp_avg"] + 1e-4
    with pytest.raises(AssertionError):
        assert_close(nudged, expected, "nudged")
