"""Training on a budget: nanoGPT's CPU "baby" settings against the course's recipes, side by side.

    python bench/bench_train.py                     # CPU: baby, then the fast preset with AdamW
                                                    # and with Muon, at the baby run's wall time
    python bench/bench_train.py --tricks            # CPU: the speedruns' tricks on top of Muon,
                                                    # one at a time, several seeds (~1 hour)
    python bench/bench_train.py --device cuda       # GPU: the cuda preset for a fixed step count

CPU: first the baby run (4 layers, 4 heads, width 128, block 64, batch 12, 2000 iterations,
lr 1e-3 with warm-up and cosine to 1e-4, no dropout) on data/shakespeare.txt, timed; then a
course preset (`--ours`, default `shakespeare-char-fast`, the recipe for a few CPU minutes) for
the SAME wall time, once with AdamW and once with Muon (`optimizer="muon"`: Muon for the
blocks' matrices, AdamW for the rest, at the same lr). Equal wall time without trusting the
machine to stay equally busy: short probes of two recipes, alternated, give the ratio of their
seconds per step, and each recipe gets the baby run's step count times that ratio (the schedule
is fitted to it). Every run is scored on the whole held-out split (`split_loss`).

--tricks: each trick of the public speedruns (QK-norm, ReLU², zero-initialised output
projections, an untied output layer, logit soft-capping, a warm-down schedule) ON TOP of the
Muon run, one at a time, each at the baby run's wall time: a trick that changes the model's
arithmetic is probed against the Muon run and gets that ratio of its steps; one that changes
only the initial weights or the schedule costs the same per step and gets the same steps (a
probe would only add noise). Several seeds per arm; a trick is kept when its mean beats the Muon
run's by more than twice the standard error of the difference; the kept ones together are then
measured again. Prints markdown tables, and each result as soon as it is known.

GPU: trains the `--ours` preset's CUDA settings (default `shakespeare-char`) for `--gpu-steps`
steps with AdamW and with Muon, and reports time, tokens per second and validation loss.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field, replace

import torch

from utils.data import load_corpus, train_val_split
from utils.device import get_device, machine_description
from utils.evaluation import split_loss
from utils.model import GPT, GPTConfig
from utils.timing import stopwatch
from utils.tokenizers import CharTokenizer
from utils.train_config import TrainConfig, preset
from utils.trainer import train

# name -> (GPTConfig changes, TrainConfig changes); each is measured on top of the Muon run.
TRICKS: dict[str, tuple[dict, dict]] = {
    "QK-norm": ({"qk_norm": True}, {}),
    "ReLU²": ({"mlp": "relu2"}, {}),
    "zero-init projections": ({"zero_init_proj": True}, {}),
    "untied output layer": ({"tie_weights": False}, {}),
    "logit soft-cap 15": ({"logit_softcap": 15.0}, {}),
    "warm-down (wsd, last 30 %)": ({}, {"schedule": "wsd", "warmdown_frac": 0.3}),
}
# These change only the initial weights or the learning rate of each step: the same
# arithmetic per step, so the same step count as the Muon run.
SAME_COST = {"zero-init projections", "warm-down (wsd, last 30 %)"}


@dataclass
class Arm:
    """One recipe: the trainer's settings and the model changes on top of them."""

    name: str
    config: TrainConfig
    model: dict = field(default_factory=dict)

    def build(self, vocab_size: int, seed: int | None = None) -> GPT:
        """The GPT the trainer's build_model makes, plus this arm's changes."""
        c = self.config
        torch.manual_seed(c.seed if seed is None else seed)
        return GPT(GPTConfig(vocab_size=vocab_size, block_size=c.block_size, n_layer=c.n_layer,
                             n_head=c.n_head, n_embd=c.n_embd, dropout=c.dropout, bias=c.bias,
                             **self.model))

    def with_steps(self, steps: int) -> Arm:
        """This arm with its schedule fitted to `steps` (warm-up at most a tenth of them)."""
        c = replace(self.config, max_steps=steps, warmup_steps=min(self.config.warmup_steps,
                                                                   steps // 10),
                    eval_interval=steps, decay_steps=0)
        return replace(self, config=c)


def run(arm: Arm, data, vocab_size: int, device, seed: int | None = None) -> dict:
    """Train `arm` once (seed: weights and data order), timed; score the whole val split."""
    train_ids, val_ids = data
    config = arm.config if seed is None else replace(arm.config, seed=seed)
    model = replace(arm, config=config).build(vocab_size)
    with stopwatch(device) as watch:
        result = train(model, train_ids, None, config, progress=False)
    val = split_loss(result.model, val_ids, config.block_size, device=device)
    return {"name": arm.name, "steps": config.max_steps, "seconds": watch.seconds,
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": config.max_steps * config.tokens_per_step, "val": val, "seed": config.seed}


def seconds_per_step(arm: Arm, train_ids, vocab_size: int, device, steps: int) -> float:
    """Seconds per optimizer step of `arm`, from a few steps after a 3-step warm-up.

    Read from the trainer's own clock (history's tokens/s, which counts the training steps
    and not the loss estimates at the start and end of a run): those cost the two recipes
    different amounts and would bias the ratio."""
    probe = replace(arm.with_steps(steps).config, warmup_steps=1, log_interval=steps)
    model = arm.build(vocab_size)
    train(model, train_ids[:200_000], None, replace(probe, max_steps=3), progress=False)
    history = train(model, train_ids, None, probe, progress=False).history
    return probe.tokens_per_step / history["tokens_per_s"][-1]


def probe_ratio(a: Arm, b: Arm, train_ids, vocab_size: int, device, rounds: int = 3,
                steps: int = 20) -> tuple[float, float, float]:
    """(median, min, max) over `rounds` of a's seconds per step / b's, probed back to back.

    The order alternates (a b, b a, a b, ...), so a load that rises or falls steadily during
    the probes biases neither; the median drops a round that a burst of other work hit."""
    ratios = []
    for r in range(rounds):
        pair = (a, b) if r % 2 == 0 else (b, a)
        t = {arm.name: seconds_per_step(arm, train_ids, vocab_size, device, steps) for arm in pair}
        ratios.append(t[a.name] / t[b.name])
    return statistics.median(ratios), min(ratios), max(ratios)


def steps_for(arm: Arm, reference: Arm, reference_steps: int, data, vocab_size, device,
              rounds: int = 3) -> tuple[int, str]:
    """`reference_steps` scaled by reference's seconds per step over arm's: equal wall time."""
    ratio, low, high = probe_ratio(arm, reference, data[0], vocab_size, device, rounds)
    steps = max(20, int(reference_steps / ratio))
    print(f"{arm.name}: {ratio:.3f}x {reference.name}'s seconds per step "
          f"(rounds {low:.3f}-{high:.3f}) -> {steps} steps", flush=True)
    return steps, f"{ratio:.2f}"


# ------------------------------------------------------------------------ the two CPU modes

def side_by_side(baby: Arm, ours: Arm, data, vocab_size, device) -> None:
    """Baby (AdamW), ours with AdamW, ours with Muon, all at the baby run's wall time."""
    rows = [run(baby, data, vocab_size, device)]
    print(f"baby: {rows[0]['seconds']:.0f} s, val {rows[0]['val']:.4f}", flush=True)
    muon = replace(ours, name=ours.name.replace("AdamW", "Muon"),
                   config=replace(ours.config, optimizer="muon"))
    for arm in (ours, muon):
        steps, _ = steps_for(arm, baby, baby.config.max_steps, data, vocab_size, device)
        rows.append(run(arm.with_steps(steps), data, vocab_size, device))
        print(f"{arm.name}: {rows[-1]['seconds']:.0f} s, val {rows[-1]['val']:.4f}", flush=True)
    print("\n| run | params | steps | tokens seen | wall s | val loss (whole split) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['params']:,} | {r['steps']} | {r['tokens']:,} | "
              f"{r['seconds']:.0f} | {r['val']:.4f} |")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def beyond_noise(base: list[float], other: list[float]) -> tuple[float, float]:
    """(other's mean - base's, twice the standard error of that difference).

    The spread is pooled over both arms (with two or three seeds each, one arm's own spread
    is too rough to trust alone)."""
    nb, no = len(base), len(other)
    pooled = ((nb - 1) * statistics.variance(base) + (no - 1) * statistics.variance(other)) / (
        nb + no - 2)
    return (statistics.fmean(other) - statistics.fmean(base),
            2 * math.sqrt(pooled * (1 / nb + 1 / no)))


def tricks(baby: Arm, ours: Arm, data, vocab_size, device, names: list[str],
           base_seeds: list[int], seeds: list[int], combine: bool = True) -> None:
    """Each trick on top of Muon at the baby run's wall time, then the kept ones together."""
    muon = replace(ours, name="Muon", config=replace(ours.config, optimizer="muon"))
    started = time.perf_counter()
    base_steps, base_ratio = steps_for(muon, baby, baby.config.max_steps, data, vocab_size,
                                       device, rounds=3)
    rows = []

    def measure(arm: Arm, steps: int, ratio: str, arm_seeds: list[int]) -> list[float]:
        vals = []
        for seed in arm_seeds:
            r = run(arm.with_steps(steps), data, vocab_size, device, seed=seed)
            vals.append(r["val"])
            print(f"  {arm.name} seed {seed}: {r['steps']} steps, {r['seconds']:.0f} s, "
                  f"val {r['val']:.4f}  [{(time.perf_counter() - started) / 60:.1f} min]",
                  flush=True)
        rows.append((arm.name, ratio, steps, vals))
        return vals

    base = measure(muon, base_steps, base_ratio + " (vs baby)", base_seeds)
    kept_model, kept_train, kept = {}, {}, []
    for name in names:
        model_changes, train_changes = TRICKS[name]
        arm = Arm(name, replace(muon.config, **train_changes), {**muon.model, **model_changes})
        if name in SAME_COST:
            steps, ratio = base_steps, "1 (same)"
        else:
            steps, ratio = steps_for(arm, muon, base_steps, data, vocab_size, device)
        vals = measure(arm, steps, ratio, seeds)
        delta, noise = beyond_noise(base, vals)
        if delta < -noise:
            kept.append(name)
            kept_model.update(model_changes)
            kept_train.update(train_changes)
    print(f"\nkept: {kept or 'none'}", flush=True)
    if combine and len(kept) > 1:
        arm = Arm("kept together: " + " + ".join(kept), replace(muon.config, **kept_train),
                  kept_model)
        if all(name in SAME_COST for name in kept):
            steps, ratio = base_steps, "1 (same)"
        else:
            steps, ratio = steps_for(arm, muon, base_steps, data, vocab_size, device)
        measure(arm, steps, ratio, seeds)

    print(f"\nall runs: {(time.perf_counter() - started) / 60:.1f} min")
    print("\n| on top of Muon | s/step vs Muon | steps | val per seed | mean ± std "
          "| Δ vs Muon (± 2 se) | kept |")
    print("|---|---:|---:|---|---:|---:|---|")
    for name, ratio, steps, vals in rows:
        mean, std = mean_std(vals)
        per_seed = ", ".join(f"{v:.4f}" for v in vals)
        if vals is base:
            cells, keep = "—", ""
        else:
            delta, noise = beyond_noise(base, vals)
            cells = f"{delta:+.4f} (± {noise:.4f})"
            keep = "yes" if name in kept else ("" if name.startswith("kept") else "no")
        print(f"| {name} | {ratio} | {steps} | {per_seed} | {mean:.4f} ± {std:.4f} | "
              f"{cells} | {keep} |")


# ------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--ours", default=None,
                        help="the course preset to compare (default: shakespeare-char-fast on a "
                             "CPU, shakespeare-char on a GPU; shakespeare-char is the hour-long "
                             "recipe of the shipped checkpoint)")
    parser.add_argument("--baby-steps", type=int, default=2000,
                        help="iterations of the baby run (nanoGPT's: 2000)")
    parser.add_argument("--gpu-steps", type=int, default=2000)
    parser.add_argument("--tricks", action="store_true",
                        help="measure the speedruns' tricks on top of Muon instead")
    parser.add_argument("--only", nargs="+", default=list(TRICKS), choices=list(TRICKS),
                        metavar="TRICK",   # (argparse reads % in a help text as a format)
                        help=f"--tricks: which ones ({', '.join(TRICKS)})".replace("%", "%%"))
    parser.add_argument("--seeds", type=int, default=2, help="--tricks: seeds per trick")
    parser.add_argument("--base-seeds", type=int, default=3,
                        help="--tricks: seeds of the Muon run they are compared with")
    args = parser.parse_args()
    device = get_device(args.device)
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    data = train_val_split(torch.tensor(tokenizer.encode(text)))
    vocab = tokenizer.vocab_size
    print(f"machine: {machine_description()}, torch {torch.__version__}, device {device}")
    if args.ours is None:    # the fast preset has no GPU settings; a GPU runs the full recipe
        args.ours = "shakespeare-char" if device.type == "cuda" else "shakespeare-char-fast"

    if device.type == "cuda":
        print("| run | params | steps | wall s | tokens/s | val loss (whole split) |")
        print("|---|---:|---:|---:|---:|---:|")
        for optimizer in ("adamw", "muon"):
            config = preset(args.ours, device, max_steps=args.gpu_steps, optimizer=optimizer)
            row = run(Arm(f"{args.ours} ({optimizer}, cuda)", config), data, vocab, device)
            print(f"| {row['name']} | {row['params']:,} | {row['steps']} | "
                  f"{row['seconds']:.0f} | {row['tokens'] / row['seconds']:,.0f} | "
                  f"{row['val']:.4f} |", flush=True)
        return

    baby = Arm("nanoGPT baby (AdamW)",
               preset("baby", device, max_steps=args.baby_steps, eval_interval=args.baby_steps))
    ours = Arm(f"course preset {args.ours} (AdamW)", preset(args.ours, device))
    # One short run first: imports, kernel choice and the trainer's one-off peak-FLOP/s
    # measurement happen here, not inside the first timed run.
    train(baby.build(vocab), data[0][:50_000], None,
          replace(baby.config, max_steps=3, warmup_steps=1), progress=False)
    if args.tricks:
        first = ours.config.seed
        tricks(baby, ours, data, vocab, device, args.only,
               base_seeds=[first + i for i in range(args.base_seeds)],
               seeds=[first + i for i in range(args.seeds)])
    else:
        side_by_side(baby, ours, data, vocab, device)


if __name__ == "__main__":
    main()
