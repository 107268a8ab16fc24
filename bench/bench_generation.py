"""Generation speed (chapter 09): the KV cache, speculative decoding, int8 weights.

    python bench/bench_generation.py                  # all three tables (several CPU minutes)
    python bench/bench_generation.py --quick          # a small subset, to try it (~1 minute)
    python bench/bench_generation.py --device cuda    # the same on a GPU
    python bench/bench_generation.py --only speculative --ks 2 4 6

Run it on a quiet machine with one thread for numbers that compare (`OMP_NUM_THREADS=1`).
Every time is the best of `--repeats` runs: other programs only ever make a run slower.

1. KV cache. A fresh (untrained) GPT with block_size 1152, 4 layers of width 128, writes
   256, 512 and 1024 tokens greedily from a one-token prompt, with and without the cache.
   Without it, step t re-reads all t tokens, so the work per token grows with the text and
   the total with its square; with it, each step reads one token. The model is wide enough
   that, without the cache, the matrix multiplies (not Python's per-layer overhead) take
   most of the time past a few dozen tokens. The tokens are checked to be equal. The runs
   without the cache are long (a minute for 1024 tokens on one CPU thread), so they run once.
2. Speculative decoding. The shipped `shakespeare-char` model (6 layers, width 128) is the
   target; the shipped `shakespeare-char-draft` (2 layers) proposes k tokens a round. For a
   few prompts from the held-out text it writes `--new-tokens` tokens greedily (prompt +
   new tokens stay within block_size 128, where both models use their cache) and reports,
   per k: acceptance rate, tokens per target pass, tokens/s, and the speed-up over the
   target's own cached greedy decoding; "same text" checks the output is identical.
3. Quantisation. The shipped model in float32 and with int8 weights
   (`utils.quantization.quantize_model_int8`): size in bytes, loss on the whole held-out
   split (`utils.train.split_loss`) and greedy tokens/s with the cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.data import load_corpus, train_val_split  # noqa: E402
from utils.device import get_device  # noqa: E402
from utils.generation import generate  # noqa: E402
from utils.model import GPT, GPTConfig  # noqa: E402
from utils.pretrained import load_pretrained  # noqa: E402
from utils.speculative import speculative_generate  # noqa: E402
from utils.train import split_loss  # noqa: E402


def best_time(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """(best wall time in seconds over `repeats` calls of fn(), fn's last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def kv_cache_table(lengths: list[int], repeats: int, device: torch.device) -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=76, block_size=1152, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    print(f"\n1. KV cache: fresh GPT {config.n_layer} layers x {config.n_embd}, block_size "
          f"{config.block_size}, {model.get_num_params():,} parameters, greedy, on {device}")
    print(f"{'new tokens':>10} | {'no cache tok/s':>14} | {'cache tok/s':>11} | "
          f"{'speed-up':>8} | same tokens")
    for n in lengths:
        t_off, out_off = best_time(lambda n=n: generate(model, prompt, n, temperature=0,
                                                        use_cache=False), 1, device)
        t_on, out_on = best_time(lambda n=n: generate(model, prompt, n, temperature=0,
                                                      use_cache=True), repeats, device)
        print(f"{n:>10} | {n / t_off:>14.1f} | {n / t_on:>11.1f} | {t_off / t_on:>7.1f}x | "
              f"{torch.equal(out_off, out_on)}", flush=True)


