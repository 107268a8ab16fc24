"""Generation speed (chapters 09, 11): KV cache, speculative decoding, int8, batching.

    python bench/bench_generation.py                  # all four tables (several CPU minutes)
    python bench/bench_generation.py --quick          # a small subset, to try it (~1 minute)
    python bench/bench_generation.py --device cuda    # the same on a GPU
    python bench/bench_generation.py --only speculative --ks 2 4 6 --lookups 3:8 3:16

Run it on a quiet machine with one thread for numbers that compare (`OMP_NUM_THREADS=1`).
Tables 1 and 3 keep the best of `--repeats` runs (other programs only ever make a run slower);
tables 2 and 4 compare methods with each other, so they take turns, once per repeat, and
each reports its median (`utils.timing`): a busy spell of a shared machine then slows all alike.

1. KV cache. A fresh (untrained) GPT with block_size 1152, 4 layers of width 128, writes
   256, 512 and 1024 tokens greedily from a one-token prompt, with and without the cache.
   Without it, step t re-reads all t tokens, so the work per token grows with the text and
   the total with its square; with it, each step reads one token. The model is wide enough
   that, without the cache, the matrix multiplies (not Python's per-layer overhead) take
   most of the time past a few dozen tokens. The tokens are checked to be equal. The runs
   without the cache are long (a minute for 1024 tokens on one CPU thread), so they run once.
2. Speculative decoding. The shipped `shakespeare-char` model (6 layers, width 128) is the
   target. Two drafts propose k tokens a round: the shipped `shakespeare-char-draft` (a
   2-layer model), and prompt lookup (no model: what followed the latest earlier occurrence
   of the last n characters). For `--prompts` prompts of `--prompt-len` characters from the
   held-out play it writes `--spec-new-tokens` tokens greedily (prompt + new tokens stay
   within block_size 128, where the models keep their caches) and reports per setting: the
   acceptance rate alpha (acceptances among the proposals the target checked), tokens per
   target pass, what (1 - alpha^(k+1)) / (1 - alpha) predicts for it (learned draft: k
   proposals every round), tokens/s, and the speed-up over the target's own cached greedy
   decoding in the same run; "same text" checks the output is identical. The small model's
   greedy text falls into loops ("of the strangers of the strangers"), which is what lookup
   exploits; text that does not repeat itself gives it nothing to copy.
3. Quantisation. The shipped model in float32 and with int8 weights
   (`utils.quantization.quantize_model_int8`): size in bytes, loss on the whole held-out
   split (`utils.trainer.split_loss`) and greedy tokens/s with the cache.
4. Batched generation. `--batch-prompts` prompts from the held-out play, of lengths spread
   evenly from 1 to 64 characters, each continued by `--batch-new-tokens` greedy tokens with
   the shipped model: one `generate` call per prompt, against `generate_batch` on all of
   them at once (left-padded, one KV cache) and on groups of 4. The methods take turns, once
   per repeat, and each reports its median; "same text" checks every row against the
   one-at-a-time text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.batch_generation import generate_batch  # noqa: E402
from utils.data import load_corpus, train_val_split  # noqa: E402
from utils.device import get_device  # noqa: E402
from utils.generation import generate  # noqa: E402
from utils.model import GPT, GPTConfig  # noqa: E402
from utils.pretrained import load_pretrained  # noqa: E402
from utils.speculative import (  # noqa: E402
    expected_tokens_per_round,
    prompt_lookup_generate,
    speculative_generate,
)
from utils.timing import stopwatch, time_call  # noqa: E402
from utils.trainer import split_loss  # noqa: E402


def best_time(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """(best wall time in seconds over `repeats` calls of fn(), fn's last result)."""
    results = []
    timing = time_call(lambda: results.append(fn()), repeats=repeats, warmup=0, device=device)
    return timing.best, results[-1]


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


def interleaved_medians(methods: dict, repeats: int, device) -> tuple[dict, dict]:
    """Time every method once per repeat, in turn, so that a busy spell of a shared machine
    slows all of them alike; return ({name: median seconds}, {name: last result})."""
    seconds, results = {name: [] for name in methods}, {}
    for name, fn in methods.items():                    # warm-up: first calls allocate
        results[name] = fn()
    for _ in range(repeats):
        for name, fn in methods.items():
            with stopwatch(device) as watch:
                results[name] = fn()
            seconds[name].append(watch.seconds)
    return {name: statistics.median(t) for name, t in seconds.items()}, results


def speculative_table(ks: list[int], lookups: list[tuple[int, int]], prompt_len: int,
                      new_tokens: int, n_prompts: int, repeats: int, device: torch.device) -> None:
    target, tokenizer = load_pretrained("shakespeare-char", device=device)
    draft, _ = load_pretrained("shakespeare-char-draft", device=device)
    if prompt_len < 1 or prompt_len + new_tokens > target.config.block_size:
        raise SystemExit(f"--prompt-len + --spec-new-tokens must fit in block_size="
                         f"{target.config.block_size} (both models then keep their cache)")
    prompts = prompts_from_val(tokenizer, n_prompts, prompt_len, device)
    total = new_tokens * len(prompts)

    def plain():
        return [(generate(target, p, new_tokens, temperature=0), None) for p in prompts]

    methods = {("target alone (cached greedy)", "", ""): plain}
    for k in ks:
        methods["learned draft (2 x 96)", k, ""] = lambda k=k: [
            speculative_generate(target, draft, p, new_tokens, k=k) for p in prompts]
    for ngram, k in lookups:
        methods["prompt lookup", k, ngram] = lambda k=k, ngram=ngram: [
            prompt_lookup_generate(target, p, new_tokens, k=k, ngram=ngram) for p in prompts]
    # control: the same loop with an n-gram longer than any text here, so it never proposes;
    # what it costs over plain decoding is the loop's own bookkeeping, not the lookup's gain
    never = target.config.block_size + 1
    methods["lookup loop, never proposing", 8, "-"] = lambda: [
        prompt_lookup_generate(target, p, new_tokens, k=8, ngram=never) for p in prompts]
    seconds, results = interleaved_medians(methods, repeats, device)
    reference = [out for out, _ in results[next(iter(methods))]]
    t_plain = seconds[next(iter(methods))]
    ratio = (time_call(lambda: generate(draft, prompts[0], new_tokens, temperature=0),
                       repeats=repeats, device=device).median
             / time_call(lambda: generate(target, prompts[0], new_tokens, temperature=0),
                         repeats=repeats, device=device).median)
    print(f"\n2. Speculative decoding: target shakespeare-char ({target.get_num_params():,} "
          f"parameters), learned draft shakespeare-char-draft ({draft.get_num_params():,}; "
          f"one decode step costs {ratio:.2f} target steps), prompt lookup (no model); "
          f"{len(prompts)} prompts of {prompt_len} characters + {new_tokens} new tokens, greedy, "
          f"on {device}, median of {repeats}")
    print(f"{'method':<28} | {'k':>2} | {'n':>1} | {'alpha':>5} | {'tokens/pass':>11} | "
          f"{'formula':>7} | {'tokens/s':>8} | {'speed-up':>8} | same text")
    for (name, k, ngram), t in seconds.items():
        runs = results[name, k, ngram]
        same = all(torch.equal(out, ref) for (out, _), ref in zip(runs, reference, strict=True))
        cells = ["", "1.00", ""]
        if runs[0][1] is not None:
            accepted = sum(s["accepted"] for _, s in runs)
            alpha = accepted / max(1, sum(s["checked"] for _, s in runs))
            passes = sum(s["target_calls"] for _, s in runs)
            # the formula assumes k proposals every round: only the learned draft makes them
            formula = "-" if ngram else f"{expected_tokens_per_round(alpha, k):.2f}"
            cells = [f"{alpha:.2f}", f"{total / passes:.2f}", formula]
        print(f"{name:<28} | {k!s:>2} | {ngram!s:>1} | {cells[0]:>5} | {cells[1]:>11} | "
              f"{cells[2]:>7} | {total / t:>8.1f} | {t_plain / t:>7.2f}x | {same}", flush=True)


def lookup_limits_table(ngram: int, k: int, prompt_len: int, new_tokens: int, n_prompts: int,
                        repeats: int, device: torch.device) -> None:
    """Where prompt lookup does not pay: text that does not repeat itself."""
    target, tokenizer = load_pretrained("shakespeare-char", device=device)
    prompts = prompts_from_val(tokenizer, n_prompts, prompt_len, device)
    # a passage of the play, a blank line, and its first 8 characters again: a model that
    # copies would go on quoting it (this small one does not)
    passages = prompts_from_val(tokenizer, n_prompts, 56, device)
    quotes = [torch.cat([q, torch.tensor([tokenizer.encode("\n\n")], device=device), q[:, :8]], 1)
              for q in passages]
    quote_new = target.config.block_size - quotes[0].size(1)

    def seeded(i):
        return torch.Generator().manual_seed(i)

    tasks = {  # name: (plain decoding, prompt lookup)
        "greedy, quoting a passage": (
            lambda: [generate(target, q, quote_new, temperature=0) for q in quotes],
            lambda: [prompt_lookup_generate(target, q, quote_new, k=k, ngram=ngram)
                     for q in quotes]),
        "sampling at temperature 0.8": (
            lambda: [generate(target, p, new_tokens, temperature=0.8, generator=seeded(i))
                     for i, p in enumerate(prompts)],
            lambda: [prompt_lookup_generate(target, p, new_tokens, k=k, ngram=ngram,
                                            temperature=0.8, generator=seeded(i))
                     for i, p in enumerate(prompts)]),
    }
    print(f"\n2b. Where prompt lookup (n={ngram}, k={k}) does not pay, on {device}, median of "
          f"{repeats}: {n_prompts} passages of 56 characters + a blank line + their first 8 "
          f"again, then {quote_new} greedy tokens; {n_prompts} prompts of {prompt_len} "
          f"characters + {new_tokens} sampled tokens (exact in distribution, not the same text)")
    print(f"{'task':<28} | {'alpha':>5} | {'tokens/pass':>11} | {'plain tok/s':>11} | "
          f"{'lookup tok/s':>12} | speed-up")
    for name, (plain, lookup) in tasks.items():
        seconds, results = interleaved_medians({"plain": plain, "lookup": lookup}, repeats,
                                               device)
        runs = results["lookup"]
        total = sum(out.size(1) for out, _ in runs) - sum(
            (quotes if "quoting" in name else prompts)[i].size(1) for i in range(len(runs)))
        alpha = sum(s["accepted"] for _, s in runs) / max(1, sum(s["checked"] for _, s in runs))
        passes = sum(s["target_calls"] for _, s in runs)
        print(f"{name:<28} | {alpha:>5.2f} | {total / passes:>11.2f} | "
              f"{total / seconds['plain']:>11.1f} | {total / seconds['lookup']:>12.1f} | "
              f"{seconds['plain'] / seconds['lookup']:>7.2f}x", flush=True)


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


def batch_table(n_prompts: int, new_tokens: int, repeats: int, device: torch.device) -> None:
    model, tokenizer = load_pretrained("shakespeare-char", device=device)
    longest = min(64, model.config.block_size - new_tokens)
    if longest < 1:
        raise SystemExit(f"--batch-new-tokens must leave room for a prompt in block_size="
                         f"{model.config.block_size}")
    lengths = [1 + (longest - 1) * i // max(1, n_prompts - 1) for i in range(n_prompts)]
    texts = prompts_from_val(tokenizer, n_prompts, longest, device)
    prompts = [t[0, :n].tolist() for t, n in zip(texts, lengths, strict=True)]
    total = new_tokens * len(prompts)

    def one_at_a_time():
        return [generate(model, torch.tensor([p], device=device), new_tokens,
                         temperature=0)[0].tolist() for p in prompts]

    def in_groups(size):
        return [row for g in range(0, len(prompts), size)
                for row in generate_batch(model, prompts[g:g + size], new_tokens)]

    methods = {f"one at a time ({len(prompts)} x generate)": one_at_a_time,
               f"generate_batch, all {len(prompts)} at once": lambda: in_groups(len(prompts)),
               "generate_batch, groups of 4": lambda: in_groups(4)}
    seconds, results = interleaved_medians(methods, repeats, device)
    reference = results[next(iter(methods))]
    t_alone = seconds[next(iter(methods))]
    print(f"\n4. Batched generation: shakespeare-char, {len(prompts)} prompts of "
          f"{lengths[0]}..{lengths[-1]} characters + {new_tokens} greedy tokens each, on "
          f"{device}, median of {repeats}")
    print(f"{'method':<34} | {'seconds':>7} | {'tokens/s':>8} | {'speed-up':>8} | same text")
    for name, t in seconds.items():
        print(f"{name:<34} | {t:>7.3f} | {total / t:>8.1f} | {t_alone / t:>7.2f}x | "
              f"{results[name] == reference}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset: 256 tokens for the cache, k = 2 and 4, lookup 3:8, "
                             "3 prompts, one repeat")
    parser.add_argument("--only", choices=["kv", "speculative", "quantization", "batch"],
                        default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024],
                        help="new tokens for the KV-cache table")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 6],
                        help="tokens the learned draft proposes per round")
    parser.add_argument("--lookups", nargs="+", default=["3:8", "2:8", "3:16", "4:16"],
                        help="prompt-lookup settings, each ngram:k")
    parser.add_argument("--prompt-len", type=int, default=8,
                        help="characters per prompt in the speculative table")
    parser.add_argument("--spec-new-tokens", type=int, default=120,
                        help="tokens per prompt in the speculative table (prompt + these must "
                             "fit in the 128-token context)")
    parser.add_argument("--new-tokens", type=int, default=100,
                        help="tokens per prompt in the quantisation table")
    parser.add_argument("--prompts", type=int, default=8, help="prompts for the speculative table")
    parser.add_argument("--batch-prompts", type=int, default=16,
                        help="prompts for the batched-generation table")
    parser.add_argument("--batch-new-tokens", type=int, default=64,
                        help="greedy tokens per prompt in the batched-generation table")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per measurement (KV cache and int8: best kept; speculative "
                             "and batched: median, the methods taking turns)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.ks, args.lookups = [256], [2, 4], ["3:8"]
        args.prompts, args.repeats = 3, 1
    device = get_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}")
    if args.only in (None, "kv"):
        kv_cache_table(args.lengths, args.repeats, device)
    if args.only in (None, "speculative"):
        lookups = [tuple(int(x) for x in pair.split(":")) for pair in args.lookups]
        speculative_table(args.ks, lookups, args.prompt_len, args.spec_new_tokens,
                          args.prompts, args.repeats, device)
        lookup_limits_table(*lookups[0], args.prompt_len, args.spec_new_tokens, args.prompts,
                            args.repeats, device)
    if args.only in (None, "quantization"):
        quantization_table(args.new_tokens, args.repeats, device)
    if args.only in (None, "batch"):
        batch_table(args.batch_prompts, args.batch_new_tokens, args.repeats, device)


if __name__ == "__main__":
    main()
