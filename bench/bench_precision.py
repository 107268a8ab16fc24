"""Mixed precision, torch.compile and int8 quantisation of the shipped model (chapter 09).

    python bench/bench_precision.py                      # CPU: training-step table + int8 table
    python bench/bench_precision.py --device cuda        # the same on a GPU (adds fp16 + scaler)
    python bench/bench_precision.py --no-compile         # skip torch.compile (minutes on a CPU)
    python bench/bench_precision.py --only quant         # only the quantisation table

Table 1, one training step (forward + backward, no optimizer) of the shipped
shakespeare-char model (6 layers, 128 wide, context 128) on one fixed batch, median over
`--steps` timed steps after `--warmup` untimed ones, in wall-clock and in CPU time of the
process (on a shared CPU, run with OMP_NUM_THREADS=1 and read the CPU column):

    fp32 eager | bf16 autocast eager | fp32 compiled | bf16 autocast compiled  (| fp16 on cuda)

with the loss of each next to fp32's (|difference|) and, for compiled rows, the time of the
first step, which includes compiling (from a fresh, empty compile cache under runs/; wall
clock and CPU seconds including the C compiler's processes). If
torch.compile fails (no C compiler, unsupported platform), the row says why instead of
crashing the benchmark.

Table 2, int8 weight-only quantisation (utils.quantization.quantize_model_int8) and, for
comparison, NF4: bytes of the model, validation loss over the WHOLE held-out split
(utils.trainer.split_loss: every token once) and the time of one forward pass on a batch.

On a CPU expect little or nothing from bf16 (few CPUs have bf16 matrix units, and autocast's
casts cost time) and from int8 (the weight is converted back to float at every call): the
point of both is memory and, on a GPU, the bandwidth and tensor cores. Run with
OMP_NUM_THREADS=1 on a shared machine for steadier numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.data import get_batch, load_corpus, train_val_split  # noqa: E402
from utils.paths import run_dir  # noqa: E402
from utils.pretrained import load_pretrained  # noqa: E402
from utils.quantization import model_size_bytes, quantize_model_int8, quantize_model_nf4  # noqa: E402
from utils.timing import stopwatch  # noqa: E402
from utils.trainer import split_loss  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast for the forward pass, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def training_step(model, x, y, device, dtype):
    """One forward + backward. Under fp16 the loss is scaled by a fixed 2**12 before
    backward (what a GradScaler does when nothing overflows), so the small gradients of
    fp16's narrow range do not flush to zero; bf16 has fp32's range and needs no scaling."""
    model.zero_grad(set_to_none=True)
    with autocast(device, dtype):
        _, loss = model(x, y)
    (loss * 2.0**12 if dtype is torch.float16 else loss).backward()
    return loss.detach()


def _cpu_with_children() -> float:
    """CPU seconds used by this process and by the child processes it has waited for (the C
    compiler that torch.compile runs on a CPU)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_call(fn, device, cpu_clock=time.process_time):
    """(fn(), wall seconds, CPU seconds) of one call. The wall clock is utils.timing's
    stopwatch, which waits for the device before starting and before stopping."""
    c0 = cpu_clock()
    with stopwatch(device) as watch:
        result = fn()
    return result, watch.seconds, cpu_clock() - c0


def time_steps(step, device, warmup: int, steps: int) -> dict:
    """Time `step()`: the first call (compiles, if compiled) and the median of `steps` later
    calls, both in wall-clock seconds and in CPU seconds of this process. On a CPU shared
    with other jobs the wall clock counts the time spent waiting for a core; with one thread
    the process's CPU time does not, so it is the steadier number there."""
    loss, first, first_cpu = timed_call(step, device, _cpu_with_children)
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        loss, seconds, cpu_seconds = timed_call(step, device)
        wall.append(seconds)
        cpu.append(cpu_seconds)
    return {"first_s": first, "first_cpu_s": first_cpu, "step_s": statistics.median(wall),
            "cpu_s": statistics.median(cpu), "loss": float(loss)}


def precision_table(device: torch.device, batch_size: int, steps: int, warmup: int,
                    compile_: bool) -> list[dict]:
    model, tokenizer = load_pretrained("shakespeare-char", device=device)
    _, val_text = train_val_split(load_corpus())
    val = torch.tensor(tokenizer.encode(val_text))
    x, y = get_batch(val, batch_size, model.config.block_size,
                     torch.Generator().manual_seed(0), device)
    model.train()
    names = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    rows = []
    for compiled in ([False, True] if compile_ else [False]):
        runner = model
        if compiled:
            torch._dynamo.reset()
            try:
                runner = torch.compile(model)
            except Exception as error:       # noqa: BLE001 - report any reason, keep going
                rows.append({"name": "compiled", "error": f"{type(error).__name__}: {error}"})
                continue
        for name in names:
            label = f"{name} {'compiled' if compiled else 'eager'}"
            try:
                timing = time_steps(
                    lambda r=runner, n=name: training_step(r, x, y, device, DTYPES[n]),
                    device, warmup, steps)
            except Exception as error:       # noqa: BLE001 - e.g. no C compiler for inductor
                reason = str(error).strip().splitlines()[0][:200] if str(error) else ""
                rows.append({"name": label, "error": f"{type(error).__name__}: {reason}"})
                continue
            rows.append({"name": label, **timing})
    base = next(r for r in rows if r["name"] == "fp32 eager")
    for row in rows:
        if "loss" in row:
            row["loss_diff"] = abs(row["loss"] - base["loss"])
            row["speedup"] = base["step_s"] / row["step_s"]
            row["cpu_speedup"] = base["cpu_s"] / row["cpu_s"]
    return rows


