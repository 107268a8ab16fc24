"""The trainer under torchrun: two CPU processes (gloo) must finish, end with identical
parameters on both ranks, and match one process that sees the same global batch."""

import os
import subprocess
import sys

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


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(ddp_dir), *FLAGS, "--batch-size", "4", "--out-dir", str(ddp_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "(2 process(es))" in run.stdout and run.stdout.count("done: 6 steps") == 1
    assert (ddp_dir / "checkpoint.pt").exists() and (ddp_dir / "model.safetensors").exists()

    single = subprocess.run(
        [sys.executable, str(script), str(single_dir), *FLAGS, "--batch-size", "8",
         "--out-dir", str(single_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]

    rank0, rank1 = (torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    reference = torch.load(single_dir / "rank0.pt", weights_only=True)
    initial_moved = False
    for name, tensor in reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
        assert torch.allclose(rank0[name], tensor, atol=1e-5, rtol=0), (
            f"{name}: DDP and single process differ by {(rank0[name] - tensor).abs().max():.2e}")
    # and training did something (the comparison is not between two untouched models)
    from utils.train_config import preset
    from utils.trainer import build_model
    untouched = build_model(preset("tiny"), vocab_size=reference["embed.token.weight"].shape[0])
    for name, tensor in untouched.state_dict().items():
        initial_moved |= not torch.allclose(tensor, reference[name])
    assert initial_moved
