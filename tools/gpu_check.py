"""One command that proves the course on a GPU: every notebook, the trainer, the speed-up switches.

    python tools/gpu_check.py                          # everything, on the best device
    python tools/gpu_check.py --part train             # one part again (repeatable)
    python tools/gpu_check.py --device cpu --quick     # rehearse the same plan at toy sizes

Parts, in order (planned to fit about 6 minutes on one H100; not yet timed on one):
  notebooks  every chapter and solutions notebook headless (tools/run_headless.py): seconds each,
             and the failing cell of any that breaks
  train      the `shakespeare-char` preset for this device: wall time until the trainer's val
             estimate reaches the shipped CPU model's 1.646, the best val and its step, the
             whole held-out split at the end, tokens/s and MFU
  ladder     tokens/s of the same model as switches are added one at a time:
             fp32 -> +TF32 -> +bf16 autocast -> +SDPA -> +fused AdamW -> +torch.compile
  gpt2       the GPT-2-small shape (124M parameters) with bf16 + compile: tokens/s and MFU
  craft      chapter 07's training craft on the device: the preset with AdamW and with
             --optimizer muon at equal steps (val, seconds; Muon's products in bfloat16),
             the trainer's logged MFU, and activation memory: the count against the CUDA
             allocator, with and without --checkpoint-activations
  bench      bench_attention --tiled and bench_generation on the device

It prints one markdown table per part and writes everything to runs/gpu_check/<device>.json
(a part run again replaces its own entry). MFU uses the datasheet peak of the card when
`utils.throughput` knows it and a measured matmul peak otherwise, and says which.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.run_headless import run_notebook  # noqa: E402
from utils.data import load_corpus, train_val_split  # noqa: E402
from utils.device import get_device, set_seed  # noqa: E402
from utils.model import GPT, GPTConfig, estimate_flops_per_token  # noqa: E402
from utils.paths import REPO_ROOT, run_dir  # noqa: E402
from utils.throughput import device_peak, mfu  # noqa: E402
from utils.timing import stopwatch, synchronize  # noqa: E402
from utils.tokenizers import CharTokenizer  # noqa: E402
from utils.train_config import preset  # noqa: E402
from utils.trainer import autocast_dtype, split_loss, tf32_matmuls, train  # noqa: E402

SHIPPED_CPU_VAL = 1.646   # the shipped CPU model on the whole held-out play (data/README.md)
PARTS = ("notebooks", "train", "ladder", "gpt2", "craft", "bench")


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(nothing measured)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(row[k]) for k in head) + " |" for row in rows]
    return "\n".join(lines)


def fast_dtype(device: torch.device) -> torch.dtype:
    """The precision a fast run uses: bf16 where the GPU runs it natively, else fp16 (CUDA);
    float32 on a CPU (this one's bf16 matmul measured 0.3 GFLOP/s against 80 for float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) \
            else torch.float16
    return torch.float32


# ---------------------------------------------------------------------------- the parts

def part_notebooks(device: torch.device, quick: bool) -> list[dict]:
    pattern = ["chapters/03_attention.ipynb"] if quick else ["chapters/*.ipynb",
                                                             "solutions/*.ipynb"]
    paths = sorted(p for glob in pattern for p in REPO_ROOT.glob(glob))
    rows = []
    for path in paths:
        outcome = run_notebook(path)
        rows.append({"notebook": f"{path.parent.name}/{path.name}",
                     "seconds": round(outcome.seconds, 1),
                     "result": "ok" if outcome.ok else
                     f"cell {outcome.failed_cell}: {outcome.error[:160]}"})
        print(f"  {rows[-1]['notebook']}: {rows[-1]['result']} ({rows[-1]['seconds']} s)", flush=True)
    return rows


def part_train(device: torch.device, quick: bool) -> list[dict]:
    text = load_corpus("shakespeare")
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    overrides = dict(max_steps=30, eval_interval=10, eval_batches=2) if quick else {}
    config = preset("shakespeare-char", device, **overrides)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=config.block_size,
                          n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                          dropout=config.dropout, bias=config.bias))
    evals: list[tuple[float, int, float]] = []
    start = time.perf_counter()

    def on_event(event: dict) -> None:
        if event["event"] == "eval":
            synchronize(device)
            evals.append((time.perf_counter() - start, event["step"], event["val"]))

    result = train(model, train_ids, val_ids, config, callbacks=[on_event], progress=False)
    reached = next(((t, s) for t, s, v in evals if v <= SHIPPED_CPU_VAL), None)
    best_time, best_step, best_val = min(evals, key=lambda e: e[2])
    whole_val = split_loss(result.model, val_ids, config.block_size, device=device)
    dtype = autocast_dtype(config, device) or torch.float32   # what the trainer really used
    flops = estimate_flops_per_token(model.config, training=True)
    tokens_per_s = config.tokens_per_step * config.max_steps / result.seconds
    peak, source = device_peak(device, dtype, n=1024 if quick else 4096)
    return [{"preset": f"shakespeare-char ({device.type})", "steps": config.max_steps,
             "seconds": round(result.seconds, 1),
             f"seconds to val <= {SHIPPED_CPU_VAL}": "not reached" if reached is None
             else f"{reached[0]:.1f} (step {reached[1]})",
             "best val (estimate)": f"{best_val:.4f} at step {best_step} ({best_time:.0f} s)",
             "val, whole held-out split": round(whole_val, 4),
             "tokens/s": f"{tokens_per_s:,.0f}",
             "MFU": f"{mfu(tokens_per_s, flops, peak):.1%}", "peak from": source}]