@torch.no_grad()
def forward_time(model, x, device, repeats: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) of one forward pass, after one warm-up call."""
    model(x)
    wall, cpu = [], []
    for _ in range(repeats):
        _, seconds, cpu_seconds = timed_call(lambda: model(x), device)
        wall.append(seconds)
        cpu.append(cpu_seconds)
    return statistics.median(wall), statistics.median(cpu)


def quantization_table(device: torch.device, batch_size: int, repeats: int,
                       val_tokens: int | None = None) -> list[dict]:
    """Size, full-split validation loss and forward time of fp32, int8 and NF4 copies of the
    shipped model. `val_tokens` limits the split (None: all of it, the number to quote)."""
    model, tokenizer = load_pretrained("shakespeare-char", device=device)
    _, val_text = train_val_split(load_corpus())
    val = torch.tensor(tokenizer.encode(val_text))
    if val_tokens is not None:
        val = val[:val_tokens]
    x, _ = get_batch(val, batch_size, model.config.block_size,
                     torch.Generator().manual_seed(0), device)
    variants = {"fp32": model, "int8 (per row)": quantize_model_int8(model),
                "nf4 (block 64)": quantize_model_nf4(model)}
    rows = []
    for name, m in variants.items():
        m.eval()
        wall, cpu = forward_time(m, x, device, repeats)
        rows.append({"name": name, "bytes": model_size_bytes(m),
                     "val_loss": split_loss(m, val, model.config.block_size, device=device),
                     "forward_s": wall, "forward_cpu_s": cpu})
    for row in rows:
        row["loss_diff"] = row["val_loss"] - rows[0]["val_loss"]
        row["ratio"] = rows[0]["bytes"] / row["bytes"]
    rows[0]["n_val_tokens"] = len(val)
    return rows


def print_precision(rows: list[dict]) -> None:
    print(f"{'variant':<16} {'wall ms':>8} {'vs fp32':>8} {'cpu ms':>8} {'vs fp32':>8} "
          f"{'1st wall s':>11} {'1st cpu s':>10} {'loss':>8} {'|Δ loss|':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<16} failed: {r['error']}")
            continue
        print(f"{r['name']:<16} {1e3 * r['step_s']:>8.1f} {r['speedup']:>7.2f}x "
              f"{1e3 * r['cpu_s']:>8.1f} {r['cpu_speedup']:>7.2f}x "
              f"{r['first_s']:>11.2f} {r['first_cpu_s']:>10.2f} {r['loss']:>8.4f} "
              f"{r['loss_diff']:>9.5f}")


def print_quantization(rows: list[dict]) -> None:
    print(f"validation split: {rows[0]['n_val_tokens']} tokens")
    print(f"{'weights':<16} {'bytes':>10} {'smaller':>8} {'val loss':>9} {'Δ loss':>8} "
          f"{'fwd wall ms':>12} {'fwd cpu ms':>11}")
    for r in rows:
        print(f"{r['name']:<16} {r['bytes']:>10,} {r['ratio']:>7.2f}x {r['val_loss']:>9.4f} "
              f"{r['loss_diff']:>+8.4f} {1e3 * r['forward_s']:>12.1f} "
              f"{1e3 * r['forward_cpu_s']:>11.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument("--only", choices=("precision", "quant"), default=None)
    parser.add_argument("--val-tokens", type=int, default=None,
                        help="score only this many validation tokens (default: all)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but CUDA is not available here")
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() \
        or platform.machine()
    print(f"torch {torch.__version__}, {device} ({where}), {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}")
    if args.only in (None, "precision"):
        # torch.compile writes generated code and compiled kernels to a cache; give it a
        # fresh folder under runs/ so the first-step time is a cold compile (a warm cache
        # would hide most of it) and nothing is written outside runs/.
        cache = tempfile.mkdtemp(prefix="bench_precision_", dir=run_dir("torchinductor"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        if device.type == "cpu":
            # compile in this process (no pool of worker processes), so the first step's
            # CPU time includes the C compiler runs it waits for
            os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        try:
            print("\nTraining step (forward + backward) of the shipped model:")
            print_precision(precision_table(device, args.batch_size, args.steps, args.warmup,
                                            not args.no_compile))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    if args.only in (None, "quant"):
        print("\nWeight-only quantisation of the shipped model (inference):")
        print_quantization(quantization_table(device, args.batch_size, args.steps,
                                              args.val_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
