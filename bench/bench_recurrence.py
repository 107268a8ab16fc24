"""Chapter 00's timing, as a benchmark: an RNN's T sequential steps vs one attention layer.

    python bench/bench_recurrence.py                    # CPU
    python bench/bench_recurrence.py --device cuda      # GPU, if present

Prints a table of median milliseconds per batch (16 sequences, width 64) for each length.
"""

from __future__ import annotations

import argparse

import torch

from utils.device import get_device
from utils.sequence_models import time_sequential_vs_parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = get_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # time honest fp32 on every device
    rows = time_sequential_vs_parallel(args.seq_lens, repeats=args.repeats, device=device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, batch 16, width 64")
    print(f"| {'T':>6} | {'RNN steps':>9} | {'RNN ms':>9} | {'attention ms':>12} | {'RNN / attention':>15} |")
    print(f"|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 14}|{'-' * 17}|")
    for r in rows:
        print(f"| {r['seq_len']:>6} | {r['rnn_steps']:>9} | {r['rnn_ms']:>9.2f} | "
              f"{r['attention_ms']:>12.2f} | {r['rnn_ms'] / r['attention_ms']:>14.1f}x |")


if __name__ == "__main__":
    main()