def prompts_from_val(tokenizer, n_prompts: int, length: int, device) -> list[torch.Tensor]:
    """`n_prompts` prompts of `length` characters, each starting a line of the held-out play."""
    _, val_text = train_val_split(load_corpus())
    starts = [i + 1 for i, ch in enumerate(val_text[:-length - 1]) if ch == "\n"]
    step = max(1, len(starts) // n_prompts)
    return [torch.tensor([tokenizer.encode(val_text[s:s + length])], device=device)
            for s in starts[::step][:n_prompts]]


def speculative_table(ks: list[int], new_tokens: int, n_prompts: int, repeats: int,
                      device: torch.device) -> None:
    target, tokenizer = load_pretrained("shakespeare-char", device=device)
    draft, _ = load_pretrained("shakespeare-char-draft", device=device)
    prompt_len = min(24, target.config.block_size - new_tokens)
    if prompt_len < 1:
        raise SystemExit(f"--new-tokens must be below block_size={target.config.block_size}")
    prompts = prompts_from_val(tokenizer, n_prompts, prompt_len, device)

    def own():
        return [generate(target, p, new_tokens, temperature=0) for p in prompts]

    def step_time(model):            # one cached decoding step, averaged over new_tokens steps
        return best_time(lambda: generate(model, prompts[0], new_tokens, temperature=0),
                         repeats, device)[0] / new_tokens

    t_own, reference = best_time(own, repeats, device)
    total = new_tokens * len(prompts)
    ratio = step_time(draft) / step_time(target)
    print(f"\n2. Speculative decoding: target shakespeare-char ({target.get_num_params():,} "
          f"parameters), draft shakespeare-char-draft ({draft.get_num_params():,}); "
          f"{len(prompts)} prompts of {prompt_len} characters + {new_tokens} new tokens, "
          f"greedy, on {device}")
    print(f"   target alone (cached greedy): {total / t_own:.1f} tokens/s; one draft step "
          f"costs {ratio:.2f} target steps")
    print(f"{'k':>3} | {'acceptance':>10} | {'tokens/pass':>11} | {'tokens/s':>8} | "
          f"{'speed-up':>8} | same text")
    for k in ks:
        def spec(k=k):
            return [speculative_generate(target, draft, p, new_tokens, k=k) for p in prompts]
        t_spec, results = best_time(spec, repeats, device)
        same = all(torch.equal(out, ref) for (out, _), ref in zip(results, reference, strict=True))
        accepted = sum(s["accepted"] for _, s in results)
        proposed = sum(s["proposed"] for _, s in results)
        passes = sum(s["target_calls"] for _, s in results)
        print(f"{k:>3} | {accepted / proposed:>10.3f} | {total / passes:>11.2f} | "
              f"{total / t_spec:>8.1f} | {t_own / t_spec:>7.2f}x | {same}", flush=True)


def quantization_table(new_tokens: int, repeats: int, device: torch.device) -> None:
    print("\n3. Quantisation: shakespeare-char, float32 vs int8 weight-only (per output channel)")
    try:
        from utils.quantization import model_size_bytes, quantize_model_int8
    except ImportError as error:
        print(f"   not available: utils.quantization could not be imported ({error})")
        return
    model, tokenizer = load_pretrained("shakespeare-char", device=device)
    _, val_ids = train_val_split(torch.tensor(tokenizer.encode(load_corpus())))
    prompt = torch.tensor([tokenizer.encode("ROMEO:\n")], device=device)
    print(f"{'weights':>8} | {'size (bytes)':>12} | {'val loss':>8} | {'tokens/s':>8} | "
          f"on {device}, {new_tokens} greedy tokens")
    for name, m in (("float32", model), ("int8", quantize_model_int8(model))):
        loss = split_loss(m, val_ids, m.config.block_size, device=device)
        t, _ = best_time(lambda m=m: generate(m, prompt, new_tokens, temperature=0),
                         repeats, device)
        print(f"{name:>8} | {model_size_bytes(m):>12,} | {loss:>8.4f} | "
              f"{new_tokens / t:>8.1f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset: 256 tokens for the cache, k = 2 and 4, one repeat")
    parser.add_argument("--only", choices=["kv", "speculative", "quantization"], default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024],
                        help="new tokens for the KV-cache table")
    parser.add_argument("--ks", type=int, nargs="+", default=list(range(2, 9)),
                        help="tokens proposed per round for the speculative table")
    parser.add_argument("--new-tokens", type=int, default=100,
                        help="tokens per prompt in the speculative and quantisation tables")
    parser.add_argument("--prompts", type=int, default=8, help="prompts for the speculative table")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.ks, args.prompts, args.repeats = [256], [2, 4], 3, 1
    device = get_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}")
    if args.only in (None, "kv"):
        kv_cache_table(args.lengths, args.repeats, device)
    if args.only in (None, "speculative"):
        speculative_table(args.ks, args.new_tokens, args.prompts, args.repeats, device)
    if args.only in (None, "quantization"):
        quantization_table(args.new_tokens, args.repeats, device)


if __name__ == "__main__":
    main()
