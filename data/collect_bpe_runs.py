"""Collect the long BPE training runs of chapter 11 into data/bpe_runs.json.

The shipped model (`data/checkpoints/shakespeare-bpe`) is one of several runs of the same
recipe, and the chapter shows all of them, since the longest one over-fits. This script
reads each run's record (`model.json`, written by `python -m utils.train`) from runs/train/
and keeps what the chapter plots: the command, steps, tokens per step, seconds, the
validation estimates (nats per token, every 250 steps), characters per token and bits per
character on the whole held-out play. The runs themselves (run with
`OMP_NUM_THREADS=1 nice -n 5`, on the 2-core machine of data/README.md, two at a time):

    python -m utils.train --preset shakespeare-char --bpe-vocab 2048
    python -m utils.train --preset shakespeare-char --bpe-vocab 2048 --max-steps 1000
    python -m utils.train --preset shakespeare-char --bpe-vocab 2048 --max-steps 1200 --dropout 0.1 \\
        --out-dir runs/train/shakespeare-char_bpe2048_L6_d128_T128_s1200_drop0.1

    python data/collect_bpe_runs.py
"""

from __future__ import annotations

import json
import sys

from utils.paths import DATA_DIR, RUNS_DIR

RUNS = ("shakespeare-char_bpe2048_L6_d128_T128_s2000", "shakespeare-char_bpe2048_L6_d128_T128_s1000",
        "shakespeare-char_bpe2048_L6_d128_T128_s1200_drop0.1")
OUT = DATA_DIR / "bpe_runs.json"


def main() -> int:
    runs = []
    for name in RUNS:
        path = RUNS_DIR / "train" / name / "model.json"
        if not path.exists():
            print(f"skipped {name}: no {path.name} (not run, or not finished)", file=sys.stderr)
            continue
        record = json.loads(path.read_text())
        history = record["history"]
        runs.append({"name": name, "command": record["command"], "steps": record["steps"],
                     "tokens_per_step": record["tokens_per_step"],
                     "dropout": record["train_config"]["dropout"],
                     "seconds": record["seconds_this_session"],
                     "eval_step": history["eval_step"], "val": history["val"],
                     "train": history["train"], "chars_per_token": record["chars_per_token"],
                     "val_bits_per_char": record["val_bits_per_char"]})
    OUT.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    for run in runs:
        print(f"{run['name']}: {run['steps']} steps, {run['val_bits_per_char']:.4f} bits/char")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
