"""Training on a budget: nanoGPT's CPU "baby" settings against the course's default, side by side.

    python bench/bench_train.py                     # CPU (about 2x the baby run's time)
    python bench/bench_train.py --device cuda       # GPU: the cuda preset for a fixed step count

CPU: first the baby run (4 layers, 4 heads, width 128, block 64, batch 12, 2000 iterations,
lr 1e-3 with warm-up and cosine to 1e-4, no dropout) on data/shakespeare.txt, timed; then a
course preset (`--ours`, default `shakespeare-char-fast`, the recipe for a few CPU minutes) for
the SAME wall time: short probes of both recipes, back to back, give the ratio of their seconds
per step, and ours gets the baby run's step count times that ratio (so a change in the machine's
load between the two runs does not shift the budget; the schedule is fitted to it). Both report
the validation loss over the whole held-out split (`utils.trainer.split_loss`) and the wall time.
Prints a markdown table. `--ours shakespeare-char` races the hour-long recipe of the shipped
checkpoint instead.

GPU: trains the `--ours` preset's CUDA settings (default `shakespeare-char`) for `--gpu-steps`
steps and reports time, tokens per second and validation loss.
"""

from __future__ import annotations

import argparse

import torch

from utils.data import load_corpus, train_val_split
from utils.device import get_device, machine_description
from utils.timing import stopwatch
from utils.tokenizers import CharTokenizer
from utils.train_config import preset
from utils.trainer import build_model, split_loss, train


def run(name: str, config, train_ids, val_ids, vocab_size: int, device) -> dict:
    model = build_model(config, vocab_size)
    with stopwatch(device) as watch:
        result = train(model, train_ids, val_ids, config, progress=False)
    seconds = watch.seconds
    val = split_loss(result.model, val_ids, config.block_size, device=device)
    return {"name": name, "steps": config.max_steps, "seconds": seconds,
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": config.max_steps * config.tokens_per_step,
            "train_est": result.final_train_loss, "val_est": result.final_val_loss, "val": val}


def seconds_per_step(config, train_ids, vocab_size: int, device, probe_steps: int = 15) -> float:
    probe = preset_like(config, max_steps=probe_steps, warmup_steps=1,
                        eval_interval=probe_steps * 10)
    model = build_model(probe, vocab_size)
    train(model, train_ids[:200_000], None, preset_like(probe, max_steps=3), progress=False)
    with stopwatch(device) as watch:
        train(model, train_ids, None, probe, progress=False)
    return watch.seconds / probe_steps


def preset_like(config, **changes):
    from dataclasses import replace
    return replace(config, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--ours", default=None,
                        help="the course preset to compare (default: shakespeare-char-fast on a "
                             "CPU, shakespeare-char on a GPU; shakespeare-char is the hour-long "
                             "recipe of the shipped checkpoint)")
    parser.add_argument("--baby-steps", type=int, default=2000,
                        help="iterations of the baby run (nanoGPT's: 2000)")
    parser.add_argument("--gpu-steps", type=int, default=2000)
    args = parser.parse_args()
    device = get_device(args.device)
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    print(f"machine: {machine_description()}, torch {torch.__version__}, device {device}")
    if args.ours is None:    # the fast preset has no GPU settings; a GPU runs the full recipe
        args.ours = "shakespeare-char" if device.type == "cuda" else "shakespeare-char-fast"

    if device.type == "cuda":
        config = preset(args.ours, device, max_steps=args.gpu_steps)
        row = run(args.ours, config, train_ids, val_ids, tokenizer.vocab_size, device)
        print("| run | params | steps | wall s | tokens/s | val loss (whole split) |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| {args.ours} (cuda) | {row['params']:,} | {row['steps']} | {row['seconds']:.0f} | "
              f"{row['tokens'] / row['seconds']:,.0f} | {row['val']:.4f} |")
        return

    baby = preset("baby", device, max_steps=args.baby_steps, eval_interval=args.baby_steps)
    rows = [run("nanoGPT baby", baby, train_ids, val_ids, tokenizer.vocab_size, device)]
    print(f"baby: {rows[0]['seconds']:.0f} s, val {rows[0]['val']:.4f}", flush=True)

    # The same wall time as the baby run, measured so that other jobs on the machine cancel
    # out: both recipes are probed back to back (twice, interleaved), and ours gets the baby
    # run's steps times the ratio of their seconds per step.
    ours = preset(args.ours, device)
    baby_probe, ours_probe = 0.0, 0.0
    for _ in range(2):
        baby_probe += seconds_per_step(baby, train_ids, tokenizer.vocab_size, device)
        ours_probe += seconds_per_step(ours, train_ids, tokenizer.vocab_size, device)
    steps = max(20, int(baby.max_steps * baby_probe / ours_probe))
    ours = preset_like(ours, max_steps=steps, warmup_steps=min(ours.warmup_steps, steps // 10),
                       eval_interval=steps, decay_steps=0)
    print(f"ours: {ours_probe / baby_probe:.2f}x the baby run's seconds per step "
          f"-> {steps} steps", flush=True)
    rows.append(run(f"course preset {args.ours}", ours, train_ids, val_ids,
                    tokenizer.vocab_size, device))

    print("\n| run | params | steps | tokens seen | wall s | val loss (whole split) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['params']:,} | {r['steps']} | {r['tokens']:,} | "
              f"{r['seconds']:.0f} | {r['val']:.4f} |")


if __name__ == "__main__":
    main()
