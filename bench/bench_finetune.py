"""Full fine-tuning vs LoRA (r = 4, 8, 16) vs LoRA on a 4-bit base, on the sonnets.

    OMP_NUM_THREADS=1 nice -n 5 python bench/bench_finetune.py              # CPU, 30 steps each
    python bench/bench_finetune.py --device cuda --steps 200 --batch-size 32

Every configuration starts from the shipped model (`load_pretrained("shakespeare-char")`)
and trains for the same number of AdamW steps (no weight decay) on the same seeded batches
of the sonnets' training split; LoRA wraps every block's qkv, proj, up and down layers with
alpha = 2 × rank. The 4-bit row first replaces those four layers by `NF4Linear`
(utils.quantization.quantize_model_nf4, blocks of 64) and then puts rank-8 LoRA on top:
the QLoRA recipe. Full fine-tuning uses a 10x smaller learning rate than LoRA, the usual
practice (its every weight moves; LoRA's update is scaled by alpha / r).

Columns:
* trainable: parameters that receive gradients (and % of the shipped model's 1.2 M);
* weights: bytes of the model as stored (the NF4 layers: 4-bit codes + one fp32 scale per
  block; everything else fp32);
* train state: weights + gradients + AdamW's two moments, computed from the parameter counts
  (4 + 4 + 8 bytes per trainable fp32 parameter). This is what LoRA shrinks; activations are
  the same for every row (same batch, same model shape) and are left out. On CPU it is
  computed, not measured: for a model this small the process's resident memory is dominated
  by PyTorch itself. With --device cuda the measured peak (torch.cuda.max_memory_allocated
  during the steps) is printed as well;
* s/step: median wall time of a training step after two warm-up steps;
* val loss: `utils.trainer.split_loss` on the whole validation split of the sonnets after the
  last step (before any training: the shipped model's loss, printed on the first line).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.data import get_batch, load_corpus, train_val_split  # noqa: E402
from utils.device import (
    get_device,  # noqa: E402
    machine_description,  # noqa: E402
)
from utils.lora import apply_lora, count_trainable  # noqa: E402
from utils.pretrained import load_pretrained  # noqa: E402
from utils.quantization import quantize_model_nf4  # noqa: E402
from utils.timing import stopwatch  # noqa: E402
from utils.trainer import split_loss  # noqa: E402

TARGETS = ("qkv", "proj", "up", "down")


def stored_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers as held (NF4 codes are uint8, two weights per byte)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def build(name: str, base: torch.nn.Module) -> torch.nn.Module:
    if name == "full":
        return copy.deepcopy(base).requires_grad_(True)
    if name.startswith("LoRA r="):
        rank = int(name.split("=")[1])
        return apply_lora(copy.deepcopy(base), rank=rank, alpha=2 * rank, targets=TARGETS)
    if name == "4-bit base + LoRA r=8":
        quantized = quantize_model_nf4(base, targets=TARGETS, block_size=64)
        return apply_lora(quantized, rank=8, alpha=16, targets=TARGETS)
    raise ValueError(f"unknown configuration {name!r}")


def run(name: str, base, train_ids, val_ids, args, device) -> dict:
    torch.manual_seed(args.seed)
    model = build(name, base).to(device)
    trainable = count_trainable(model)[0]
    total = count_trainable(base)[1]          # the shipped model's parameters: the 100 %
    params = [p for p in model.parameters() if p.requires_grad]
    lr = args.lr / 10 if name == "full" else args.lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times = []
    for _ in range(args.steps):
        x, y = get_batch(train_ids, args.batch_size, args.block_size, generator, device)
        with stopwatch(device) as watch:     # waits for the device before and after
            loss = model(x, y)[1]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(watch.seconds)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    weights = stored_bytes(model)
    return {"name": name, "trainable": trainable, "total": total, "weights": weights,
            "state": weights + 12 * trainable, "peak": peak,
            "s_per_step": statistics.median(times[2:] or times),
            "val_loss": split_loss(model, val_ids, args.block_size, device=device)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="LoRA's; full fine-tuning: lr/10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", default=[
        "full", "LoRA r=4", "LoRA r=8", "LoRA r=16", "4-bit base + LoRA r=8"])
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (two warm-up steps are not timed)")
    device = get_device(args.device)

    base, tokenizer = load_pretrained("shakespeare-char", device=device)
    base.eval()
    train_text, val_text = train_val_split(load_corpus("sonnets"))
    train_ids = torch.tensor(tokenizer.encode(train_text))
    val_ids = torch.tensor(tokenizer.encode(val_text))
    print(f"# {machine_description()}, torch {torch.__version__}, device {device}")
    print(f"# {args.steps} steps, batch {args.batch_size} x {args.block_size}, lr {args.lr:g} "
          f"(full: {args.lr / 10:g}), seed {args.seed}; LoRA on {', '.join(TARGETS)}")
    print(f"# shipped model before fine-tuning: val loss "
          f"{split_loss(base, val_ids, args.block_size, device=device):.4f}")
    header = (f"| {'configuration':<22} | {'trainable':>18} | {'weights':>9} | "
              f"{'train state':>11} | {'s/step':>6} | {'val loss':>8} |")
    if device.type == "cuda":
        header += " peak (measured) |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name in args.configs:
        r = run(name, base, train_ids, val_ids, args, device)
        line = (f"| {name:<22} | {r['trainable']:>9,} ({r['trainable'] / r['total']:>6.1%}) | "
                f"{r['weights'] / 2**20:>5.2f} MiB | {r['state'] / 2**20:>7.2f} MiB | "
                f"{r['s_per_step']:>6.3f} | {r['val_loss']:>8.4f} |")
        if r["peak"] is not None:
            line += f" {r['peak'] / 2**20:>11.1f} MiB |"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