def _step_rate(model: GPT, device: torch.device, batch: int, steps: int, amp: torch.dtype | None,
               fused: bool, compiled: bool, tf32: bool, quick: bool = False) -> float:
    """Training tokens per second of `model` on random ids, after warm-up steps.

    With `quick`, torch.compile traces the model (graph breaks and tracing errors show up) but
    runs it with the "eager" backend: generating and building C++ kernels for a CPU takes
    minutes on a small busy machine, which is not what a rehearsal is for."""
    runner = torch.compile(model, backend="eager" if quick else "inductor") if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    T, V = model.config.block_size, model.config.vocab_size
    x = torch.randint(0, V, (batch, T), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            _, loss = runner(x, x)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    with tf32_matmuls(device) if tf32 else nullcontext():
        for _ in range(3):          # warm-up: allocation, autotuning, compilation
            step()
        with stopwatch(device) as watch:
            for _ in range(steps):
                step()
    return batch * T * steps / watch.seconds


def _set_sdpa(model: GPT, on: bool) -> None:
    for module in model.modules():
        if hasattr(module, "use_sdpa"):
            module.use_sdpa = on


def part_ladder(device: torch.device, quick: bool) -> list[dict]:
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=64) if quick else dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256)
    batch, steps = (4, 3) if quick else (64, 30)
    amp = fast_dtype(device) if device.type == "cuda" else torch.bfloat16  # the rung, even if slow
    rungs = [("fp32", dict(amp=None, sdpa=False, fused=False, compiled=False, tf32=False)),
             ("+ TF32", dict(amp=None, sdpa=False, fused=False, compiled=False, tf32=True)),
             (f"+ {str(amp).removeprefix('torch.')} autocast",
              dict(amp=amp, sdpa=False, fused=False, compiled=False, tf32=True)),
             ("+ SDPA", dict(amp=amp, sdpa=True, fused=False, compiled=False, tf32=True)),
             ("+ fused AdamW", dict(amp=amp, sdpa=True, fused=True, compiled=False, tf32=True)),
             ("+ torch.compile", dict(amp=amp, sdpa=True, fused=True, compiled=True, tf32=True))]
    rows, first = [], None
    for name, switches in rungs:
        set_seed(0)
        model = GPT(GPTConfig(vocab_size=65, dropout=0.0, **shape)).to(device)
        _set_sdpa(model, switches["sdpa"])
        try:
            rate = _step_rate(model, device, batch, steps, switches["amp"], switches["fused"],
                              switches["compiled"], switches["tf32"], quick)
        except (RuntimeError, NotImplementedError) as error:   # e.g. fused AdamW unsupported
            rows.append({"switches": name, "tokens/s": "n/a", "vs fp32": str(error)[:80]})
            continue
        first = first or rate
        rows.append({"switches": name, "tokens/s": f"{rate:,.0f}", "vs fp32": f"{rate / first:.2f}x"})
    return rows


def part_gpt2(device: torch.device, quick: bool) -> list[dict]:
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=256) if quick else \
        dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    batch, steps = (2, 2) if quick else (16, 10)
    dtype = fast_dtype(device)
    amp = None if dtype == torch.float32 else dtype
    set_seed(0)
    model = GPT(GPTConfig(dropout=0.0, bias=False, **shape)).to(device)
    rate = _step_rate(model, device, batch, steps, amp, fused=device.type == "cuda",
                      compiled=True, tf32=True, quick=quick)
    flops = estimate_flops_per_token(model.config, training=True)
    peak, source = device_peak(device, dtype, n=1024 if quick else 4096)
    params = sum(p.numel() for p in model.parameters())
    return [{"model": f"GPT-2-small shape ({params / 1e6:.0f}M)" if not quick else
             f"toy ({params / 1e3:.0f}k)", "dtype": str(dtype).removeprefix("torch."),
             "batch x T": f"{batch} x {shape['block_size']}", "tokens/s": f"{rate:,.0f}",
             "MFU": f"{mfu(rate, flops, peak):.1%}", "peak from": source}]


