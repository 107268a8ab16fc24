"""Chapter 00's timing, as a benchmark: an RNN's T sequential steps vs one attention layer.

    python bench/bench_recurrence.py                    # CPU
    python bench/bench_recurrence.py --threads 1        # CPU, one thread (a busy shared machine)
    python bench/bench_recurrence.py --device cuda      # GPU, if present

Prints a table of median milliseconds per batch (16 sequences, width 64) for each length, with
the fastest and slowest repeat. Both models are timed with `utils.timing.time_call`, taking
turns call by call, so their ratio in one run is honest even on a machine whose load changes.
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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's choice); on a machine busy with other "
                             "jobs, 1 thread gives steadier numbers: a second thread mostly waits")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # time honest fp32 on every device
    rows = time_sequential_vs_parallel(args.seq_lens, repeats=args.repeats, device=device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, batch 16, width 64, "
          f"median of {args.repeats} (fastest-slowest)")
    print("| T | RNN ms | attention ms | RNN / attention |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seq_len']} | {_ms(r['rnn'])} | {_ms(r['attention'])} | "
              f"{r['rnn_ms'] / r['attention_ms']:.1f}× |")


def _ms(timing) -> str:
    """'12.3 (11.9-14.0)': the median and the range of the repeats, in milliseconds."""
    return f"{1e3 * timing.median:.2f} ({1e3 * timing.best:.2f}-{1e3 * timing.worst:.2f})"


if __name__ == "__main__":
    main()
