"""From-scratch attention vs PyTorch's fused scaled_dot_product_attention: time and memory.

    python bench/bench_attention.py                          # CPU, T = 128 ... 1024
    python bench/bench_attention.py --device cuda --seq-lens 1024 2048 4096 8192
    python bench/bench_attention.py --tiled                  # chapter 09: T = 256 ... 4096

`--tiled` prints two tables instead (chapter 09): the forward pass (no grad) and a training
step (forward + backward) of naive attention (utils.tiled_attention.naive_attention, which
materialises T×T), our tiled attention (`tiled_attention` forward, `flash_attention` for the
training step: an autograd.Function that saves only the output and the log-sum-exp) and
F.scaled_dot_product_attention, with the naive/tiled ratio of peak memory (target: at least
8x at T = 4096, forward and training step). Its default batch is 1, so that the naive T×T
tensors at T = 4096 (512 MiB each for 8 heads) fit a laptop.

Both compute causal softmax(QKᵀ/√d)V on [B, h, T, d] tensors (forward only, no grad). The
from-scratch version (utils.attention.scaled_dot_product_attention) materialises the T×T
scores and weights; the fused kernel does not, which is what the memory column shows.

Peak memory:
* cuda: measured, torch.cuda.max_memory_allocated() above what the inputs already held;
* cpu: measured in a fresh child process: its peak-RSS mark (VmHWM) is reset through
  /proc/self/clear_refs after the inputs exist, the call runs once, and the rise of VmHWM
  above the resident size before the call is reported (Linux only; page-granular, includes
  allocator overhead). Read it next to the analytic size of one fp32 T×T tensor that the
  table also prints. torch.profiler and tracemalloc do not see this peak reliably.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.attention import scaled_dot_product_attention  # noqa: E402
from utils.tiled_attention import flash_attention, naive_attention, tiled_attention  # noqa: E402
from utils.timing import time_call  # noqa: E402

IMPLS = {
    "scratch": lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True)[0],
    "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
}



def tiled_runner(mode: str, impl: str, block_size: int):
    """A function of the inputs that runs one call of `impl` in `mode` ("forward" or "train").

    forward: causal attention of (q, k, v) without autograd. train: the same with autograd on,
    then backward from a fixed output gradient, so q, k and v receive their .grad."""
    attend = {"naive": lambda q, k, v: naive_attention(q, k, v, causal=True),
              "tiled": lambda q, k, v: (flash_attention if mode == "train" else tiled_attention)(
                  q, k, v, causal=True, block_size=block_size),
              "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}[impl]
    if mode == "forward":
        return attend

    def train_step(q, k, v, grad_out):
        for x in (q, k, v):
            x.grad = None
        with torch.enable_grad():
            attend(q, k, v).backward(grad_out)
        return q.grad
    return train_step


def make_tiled_inputs(mode: str, B: int, H: int, T: int, D: int, device: str, dtype: torch.dtype):
    inputs = make_inputs(B, H, T, D, device, dtype)
    if mode == "train":
        inputs = [x.requires_grad_() for x in inputs]
        inputs.append(make_inputs(B, H, T, D, device, dtype)[0] * 0.1)   # dLoss/dOutput
    return inputs


def make_inputs(B: int, H: int, T: int, D: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g) for _ in range(3)]


@torch.no_grad()
def time_ms(fn, args, device: str, repeats: int) -> float:
    """Median milliseconds of fn(*args) after 2 warm-ups (kernel selection, allocator), each
    run timed between two device synchronisations (utils.timing)."""
    return 1e3 * time_call(lambda: fn(*args), repeats=repeats, warmup=2, device=device).median


@torch.no_grad()
def cuda_peak_mib(fn, args) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_child(impl: str, shape: tuple[int, int, int, int], dtype: str, queue,
               tiled: tuple[str, int] | None = None) -> None:
    """Runs in the fresh process. `tiled` = (mode, block_size) selects a --tiled runner."""
    try:
        if tiled is None:
            fn, args = IMPLS[impl], make_inputs(*shape, "cpu", getattr(torch, dtype))
        else:
            mode, block_size = tiled
            fn = tiled_runner(mode, impl, block_size)
            args = make_tiled_inputs(mode, *shape, "cpu", getattr(torch, dtype))
        with torch.no_grad():
            warm = [a[:, :, :8].detach().requires_grad_(a.requires_grad) for a in args]
            fn(*warm)  # load kernels before the baseline (on separate tensors: no .grad left)
            del warm
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
            before = _status_kib("VmRSS")
            fn(*args)
            peak = _status_kib("VmHWM")
        queue.put((peak - before) / 1024)
    except OSError:  # not Linux, or /proc not writable
        queue.put(float("nan"))


def cpu_peak_mib(impl: str, shape: tuple[int, int, int, int], dtype: torch.dtype,
                 tiled: tuple[str, int] | None = None) -> float:
    ctx = mp.get_context("spawn")  # a fresh process: its peak RSS is this call's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_child,
                       args=(impl, shape, str(dtype).split(".")[-1], queue, tiled))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None,
                        help="sequence lengths (default: 128 256 512 1024 on cpu, "
                             "1024 2048 4096 8192 on cuda)")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (1 with --tiled)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="float32 (cpu default) or float16/bfloat16 "
                        "(cuda default float16)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--tiled", action="store_true",
                        help="chapter 09: naive vs tiled (ours) vs sdpa, forward and training step")
    parser.add_argument("--block-size", type=int, default=128, help="tile size for --tiled")
    args = parser.parse_args(argv)
    if args.tiled:
        return run_tiled(args)

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA was requested but is not available here; try --device cpu")
        return 1
    on_cuda = device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("float16" if on_cuda else "float32"))
    seq_lens = args.seq_lens or ([1024, 2048, 4096, 8192] if on_cuda else [128, 256, 512, 1024])
    repeats = args.repeats or (20 if on_cuda else 3)
    B, H, D = args.batch or 4, args.heads, args.head_dim
    where = torch.cuda.get_device_name(device) if on_cuda else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    memory_how = ("measured: torch.cuda.max_memory_allocated above the inputs" if on_cuda else
                  "measured: peak-RSS rise (VmHWM) of a fresh process running the call once")
    print(f"attention forward, causal, B={B} h={H} d_head={D}, {str(dtype).split('.')[-1]}, "
          f"{device} ({where}), torch {torch.__version__}")
    print(f"time: median of {repeats} runs after 2 warm-ups. peak memory: {memory_how}. "
          "T×T: analytic size of one fp32 B·h·T² tensor (scores or weights).")
    print(f"{'T':>6} | {'scratch ms':>10} | {'sdpa ms':>8} | {'speed-up':>8} | "
          f"{'scratch MiB':>11} | {'sdpa MiB':>8} | {'T×T MiB':>8} | {'max |diff|':>10}")
    print("-" * 90)
    for T in seq_lens:
        inputs = make_inputs(B, H, T, D, device, dtype)
        with torch.no_grad():
            diff = (IMPLS["scratch"](*inputs).float() - IMPLS["sdpa"](*inputs).float()).abs().max()
        ms = {name: time_ms(fn, inputs, device, repeats) for name, fn in IMPLS.items()}
        if args.no_memory:
            mem = {name: float("nan") for name in IMPLS}
        elif on_cuda:
            mem = {name: cuda_peak_mib(fn, inputs) for name, fn in IMPLS.items()}
        else:
            del inputs
            mem = {name: cpu_peak_mib(name, (B, H, T, D), dtype) for name in IMPLS}
        txt = B * H * T * T * 4 / 2**20
        print(f"{T:>6} | {ms['scratch']:>10.2f} | {ms['sdpa']:>8.2f} | "
              f"{ms['scratch'] / ms['sdpa']:>7.1f}x | {mem['scratch']:>11.1f} | "
              f"{mem['sdpa']:>8.1f} | {txt:>8.1f} | {diff.item():>10.2e}")
    return 0


TILED_TABLES = {"forward": ("forward (no grad)", ["naive", "tiled", "sdpa"]),
                "train": ("training step (forward + backward)", ["naive", "tiled", "sdpa"])}


def run_tiled(args) -> int:
    """The chapter-09 tables: time and peak memory vs T, forward and training step."""
    device = args.device
    on_cuda = device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        print("CUDA was requested but is not available here; try --device cpu")
        return 1
    dtype = getattr(torch, args.dtype or ("float16" if on_cuda else "float32"))
    seq_lens = args.seq_lens or [256, 512, 1024, 2048, 4096]
    repeats = args.repeats or (10 if on_cuda else 3)
    B, H, D = args.batch or 1, args.heads, args.head_dim
    where = torch.cuda.get_device_name(device) if on_cuda else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"causal attention, B={B} h={H} d_head={D}, {str(dtype).split('.')[-1]}, {device} "
          f"({where}), torch {torch.__version__}; tiled block {args.block_size}")
    print(f"time: median of {repeats} runs after 2 warm-ups. peak memory: "
          + ("torch.cuda.max_memory_allocated above the inputs" if on_cuda else
             "peak-RSS rise (VmHWM) of a fresh process running the call once")
          + ". tiled = utils.tiled_attention (forward: tiled_attention; training: flash_attention)")
    summary = []
    for mode, (title, impls) in TILED_TABLES.items():
        diff_what = "max|Δout|" if mode == "forward" else "max|Δdq|"
        print(f"\n{title}")
        print(f"{'T':>6} | " + " | ".join(f"{i + ' ms':>9}" for i in impls) + " | "
              + " | ".join(f"{i + ' MiB':>9}" for i in impls)
              + f" | {'T×T MiB':>8} | {'naive/tiled mem':>15} | {diff_what:>9}")
        print("-" * 120)
        for T in seq_lens:
            runners = {i: tiled_runner(mode, i, args.block_size) for i in impls}
            inputs = make_tiled_inputs(mode, B, H, T, D, device, dtype)
            with torch.no_grad():
                ref = runners["naive"](*inputs).float().clone()
                diff = (runners["tiled"](*inputs).float() - ref).abs().max().item()
                del ref
            ms = {i: time_ms(runners[i], inputs, device, repeats) for i in impls}
            if args.no_memory:
                mem = {i: float("nan") for i in impls}
            elif on_cuda:
                mem = {i: cuda_peak_mib(runners[i], inputs) for i in impls}
            else:
                del inputs
                mem = {i: cpu_peak_mib(i, (B, H, T, D), dtype, (mode, args.block_size))
                       for i in impls}
            ratio = mem["naive"] / mem["tiled"] if mem["tiled"] > 0 else float("nan")
            txt = B * H * T * T * 4 / 2**20
            print(f"{T:>6} | " + " | ".join(f"{ms[i]:>9.1f}" for i in impls) + " | "
                  + " | ".join(f"{mem[i]:>9.1f}" for i in impls)
                  + f" | {txt:>8.1f} | {ratio:>14.1f}x | {diff:>9.2e}", flush=True)
        summary.append((title, T, ratio))
    for title, T, ratio in summary:
        if math.isnan(ratio):   # --no-memory: nothing to judge the target by
            print(f"{title}: peak memory not measured (--no-memory), target not judged")
            continue
        verdict = "met" if ratio >= 8 else "NOT met"
        print(f"{title}: naive/tiled peak memory at T={T} is {ratio:.1f}x (target >= 8x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
