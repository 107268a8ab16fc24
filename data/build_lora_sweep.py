"""Precompute the LoRA explorer's losses: LoRA on the sonnets, over ranks × target layers.

Chapter 10's LoRA explorer (`utils/widgets/lora_explorer.py`) shows, for a rank and a set of
target layers, how many parameters train and what loss that reached. Training inside a
widget callback would take minutes, so the losses come from this script, run once; its output
`data/lora_sweep.json` is shipped and records the command, the settings and the machine.

    OMP_NUM_THREADS=1 nice -n 5 python data/build_lora_sweep.py   # 15 runs, minutes on 2 CPU cores
    OMP_NUM_THREADS=1 nice -n 5 python data/build_lora_sweep.py --scaling-only   # 15 more runs

Every run starts from the shipped model (`load_pretrained("shakespeare-char")`), uses the
same seed, so the same batches of sonnet text in the same order, the same number of steps
and the same learning rate; only the rank and the wrapped layers change. alpha = 2 × rank,
so the scaling alpha / rank is 2 for every rank. Losses: "train" is the mean of the last ten
training steps' losses; "val" is `utils.trainer.split_loss` on the whole validation split of
the sonnets (their last 10 %, the last fifteen sonnets), which no run trains on.

The scaling study (key "scaling_study", also written by `--scaling-only`, which keeps the rest
of the file as it is) tests the usual claim that dividing the update by r lets one learning
rate serve every rank. It trains adapters on qkv + proj at ranks 1, 2, 4, 8, 16 with the same
learning rate under three rules for the factor in front of B A, all equal to 2 at rank 1:
2 (alpha = 2r, the main sweep's rule), 2/√r (alpha = 2√r, rsLoRA) and 2/r (alpha = 2, the
LoRA paper's fixed alpha). For each run it records the loss reached and the size of the
update the adapters add, scaling · B A x, relative to the frozen layer's own output W x + b,
on a fixed batch of validation windows (the root mean square over every adapted layer's
outputs, then the mean over the adapted layers).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from anywhere

from utils.data import load_corpus, train_val_split  # noqa: E402
from utils.device import machine_description  # noqa: E402
from utils.lora import apply_lora, count_trainable, finetune, linear_layers, lora_layers, save_adapters  # noqa: E402
from utils.paths import write_text_atomic  # noqa: E402
from utils.pretrained import load_pretrained  # noqa: E402
from utils.trainer import split_loss  # noqa: E402

RANKS = (1, 2, 4, 8, 16)
# label shown in the widget -> the layers LoRA wraps in every block
TARGET_SETS = {
    "qkv": ("qkv",),
    "qkv+proj": ("qkv", "proj"),
    "qkv+proj+mlp": ("qkv", "proj", "up", "down"),
}
OUT = Path(__file__).resolve().parent / "lora_sweep.json"
# the scaling study: rule -> the factor in front of B A at rank r (all equal 2 at rank 1)
SCALING_RULES = {
    "2 (alpha = 2r)": lambda r: 2.0,
    "2/sqrt(r) (alpha = 2 sqrt(r), rsLoRA)": lambda r: 2.0 / r ** 0.5,
    "2/r (alpha = 2, fixed)": lambda r: 2.0 / r,
}
SCALING_TARGETS = ("qkv", "proj")


def encode_sonnets(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    train_text, val_text = train_val_split(load_corpus("sonnets"))
    return (torch.tensor(tokenizer.encode(train_text)), torch.tensor(tokenizer.encode(val_text)))


def run_one(base, train_ids, val_ids, targets, rank, args) -> dict:
    torch.manual_seed(args.seed)                    # the same A initialisation for every run
    model = apply_lora(copy.deepcopy(base), rank=rank, alpha=2 * rank, targets=targets)
    start = time.perf_counter()
    losses = finetune(model, train_ids, args.steps, args.batch_size, args.block_size, args.lr,
                      seed=args.seed)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:      # the size of the adapter file, measured
        adapter_bytes = save_adapters(model, Path(tmp) / "adapters.safetensors").stat().st_size
    trainable, total = count_trainable(model)
    return {"rank": rank, "alpha": 2 * rank, "trainable": trainable, "total": total,
            "adapter_bytes": adapter_bytes, "train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "val_loss": round(split_loss(model, val_ids, args.block_size), 4),
            "seconds_per_step": round(seconds / args.steps, 3)}


@torch.no_grad()
def relative_update_size(model, windows: torch.Tensor) -> float:
    """How big the adapters' contribution is next to the frozen layers' outputs: for every
    adapted layer, rms(scaling · x Aᵀ Bᵀ) / rms(W x + b) over `windows`, then the mean."""
    inputs = {}
    hooks = [layer.register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in lora_layers(model).items()]
    was_training = model.training
    model.eval()
    try:
        model(windows)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    ratios = []
    for name, layer in lora_layers(model).items():
        x = inputs[name]
        update = layer.scaling * (x @ layer.lora_A.T @ layer.lora_B.T)
        ratios.append((update.pow(2).mean().sqrt() / layer.base(x).pow(2).mean().sqrt()).item())
    return sum(ratios) / len(ratios)


def scaling_study(base, train_ids, val_ids, args) -> dict:
    """Same learning rate, same steps, same batches; only the rank and the factor change."""
    windows = torch.stack([val_ids[i:i + args.block_size]
                           for i in range(0, 16 * args.block_size, args.block_size)])
    study = {"what": "one learning rate for every rank? LoRA on qkv + proj, with three rules for "
                     "the factor in front of B A (all 2 at rank 1)",
             "command": "OMP_NUM_THREADS=1 nice -n 5 python data/build_lora_sweep.py --scaling-only",
             "date": datetime.date.today().isoformat(), "machine": machine_description(),
             "targets": list(SCALING_TARGETS),
             "settings": {"steps": args.steps, "batch_size": args.batch_size,
                          "block_size": args.block_size, "lr": args.lr, "seed": args.seed},
             "update_size": "rms(scaling * B A x) / rms(W x + b) on 16 validation windows, mean "
                            "over the adapted layers",
             "rules": {}}
    started, done = time.perf_counter(), {}
    for rule, factor in SCALING_RULES.items():
        study["rules"][rule] = []
        for rank in args.ranks:
            key = (rank, round(factor(rank), 6))    # rank 1 is the same run under every rule
            if key not in done:
                torch.manual_seed(args.seed)        # the same A initialisation for every run
                alpha = factor(rank) * rank         # LoRALinear uses scaling = alpha / rank
                model = apply_lora(copy.deepcopy(base), rank=rank, alpha=alpha,
                                   targets=SCALING_TARGETS)
                losses = finetune(model, train_ids, args.steps, args.batch_size, args.block_size,
                                  args.lr, seed=args.seed)
                done[key] = {"rank": rank, "scaling": round(factor(rank), 4),
                             "train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                             "val_loss": round(split_loss(model, val_ids, args.block_size), 4),
                             "update_size": round(relative_update_size(model, windows), 5)}
            result = dict(done[key])
            study["rules"][rule].append(result)
            print(f"{rule:>40} r={rank:<2} scaling {result['scaling']:<6g} update "
                  f"{result['update_size']:.4f}  val {result['val_loss']:.4f}", flush=True)
    study["seconds"] = round(time.perf_counter() - started)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranks", type=int, nargs="+", default=list(RANKS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--scaling-only", action="store_true",
                        help="run only the scaling study and update that key of --out")
    args = parser.parse_args()

    base, tokenizer = load_pretrained("shakespeare-char")
    base.eval()
    train_ids, val_ids = encode_sonnets(tokenizer)
    if args.scaling_only:
        record = json.loads(args.out.read_text())
        record["scaling_study"] = scaling_study(base, train_ids, val_ids, args)
        write_text_atomic(args.out, json.dumps(record, indent=1) + "\n")
        print(f"wrote the scaling study into {args.out}")
        return
    record = {
        "what": "LoRA on the sonnets from the shipped shakespeare-char model: loss reached after "
                "a fixed number of steps, for each rank and set of target layers",
        "command": ("OMP_NUM_THREADS=1 nice -n 5 python data/build_lora_sweep.py "
                   + " ".join(sys.argv[1:])).strip(),
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {"steps": args.steps, "batch_size": args.batch_size,
                     "block_size": args.block_size, "lr": args.lr, "seed": args.seed,
                     "alpha": "2 * rank", "optimizer": "AdamW, no weight decay"},
        "target_sets": {label: list(targets) for label, targets in TARGET_SETS.items()},
        # [out_features, in_features] of every linear layer, so the widget can count the
        # parameters of any rank and any choice of layers without loading the model
        "layers": {name: [m.out_features, m.in_features] for name, m in linear_layers(base).items()},
        "base": {"trainable": 0, "total": count_trainable(base)[1],
                 "val_loss": round(split_loss(base, val_ids, args.block_size), 4)},
        "runs": {},
    }
    for label, targets in TARGET_SETS.items():
        record["runs"][label] = []
        for rank in args.ranks:
            result = run_one(base, train_ids, val_ids, targets, rank, args)
            record["runs"][label].append(result)
            print(f"{label:>13} r={rank:<2} trainable {result['trainable']:>7,}  "
                  f"train {result['train_loss']:.4f}  val {result['val_loss']:.4f}  "
                  f"({result['seconds_per_step']:.2f} s/step)", flush=True)
    record["scaling_study"] = scaling_study(base, train_ids, val_ids, args)

    write_text_atomic(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
