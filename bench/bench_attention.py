"""From-scratch attention vs PyTorch's fused scaled_dot_product_attention: time and memory.

    python bench/bench_attention.py                          # CPU, T = 128 ... 1024
    python bench/bench_attention.py --device cuda --seq-lens 1024 2048 4096 8192

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
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.attention import scaled_dot_product_attention  # noqa: E402

IMPLS = {
    "scratch": lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True)[0],
    "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
}


def make_inputs(B: int, H: int, T: int, D: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(B, H, T, D, device=device, dtype=dtype, generator=g) for _ in range(3)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_ms(fn, args, device: str, repeats: int) -> float:
    for _ in range(2):  # warm-up: kernel selection, allocator
        fn(*args)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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


def _cpu_child(impl: str, shape: tuple[int, int, int, int], dtype: str, queue) -> None:
    try:
        args = make_inputs(*shape, "cpu", getattr(torch, dtype))
        with torch.no_grad():
            IMPLS[impl](*[a[:, :, :8] for a in args])  # load kernels before the baseline
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
            before = _status_kib("VmRSS")
            IMPLS[impl](*args)
            peak = _status_kib("VmHWM")
        queue.put((peak - before) / 1024)
    except OSError:  # not Linux, or /proc not writable
        queue.put(float("nan"))


def cpu_peak_mib(impl: str, shape: tuple[int, int, int, int], dtype: torch.dtype) -> float:
    ctx = mp.get_context("spawn")  # a fresh process: its peak RSS is this call's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_child, args=(impl, shape, str(dtype).split(".")[-1], queue))
    proc.start()
    result = queue.get(timeout=300)
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None,
                        help="sequence lengths (default: 128 256 512 1024 on cpu, "
                             "1024 2048 4096 8192 on cuda)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="float32 (cpu default) or float16/bfloat16 "
                        "(cuda default float16)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    args = parser.parse_args(argv)

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA was requested but is not available here; try --device cpu")
        return 1
    on_cuda = device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("float16" if on_cuda else "float32"))
    seq_lens = args.seq_lens or ([1024, 2048, 4096, 8192] if on_cuda else [128, 256, 512, 1024])
    repeats = args.repeats or (20 if on_cuda else 3)
    B, H, D = args.batch, args.heads, args.head_dim
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


if __name__ == "__main__":
    sys.exit(main())
