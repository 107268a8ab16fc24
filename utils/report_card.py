"""The report card: one table that puts the course's trained models side by side (chapter 11).

    python -m utils.report_card                        # the shipped models -> runs/report_card.md
    python -m utils.report_card --limit 20000          # bits/char on fewer characters (faster)

One row per model, every number measured afresh when the table is made (nothing is copied
from a training log except the count of tokens trained on):

    parameters       every weight counted once (the tied embedding / output matrix once)
    training FLOPs   utils.model's training FLOPs per token x the tokens trained on: pre-training
                     (tokens_per_step x steps of its record), plus the tuning tokens a tuned
                     model's record lists (see `training_flops`)
    val bits/char    `text_bits_per_char` on the held-out text (the last 10 % of the corpus's
                     characters), which is fair across tokenizers: a BPE token spells several
                     characters, so a loss per token would not compare
    one column/task  greedy exact match on held-out chat-task prompts (`utils.chat_tasks`); a
                     tuned model's cell also names its best simple baseline (majority answer,
                     copy the prompt, or the model it was tuned from, untuned)
    preference acc.  how often log p(chosen | prompt) > log p(rejected | prompt) on held-out
                     preference pairs (no reference model, so every row is scored alike)
    tokens/s         greedy generation of GEN_TOKENS tokens, batch 1, KV cache, median of 3

A base model that has tuned versions in the table gets the three special tokens added
(`add_special_tokens`, never trained on) and is scored on the same tasks: that score is the
"untuned" baseline of its tuned versions. A base model with no tuned version (the character
model) gets "—" there: the chat tasks are posed in the BPE models' chat template, which it
has never seen, and no row would be compared with it.
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.paths import REPO_ROOT, RUNS_DIR, write_text_atomic

GEN_TOKENS = 100        # tokens generated per timing (fewer if the context is shorter)
PROMPT_TOKENS = 8       # the timing's prompt: the first tokens of the held-out text
TIMING_REPEATS = 3
DEFAULT_OUT = RUNS_DIR / "report_card.md"
BASELINES = ("majority", "copy", "untuned")


@dataclass(frozen=True)
class Entry:
    """One model of the table: a display name, its weights file, and (for a tuned model) the
    name of the entry it was tuned from, whose pre-training it inherits."""

    name: str
    path: Path
    tuned_from: str | None = None


def shipped_entries() -> list[Entry]:
    """The shipped models of the report card: the char and BPE GPTs and the BPE one's tuned
    versions (utils.pretrained.SHIPPED, without chapter 09's draft model)."""
    from utils.pretrained import pretrained_path

    return [Entry("shakespeare-char", pretrained_path("shakespeare-char")),
            Entry("shakespeare-bpe", pretrained_path("shakespeare-bpe")),
            Entry("shakespeare-bpe-sft", pretrained_path("shakespeare-bpe-sft"), "shakespeare-bpe"),
            Entry("shakespeare-bpe-dpo", pretrained_path("shakespeare-bpe-dpo"), "shakespeare-bpe")]


# ------------------------------------------------------------------------------ the numbers

def count_parameters(model: nn.Module) -> int:
    """Weights of `model`; `parameters()` yields a shared (tied) tensor once."""
    return sum(p.numel() for p in model.parameters())


def read_record(path: Path) -> dict[str, Any]:
    """The .json record next to a weights file (empty when there is none)."""
    import json

    info = Path(path).with_suffix(".json")
    return json.loads(info.read_text()) if info.exists() else {}


def training_flops(config, record: dict[str, Any], base_flops: float | None = None,
                   ) -> tuple[float, str]:
    """(training FLOPs, what was counted) of a model from its config and its record.

    A base model: `estimate_flops_per_token(config, training=True)` (forward + backward,
    about 6 x parameters, attention over the whole block included) x tokens_per_step x steps
    of its record. A tuned model: `base_flops` (its base model's count) plus its record's
    `tuning_tokens`, {"sft": n, "dpo": n}, the tokens its tuning steps pushed through forward
    and backward (padding not counted); DPO's frozen reference also reads each of them
    forward once, a third more. What a record does not say counts 0, and the note says so.

    >>> from utils.model import GPTConfig, estimate_flops_per_token
    >>> cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)
    >>> flops, _ = training_flops(cfg, {"tokens_per_step": 64, "steps": 10})
    >>> flops == estimate_flops_per_token(cfg, training=True) * 640
    True
    """
    from utils.model import estimate_flops_per_token

    train_fpt = float(estimate_flops_per_token(config, training=True))
    if base_flops is None:
        if "tokens_per_step" not in record or "steps" not in record:
            return math.nan, "no record of its training tokens"
        return train_fpt * record["tokens_per_step"] * record["steps"], "pre-training"
    forward_fpt = float(estimate_flops_per_token(config, training=False))
    flops, counted = base_flops, ["pre-training"]
    tuning = record.get("tuning_tokens", {})
    for stage, tokens in tuning.items():
        flops += tokens * (train_fpt + (forward_fpt if stage == "dpo" else 0.0))
        counted.append(stage.upper())
    if not tuning:
        counted.append("(its tuning tokens are not recorded)")
    return flops, " + ".join(counted)


def tuning_tokens(tokenizer, examples=(), sft: dict | None = None, pairs=(),
                  dpo: dict | None = None) -> dict[str, int]:
    """The `tuning_tokens` a tuned model's record should hold: {"sft": n} for an
    instruction_tune run of `sft` (its steps, batch_size) on `examples`, {"dpo": n} for a
    preference_tune run of `dpo` on `pairs` (both when both are given). Each is steps x
    batch_size x the mean tokens one example feeds the model (a DPO pair: prompt + chosen and
    prompt + rejected), padding not counted: the mean, since the batches draw every example
    equally often."""
    from utils.instructions import encode_example

    def fed(prompt: str, response: str) -> int:         # inputs x = ids[:-1]
        return len(encode_example(tokenizer, prompt, response)[0]) - 1

    out = {}
    if sft is not None:
        lengths = [fed(e.instruction, e.response) for e in examples]
        out["sft"] = round(sft["steps"] * sft["batch_size"] * sum(lengths) / len(lengths))
    if dpo is not None:
        lengths = [fed(p.prompt, p.chosen) + fed(p.prompt, p.rejected) for p in pairs]
        out["dpo"] = round(dpo["steps"] * dpo["batch_size"] * sum(lengths) / len(lengths))
    return out


def held_out_text(limit: int | None = None) -> str:
    """The validation text every model is scored on: the last 10 % of the corpus's
    characters (split as text, then encoded), or its first `limit` characters."""
    from utils.data import load_corpus, train_val_split

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of characters, got {limit}")
    return train_val_split(load_corpus())[1][:limit]


def tokens_per_second(model: nn.Module, tokenizer, text: str,
                      device: torch.device | str = "cpu") -> tuple[float, int]:
    """(tokens/s, tokens per timing): greedy generation with the KV cache after a prompt of
    PROMPT_TOKENS tokens of `text`, batch 1; the median of TIMING_REPEATS timings (one
    untimed warm-up), through utils.timing, which waits for a GPU."""
    from utils.generation import generate
    from utils.timing import time_call

    prompt = tokenizer.encode(text)[:PROMPT_TOKENS]
    n_new = min(GEN_TOKENS, model.config.block_size - len(prompt))
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    timing = time_call(lambda: generate(model, idx, n_new, temperature=0, crop=False),
                       repeats=TIMING_REPEATS, warmup=1, device=device)
    return n_new / timing.median, n_new


def _spread(items: list, n: int | None) -> list:
    """`n` items spaced evenly through `items` (all of them when n is None or larger)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def held_out_tasks(task_limit: int | None = None) -> list:
    """The held-out chat-task prompts, or `task_limit` of each task spread through it."""
    from utils.chat_tasks import load_chat_tasks

    examples = load_chat_tasks("test")
    tasks = sorted({e.task for e in examples})
    return [e for t in tasks for e in _spread([e for e in examples if e.task == t], task_limit)]


def held_out_pairs(task_limit: int | None = None) -> list:
    """The held-out preference pairs, or as many as `held_out_tasks(task_limit)` has prompts,
    spread through the file."""
    from utils.chat_tasks import TASKS, load_chat_preferences

    n = None if task_limit is None else task_limit * len(TASKS)
    return _spread(load_chat_preferences("test"), n)


# ------------------------------------------------------------------------------ the table

def report_card(models: list[Entry] | None = None, limit: int | None = None,
                task_limit: int | None = None, device: torch.device | str = "cpu",
                log=print) -> list[dict[str, Any]]:
    """Measure every model of `models` (default: the shipped ones); one dict per row.

    limit       score bits/char on the first `limit` held-out characters (None: all)
    task_limit  score `task_limit` held-out prompts per task, and as many preference pairs
                as that makes prompts in all (None: every one)

    Keys of a row: model, tuned_from, tuned (has the chat tokens), parameters, training_flops, flops_counted,
    val_bits_per_char, val_chars, tasks ({task: exact match} or None), task_prompts,
    preference_accuracy (or None), preference_pairs, tokens_per_s, generated_tokens, device.
    """
    from utils.pretrained import load_model_file

    models = shipped_entries() if models is None else list(models)
    names = [m.name for m in models]
    for m in models:
        if m.tuned_from is not None and m.tuned_from not in names:
            raise ValueError(f"models: {m.name!r} is tuned from {m.tuned_from!r}, which is not "
                             f"in the table ({names}); add it, its pre-training is counted")
    from utils.instructions import ChatTokenizer

    bases = {m.tuned_from for m in models if m.tuned_from}
    text = held_out_text(limit)
    held_out: list = []           # (prompts, pairs), read when the first model needs them
    rows, configs = [], {}
    for entry in models:
        start = time.perf_counter()
        model, tokenizer, _ = load_model_file(entry.path, device)
        configs[entry.name] = model.config
        flops, counted = (training_flops(model.config, read_record(entry.path))
                          if entry.tuned_from is None else (math.nan, ""))
        tuned = isinstance(tokenizer, ChatTokenizer)      # it has the chat template's tokens
        row = {"model": entry.name, "tuned_from": entry.tuned_from, "tuned": tuned,
               "parameters": count_parameters(model), "training_flops": flops,
               "flops_counted": counted,
               "val_bits_per_char": _bits_per_char(model, tokenizer, text, device),
               "val_chars": len(text), "device": str(device)}
        row["tokens_per_s"], row["generated_tokens"] = tokens_per_second(model, tokenizer, text,
                                                                         device)
        if tuned or entry.tuned_from is not None or entry.name in bases:
            held_out = held_out or [held_out_tasks(task_limit), held_out_pairs(task_limit)]
            row.update(_chat_scores(model, tokenizer, *held_out))
        else:
            row.update(tasks=None, task_prompts=0, preference_accuracy=None, preference_pairs=0)
        rows.append(row)
        log(f"report card: {entry.name} measured in {time.perf_counter() - start:.1f} s")
    # a tuned model's FLOPs: its base model's (counted with the base's own vocabulary) + tuning
    by_name = {r["model"]: r for r in rows}
    for entry, row in zip(models, rows, strict=True):
        if entry.tuned_from is not None:
            row["training_flops"], row["flops_counted"] = training_flops(
                configs[entry.name], read_record(entry.path),
                by_name[entry.tuned_from]["training_flops"])
    return rows


def _bits_per_char(model, tokenizer, text: str, device) -> float:
    from utils.evaluation import text_bits_per_char

    n_tokens = len(tokenizer.encode(text))
    if n_tokens <= model.config.block_size:
        raise ValueError(f"limit: the held-out text is {n_tokens} tokens, not more than one "
                         f"window of block_size={model.config.block_size}; give more characters")
    return text_bits_per_char(model, tokenizer, text, model.config.block_size, device=device)


def _chat_scores(model, tokenizer, examples, pairs) -> dict[str, Any]:
    """Task exact match and preference accuracy; a base model gets the special tokens first
    (the untuned baseline)."""
    from utils.chat_tasks import evaluate_tasks
    from utils.instructions import ChatTokenizer, add_special_tokens
    from utils.tuning import preference_accuracy

    if not isinstance(tokenizer, ChatTokenizer):
        model, tokenizer = add_special_tokens(model, tokenizer)   # in place: measured last
    tasks = evaluate_tasks(model, tokenizer, examples)
    return {"tasks": {t: a for t, a in tasks.items() if t != "all"},
            "task_prompts": len(examples),
            "preference_accuracy": preference_accuracy(model, tokenizer, pairs),
            "preference_pairs": len(pairs)}


def baselines_for(rows: list[dict[str, Any]], task_limit: int | None = None,
                  ) -> dict[str, dict[str, float]]:
    """{task: {"majority": acc, "copy": acc}} on the same held-out slice as the rows
    (`task_baselines` without a model: the untuned score is each base model's own row)."""
    from utils.chat_tasks import load_chat_tasks, task_baselines

    if not any(r["tasks"] for r in rows):
        return {}
    result = task_baselines(load_chat_tasks("train"), held_out_tasks(task_limit))
    return {task: {k: v for k, v in scores.items() if k != "untuned"}
            for task, scores in result.items()}


def best_baseline(row: dict[str, Any], rows: list[dict[str, Any]],
                  baselines: dict[str, dict[str, float]], task: str) -> tuple[str, float]:
    """(name, accuracy) of the strongest simple baseline of a tuned row on `task`: the
    majority answer, copying the prompt, or its base model untuned (ties: the first)."""
    candidates = dict(baselines.get(task, {}))
    base = next((r for r in rows if r["model"] == row["tuned_from"]), None)
    if base is not None and base["tasks"] and task in base["tasks"]:
        candidates["untuned"] = base["tasks"][task]
    if not candidates:
        return "none", math.nan
    name = max(BASELINES, key=lambda k: candidates.get(k, -1.0))
    return name, candidates[name]


def _percent(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def to_markdown(rows: list[dict[str, Any]], baselines: dict[str, dict[str, float]],
                command: str = "python -m utils.report_card") -> str:
    """The report card as a Markdown table, one line per row, and the notes under it."""
    tasks = sorted({t for r in rows if r["tasks"] for t in r["tasks"]})
    head = (["model", "parameters", "training FLOPs", "val bits/char"] + tasks
            + ["preference acc.", "tokens/s"])
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [row["model"], f"{row['parameters'] / 1e6:.2f} M",
                 "—" if math.isnan(row["training_flops"]) else f"{row['training_flops']:.2e}",
                 f"{row['val_bits_per_char']:.3f}"]
        for task in tasks:
            acc = row["tasks"].get(task) if row["tasks"] else None
            if acc is not None and row["tuned"]:
                name, value = best_baseline(row, rows, baselines, task)
                cells.append(f"{_percent(acc)} ({name} {_percent(value)})")
            else:
                cells.append(_percent(acc))
        cells += [_percent(row["preference_accuracy"]), f"{row['tokens_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _notes(rows) + _footer(rows, command)


def _notes(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    notes = [
        f"- val bits/char: {first['val_chars']:,} held-out characters (the last 10 % of the "
        f"corpus, split as text before encoding), `utils.evaluation.text_bits_per_char`.",
        "- training FLOPs: `estimate_flops_per_token(config, training=True)` x tokens trained "
        "on; counted: " + "; ".join(f"{r['model']}: {r['flops_counted']}" for r in rows) + ".",
        f"- tokens/s: greedy generation of {first['generated_tokens']} tokens after "
        f"{PROMPT_TOKENS} prompt tokens, batch 1, KV cache, median of {TIMING_REPEATS}, on "
        f"{first['device']}; a BPE token holds several characters, a char token one.",
    ]
    scored = [r for r in rows if r["tasks"]]
    if scored:
        notes += [
            f"- tasks: greedy exact match on {scored[0]['task_prompts']} held-out prompts; a tuned "
            "model's cell names its best simple baseline (majority answer, copy the prompt, "
            "or its base model untuned).",
            "- a base model's task cells are its untuned score (special tokens added, never "
            "trained on the chat template): the 'untuned' baseline of its tuned versions.",
            f"- preference acc.: fraction of {scored[0]['preference_pairs']} held-out pairs "
            "where log p(chosen | prompt) > log p(rejected | prompt), no reference model.",
        ]
    if any(not r["tasks"] for r in rows):
        notes.append("- —: not scored on the chat tasks: a base model with no tuned version "
                     "in the table (the tasks are posed in the BPE models' chat template).")
    return "\n".join(notes) + "\n\n"


def _footer(rows: list[dict[str, Any]], command: str) -> str:
    from utils.device import machine_description

    return (f"Measured {datetime.date.today().isoformat()} on {machine_description()}, "
            f"torch {torch.__version__}, with `{command}`.\n")


def write_report(models: list[Entry] | None = None, out: Path | str = DEFAULT_OUT,
                 limit: int | None = None, task_limit: int | None = None,
                 device: torch.device | str = "cpu", command: str = "python -m utils.report_card",
                 log=print) -> tuple[str, list[dict[str, Any]]]:
    """Measure the rows, write the Markdown to `out`; return (markdown, rows)."""
    rows = report_card(models, limit, task_limit, device, log)
    text = to_markdown(rows, baselines_for(rows, task_limit), command)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return text, rows


# ------------------------------------------------------------------------------ command line

def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    from utils.device import get_device

    parser = argparse.ArgumentParser(
        prog="python -m utils.report_card",
        description="Measure the shipped models (parameters, training FLOPs, held-out bits "
                    "per character, chat-task and preference accuracy, tokens/s) and write "
                    "one Markdown table.")
    parser.add_argument("--limit", type=int, default=None,
                        help="score bits/char on the first N held-out characters (default: all)")
    parser.add_argument("--task-limit", type=int, default=None,
                        help="score N held-out prompts per task, and as many preference "
                             "pairs as that makes prompts (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the table")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one)")
    args = parser.parse_args(argv)
    models = [m for m in shipped_entries() if m.path.exists()]
    missing = [m.name for m in shipped_entries() if not m.path.exists()]
    if missing:
        print(f"report card: not shipped yet, left out: {', '.join(missing)}")
    known = {m.name for m in models}
    models = [m if m.tuned_from in known or m.tuned_from is None else Entry(m.name, m.path)
              for m in models]
    if not models:
        raise SystemExit("report card: no shipped model found under data/checkpoints/")
    command = "python -m utils.report_card " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    text, _ = write_report(models, args.out, args.limit, args.task_limit,
                           get_device(args.device), command.strip())
    print(text)
    print(f"written to {_shown(args.out)}")
    return 0


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
