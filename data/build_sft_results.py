"""Build data/sft_results.json: the record of a longer instruction-tuning run (chapter 10).

Chapter 10 fine-tunes the shipped model on data/instructions.jsonl for a few dozen steps,
which fits its CPU budget and is enough to learn the template (answers that stop with
<|end|>), but not enough to learn much about the plays. This script runs the same recipe for
longer and records what happened, so the chapter can show the numbers without training for
minutes. Nothing is saved but the record: no weights.

The recipe (the same as the chapter's): the shipped checkpoint, the three special tokens
added with `utils.instructions.add_special_tokens`, AdamW (lr LR, no weight decay), batches of
BATCH_SIZE training instructions from `instruction_batches` (seed SEED), loss on response
tokens only (`masked_lm_loss`). Every EVAL_EVERY steps, greedy answers to all held-out
instructions are scored by exact match (`evaluate_instructions`).

    OMP_NUM_THREADS=1 python data/build_sft_results.py          # 5-10 min on a 2-core CPU
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from utils.device import set_seed  # noqa: E402
from utils.instructions import (  # noqa: E402
    add_special_tokens,
    evaluate_instructions,
    instruction_batches,
    load_instructions,
    majority_baseline,
    masked_lm_loss,
)
from utils.paths import write_text_atomic  # noqa: E402
from utils.pretrained import load_pretrained  # noqa: E402

STEPS = 300
BATCH_SIZE = 16
LR = 3e-4                # gentler than pre-training's 2e-3 peak; 1e-3 did a little worse here
SEED = 0
EVAL_EVERY = 50
SAMPLES_PER_TASK = 4
OUT = Path(__file__).resolve().parent / "sft_results.json"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    steps, lr, out = args.steps, args.lr, args.out
    set_seed(SEED)
    train, test = load_instructions("train"), load_instructions("test")
    model, tokenizer = load_pretrained("shakespeare-char")
    model, chat = add_special_tokens(model, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    evals, losses = [], []

    def evaluate(step):
        model.eval()
        scores, answers = evaluate_instructions(model, chat, test)
        model.train()
        evals.append({"step": step, "exact_match": scores})
        print(f"step {step}: {scores}", flush=True)
        return answers

    start = time.perf_counter()
    evaluate(0)
    model.train()
    for step, (x, y) in enumerate(instruction_batches(chat, train, BATCH_SIZE, steps, SEED), 1):
        logits, _ = model(x)
        loss = masked_lm_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
        if step % EVAL_EVERY == 0:
            answers = evaluate(step)
    seconds = time.perf_counter() - start
    samples = []
    for task in sorted({e.task for e in test}):
        picked = [(e, a) for e, a in zip(test, answers, strict=True) if e.task == task]
        samples += [{"task": task, "instruction": e.instruction, "response": e.response,
                     "answer": a} for e, a in picked[:SAMPLES_PER_TASK]]
    record = {
        "what": "exact match of greedy answers on the held-out instructions of "
                "data/instructions.jsonl during instruction tuning of the shipped model",
        "command": "OMP_NUM_THREADS=1 python data/build_sft_results.py"
                   + (f" --steps {steps}" if steps != STEPS else "") + (f" --lr {lr}" if lr != LR else ""),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), "
                   f"torch {torch.__version__}",
        "seconds": round(seconds),
        "recipe": {"steps": steps, "batch_size": BATCH_SIZE, "lr": lr, "weight_decay": 0.0,
                   "seed": SEED, "optimizer": "AdamW", "loss": "masked_lm_loss"},
        "n_train": len(train), "n_test": len(test),
        "majority_baseline": majority_baseline(train, test),
        "evals": evals,
        "train_loss": losses,
        "samples": samples,
    }
    write_text_atomic(out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