def part_craft(device: torch.device, quick: bool) -> list[dict]:
    from dataclasses import replace

    from utils.activation_memory import activation_bytes, cuda_memory_bytes, saved_tensor_bytes
    from utils.trainer import build_model

    text = load_corpus("shakespeare")
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    if quick:
        val_ids = val_ids[:5000]
    steps = 20 if quick else 600
    base = preset("shakespeare-char", device, max_steps=steps, eval_interval=steps,
                  eval_batches=2 if quick else 20, dropout=0.0)
    rows = []
    for optimizer in ("adamw", "muon"):
        config = replace(base, optimizer=optimizer)
        result = train(build_model(config, tokenizer.vocab_size), train_ids, val_ids, config,
                       progress=False)
        h = result.history
        rows.append({"what": f"{optimizer}, {steps} steps", "seconds": round(result.seconds, 1),
                     "val, whole held-out split": round(split_loss(
                         result.model, val_ids, config.block_size, device=device), 4),
                     "logged tokens/s": f"{h['tokens_per_s'][-1]:,.0f}",
                     "logged MFU": f"{h['mfu'][-1]:.1%}",
                     "clipped": f"{sum(h['clipped']) / len(h['clipped']):.0%}"})
    # activation memory: the fast preset's shape in float32 (the count assumes no dropout)
    fast = preset("shakespeare-char-fast", "cpu")
    shape = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=fast.block_size,
                      n_layer=fast.n_layer, n_head=fast.n_head, n_embd=fast.n_embd,
                      bias=fast.bias)
    # two tensors: ids and targets are kept separately (one tensor for both is counted once)
    idx, targets = (torch.randint(shape.vocab_size, (fast.batch_size, shape.block_size),
                                  device=device) for _ in range(2))
    for flag in (False, True):
        model = GPT(replace(shape, checkpoint_activations=flag)).to(device)
        row = {"what": "activations" + (", checkpointed" if flag else ""),
               "counted bytes": f"{activation_bytes(shape, fast.batch_size, checkpointed=flag):,}",
               "saved-tensor bytes": f"{saved_tensor_bytes(model, idx, targets):,}"}
        if device.type == "cuda":
            held = cuda_memory_bytes(model, idx, targets)
            row.update({"CUDA held": f"{held['held']:,}", "CUDA peak": f"{held['peak']:,}"})
        rows.append(row)
    columns = {key: "" for row in rows for key in row}   # one table: every row every column
    return [{**columns, **row} for row in rows]


def part_bench(device: torch.device, quick: bool) -> list[dict]:
    runs = [["bench/bench_attention.py", "--tiled", "--device", device.type],
            ["bench/bench_generation.py", "--device", device.type]]
    if quick:
        runs = [["bench/bench_attention.py", "--tiled", "--device", device.type, "--seq-lens", "256",
                 "--repeats", "1"], ["bench/bench_generation.py", "--device", device.type, "--quick"]]
    rows = []
    for command in runs:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True,
                              text=True)
        print(done.stdout[-4000:], flush=True)
        rows.append({"benchmark": " ".join(command), "seconds": round(time.perf_counter() - start, 1),
                     "result": "ok" if done.returncode == 0 else
                     f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"})
    return rows


RUNNERS: dict[str, Callable[[torch.device, bool], list[dict]]] = {
    "notebooks": part_notebooks, "train": part_train, "ladder": part_ladder, "gpt2": part_gpt2,
    "craft": part_craft, "bench": part_bench}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="run only this part (repeatable); default: all")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: best available)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: rehearse the plan")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    record_path = run_dir("gpu_check") / f"{device.type}{'-quick' if args.quick else ''}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update(device=(torch.cuda.get_device_name(device) if device.type == "cuda"
                          else device.type), torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d"))
    failed = False
    for part in args.part or PARTS:
        print(f"\n## {part} on {record['device']}\n", flush=True)
        with stopwatch(device) as watch:
            try:
                rows = RUNNERS[part](device, args.quick)
            except Exception as error:   # one broken part must not hide the others' results
                rows = [{"part": part, "result": f"{type(error).__name__}: {error}"}]
                failed = True
        failed |= any("result" in row and row["result"] != "ok" for row in rows)
        print(markdown_table(rows))
        print(f"\n({part}: {watch.seconds:.0f} s)", flush=True)
        record[part] = {"seconds": round(watch.seconds, 1), "rows": rows}
        record_path.write_text(json.dumps(record, indent=1, default=str))
    if args.quick:
        print("\n(--quick: toy sizes, so tokens/s and MFU say nothing about the device; this run"
              " only shows that every part works)")
    print(f"\nrecord: {record_path.relative_to(REPO_ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
