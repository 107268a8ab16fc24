"""Precompute the ablation ladder and head-to-heads of `utils/ablation.py` into data/ablations.json.

Every arm (the seven rungs of the ladder, and the four alternatives to the course GPT) trains
for the same number of steps, on the same batches for a given seed, once per seed; the file
records each run's loss on the whole validation split (the last 10 % of the corpus: the end of
A Midsummer Night's Dream and all of Twelfth Night, which no run trains on).

    OMP_NUM_THREADS=1 nice -n 5 python data/build_ablations.py           # ~10 CPU-minutes
    OMP_NUM_THREADS=1 nice -n 5 python data/build_ablations.py --force   # redo every run

The file is a cache: each arm carries a key made of its spec and the training settings
(`utils.ablation.arm_key`, steps included), and a rerun trains only the (arm, seed) runs the
file lacks under the current key; each arm's "built" says when and where its newest run was
trained. The file is rewritten after every arm, so an interrupted build carries on where it
stopped. Budgets are steps, never seconds.

Also recorded, for the init head-to-head: the residual stream's standard deviation after each
block at initialisation of a deeper GPT (12 blocks, same width), with GPT-2's 1/sqrt(2 L)
scaling of the residual projections and without it (`residual_stream_std_deep_init`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from anywhere

from utils import ablation  # noqa: E402
from utils.device import machine_description  # noqa: E402
from utils.model import GPT, GPTConfig  # noqa: E402
from utils.paths import write_text_atomic  # noqa: E402

DEEP_LAYERS = 12


def deep_init_std(val_ids: torch.Tensor, vocab_size: int) -> dict:
    """The residual stream's std per layer of a 12-block GPT at init, scaled and plain."""
    t = ablation.TRAINING
    config = GPTConfig(vocab_size=vocab_size, block_size=t["block_size"], n_layer=DEEP_LAYERS,
                       n_head=t["n_head"], n_embd=t["n_embd"], bias=t["bias"])
    probe = val_ids[: 8 * t["block_size"]].view(8, t["block_size"])
    out = {}
    for label, plain in (("scaled (GPT-2)", False), ("plain", True)):
        torch.manual_seed(0)
        model = GPT(config)
        out[label] = ablation.residual_stream_std(ablation.plain_init_(model) if plain else model,
                                                  probe)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="retrain every run, cached or not")
    parser.add_argument("--out", type=Path, default=ablation.RESULTS_PATH)
    args = parser.parse_args()

    train_ids, val_ids, vocab_size = ablation.ablation_data()
    old = json.loads(args.out.read_text()) if args.out.exists() and not args.force else {}
    settings = {**ablation.settings_record(),
                "train_config": {k: v for k, v in
                                 dataclasses.asdict(ablation.training_config(0)).items()
                                 if k != "seed"},
                "vocab_size": vocab_size, "train_tokens": len(train_ids),
                "val_tokens": len(val_ids),
                "tokens_per_run": ablation.TRAINING["max_steps"] * ablation.TRAINING["batch_size"]
                * ablation.TRAINING["block_size"]}
    record = {
        "what": "what each piece of a GPT buys: validation loss after the same number of steps "
                "for each rung of the ladder and each head-to-head arm, several seeds",
        "command": ("OMP_NUM_THREADS=1 nice -n 5 python data/build_ablations.py "
                    + " ".join(sys.argv[1:])).strip(),
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "torch": torch.__version__,
        "threads": 1,
        "settings": settings,
        "validation": "utils.trainer.split_loss over the whole validation split (the last 10 % "
                      "of data/shakespeare.txt), consecutive windows of block_size",
        "ladder": list(ablation.LADDER),
        "head_to_heads": {q: list(pair) for q, pair in ablation.HEAD_TO_HEADS.items()},
        "residual_stream_std_deep_init": deep_init_std(val_ids, vocab_size),
        "arms": {},
    }
    started, trained = time.perf_counter(), 0
    for name, spec in ablation.ARMS.items():
        key = ablation.arm_key(name)
        cached = old.get("arms", {}).get(name, {})
        reuse = cached.get("key") == key
        runs = dict(cached["runs"]) if reuse else {}
        built = cached.get("built") if reuse else None
        for seed in ablation.SEEDS:
            if str(seed) in runs:
                continue
            runs[str(seed)] = ablation.train_arm(name, seed)
            trained += 1
            built = {"date": record["date"], "machine": record["machine"],
                     "torch": record["torch"]}
            print(f"{name:<22} seed {seed}: val {runs[str(seed)]['val']:.4f}  "
                  f"({runs[str(seed)]['seconds']:.0f} s)", flush=True)
        params, flops = ablation.arm_cost(name, vocab_size)
        losses = [runs[str(seed)]["val"] for seed in ablation.SEEDS]
        record["arms"][name] = {
            "key": key, "spec": spec, "built": built, "params": params, "flops_per_token": flops,
            "mean": round(statistics.fmean(losses), 6), "std": round(statistics.stdev(losses), 6),
            "runs": {str(seed): runs[str(seed)] for seed in ablation.SEEDS}}
        record["seconds_of_training"] = round(sum(
            run["seconds"] for arm in record["arms"].values() for run in arm["runs"].values()))
        write_text_atomic(args.out, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"trained {trained} runs in {time.perf_counter() - started:.0f} s; wrote {args.out}")
    print(ablation.ladder_table(record))
    print(ablation.head_to_head_table(record))


if __name__ == "__main__":
    main()
