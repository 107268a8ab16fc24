"""Build chapter 11's tuned models and the record of how well they do (data/tuned_results.json).

Starting from the GPT on the course's BPE tokens (data/checkpoints/shakespeare-bpe), this
script

  1. scores the baselines on the held-out instructions of data/chat_tasks.jsonl: the majority
     answer, the copied prompt, and the untuned model (special tokens added, greedy);
  2. instruction-tunes it (`utils.tuning.instruction_tune`, SFT below) and scores it by
     greedy exact match: shakespeare-bpe-sft;
  3. preference-tunes that model (`preference_tune`, DPO_*), with the SFT model as the frozen
     reference, on the training pairs of data/chat_preferences.jsonl (wrong answers made by
     rules, on fresh prompts) and on the SFT model's own mistakes on those prompts
     (`mistake_pairs`), with the SFT loss on the chosen answers added (nll_weight) so that
     DPO does not lower them along with the rejected ones: shakespeare-bpe-dpo. It records
     preference accuracy (log p(chosen) > log p(rejected)) on held-out pairs of both kinds
     before and after, by rule, and the task accuracy after, next to a control: as many
     steps of plain SFT on the chosen answers;
  4. screens the candidate tasks (unless --no-screen): one SFT run of the same recipe on every
     candidate of `utils.chat_tasks.CANDIDATES` (data/build_chat_tasks.py --candidates), to
     record why the shipped tasks are the ones kept.

A task counts as learned when its accuracy beats its best baseline by at least BAR (20 points).

    OMP_NUM_THREADS=1 python data/build_tuned_models.py      # about 10 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from utils.chat_tasks import (  # noqa: E402
    evaluate_after_history,
    evaluate_tasks,
    load_chat_preferences,
    load_chat_tasks,
    margins,
    task_baselines,
    task_of,
)
from utils.checkpoints import checksum  # noqa: E402
from utils.device import machine_description  # noqa: E402
from utils.instructions import Instruction, add_special_tokens, evaluate_instructions, read_jsonl  # noqa: E402
from utils.paths import write_text_atomic  # noqa: E402
from utils.pretrained import CHECKPOINT_DIR, load_model_file, save_pretrained  # noqa: E402
from utils.tuning import (  # noqa: E402
    instruction_tune,
    mistake_pairs,
    pair_logprobs,
    preference_accuracy,
    preference_tune,
)

BASE = CHECKPOINT_DIR / "shakespeare-bpe.safetensors"
# max_history 2: each example comes after 0-2 other exchanges (utils.tuning.conversation_batches),
# so the model also answers in the middle of a chat (single-exchange tuning fell to 0-4 % on
# three tasks after one earlier exchange, chapter 11 section 5)
SFT = {"steps": 600, "batch_size": 16, "lr": 1e-3, "final_lr": 1e-5, "seed": 0, "max_history": 2}
DPO = {"steps": 150, "batch_size": 8, "lr": 1e-4, "beta": 0.1, "nll_weight": 1.0, "seed": 0}
BAR = 0.20
SAMPLES_PER_TASK = 3
DATA = Path(__file__).resolve().parent
RESULTS = DATA / "tuned_results.json"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 1)


def preference_report(model, tokenizer, pairs) -> dict:
    """Preference accuracy (log p(chosen) > log p(rejected)), overall and by rejection rule."""
    chosen, rejected = pair_logprobs(model, tokenizer, pairs)
    wins = (chosen > rejected).tolist()
    by_rule: dict[str, list[bool]] = {}
    for pair, win in zip(pairs, wins, strict=True):
        by_rule.setdefault(pair.rule, []).append(win)
    return {"all": sum(wins) / len(wins),
            "by_rule": {rule: sum(w) / len(w) for rule, w in sorted(by_rule.items())},
            "mean_logp_chosen": round(chosen.mean().item(), 3),
            "mean_logp_rejected": round(rejected.mean().item(), 3)}


def samples(test, answers) -> list[dict]:
    """The first few held-out instructions of each task with the reference and the answer."""
    picked = []
    for task in sorted({e.task for e in test}):
        picked += [(e, a) for e, a in zip(test, answers, strict=True) if e.task == task][:SAMPLES_PER_TASK]
    return [{"task": e.task, "instruction": e.instruction, "response": e.response, "answer": a}
            for e, a in picked]


def as_instructions(pairs) -> list[Instruction]:
    """The pairs' prompts and chosen answers as instructions (task from the question line)."""
    return [Instruction(task_of(p.prompt), p.prompt, p.chosen, p.split) for p in pairs]


def passed(report: dict) -> dict[str, bool]:
    return {task: row["margin"] >= BAR - 1e-9 for task, row in report.items()}


def screen(base_model, base_tokenizer) -> dict:
    """Every candidate task in one SFT run of the shipped recipe, against its baselines."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(DATA / "build_chat_tasks.py"), "--candidates", tmp],
                       check=True, capture_output=True)
        rows = read_jsonl(Path(tmp) / "chat_candidates.jsonl", Instruction, None)
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    baselines = task_baselines(train, test, base_model, base_tokenizer)
    model, chat = add_special_tokens(copy.deepcopy(base_model), base_tokenizer)
    _, seconds = timed(instruction_tune, model, chat, train, **SFT)
    scores = evaluate_tasks(model, chat, test)
    report = margins(scores, baselines)
    return {"what": "one SFT run (the shipped recipe) on every candidate task at once "
                    "(data/build_chat_tasks.py --candidates); a task is kept when its margin "
                    f"over its best baseline is >= {BAR}",
            "n_train": len(train), "n_test": len(test), "seconds": seconds,
            "baselines": baselines, "tasks": report, "passed": passed(report)}


def control(sft, chat, pairs_train, mistakes_train, mistakes_test, pairs_test) -> dict:
    """Is it the preferences? The same number of steps of plain SFT on the chosen answers of
    DPO's pairs, at DPO's batch size and lr: what the SFT part of DPO's loss would do alone."""
    model = copy.deepcopy(sft)
    chosen = as_instructions(pairs_train + mistakes_train)
    _, seconds = timed(instruction_tune, model, chat, chosen, steps=DPO["steps"],
                       batch_size=DPO["batch_size"], lr=DPO["lr"], seed=DPO["seed"])
    return {"what": control.__doc__.split("\n\n")[0].replace("\n    ", " "), "seconds": seconds,
            "exact_match": evaluate_tasks(model, chat, load_chat_tasks("test")),
            "preference_accuracy": {"rules": preference_accuracy(model, chat, pairs_test),
                                    "own_mistakes": preference_accuracy(model, chat, mistakes_test)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, default=BASE, help="the pre-trained weights file")
    parser.add_argument("--out-dir", type=Path, default=DATA,
                        help="where tuned_results.json and checkpoints/ go (default data/)")
    parser.add_argument("--no-screen", action="store_true",
                        help="keep the screening of the previous results file instead of rerunning it")
    args = parser.parse_args()
    torch.set_num_threads(1)          # the recorded times are for one thread
    started = time.perf_counter()
    base_model, base_tokenizer, _ = load_model_file(args.base)
    train, test = load_chat_tasks("train"), load_chat_tasks("test")
    pairs_train, pairs_test = load_chat_preferences("train"), load_chat_preferences("test")
    baselines, baseline_seconds = timed(task_baselines, train, test, base_model, base_tokenizer)
    print("baselines:", json.dumps(baselines), flush=True)

    sft, chat = add_special_tokens(copy.deepcopy(base_model), base_tokenizer)
    sft_losses, sft_seconds = timed(instruction_tune, sft, chat, train, **SFT)
    sft_scores, sft_answers = evaluate_instructions(sft, chat, test)
    sft_report = margins(sft_scores, baselines)
    sft_history = evaluate_after_history(sft, chat, test, train)
    single = add_special_tokens(copy.deepcopy(base_model), base_tokenizer)[0]
    single_seconds = timed(instruction_tune, single, chat, train, **{**SFT, "max_history": 0})[1]
    single_report = {"recipe": "the same SFT recipe with max_history 0 (single exchanges only)",
                     "seconds": single_seconds,
                     "exact_match": evaluate_instructions(single, chat, test)[0],
                     "after_one_exchange": evaluate_after_history(single, chat, test, train)}
    print(f"SFT ({sft_seconds} s):", json.dumps(sft_scores), "after a history:",
          json.dumps(sft_history), "single-exchange SFT:", json.dumps(single_report), flush=True)

    # DPO's pairs: the rule-made ones of data/chat_preferences.jsonl, and the SFT model's own
    # mistakes on their prompts, which it has not been trained on (on its training
    # instructions it makes almost none: it knows them by heart)
    (mistakes_train, mistakes_test), mining_seconds = timed(
        lambda: (mistake_pairs(sft, chat, as_instructions(pairs_train)), mistake_pairs(sft, chat, test)))
    dpo = copy.deepcopy(sft)
    dpo_losses, dpo_seconds = timed(preference_tune, dpo, chat, pairs_train + mistakes_train, **DPO)
    dpo_scores, dpo_answers = evaluate_instructions(dpo, chat, test)
    dpo_report = margins(dpo_scores, baselines)
    dpo_history = evaluate_after_history(dpo, chat, test, train)
    untuned = add_special_tokens(copy.deepcopy(base_model), base_tokenizer)[0]
    preference = {
        "what": "fraction of held-out pairs whose chosen response has the higher "
                "log p(response + <|end|> | prompt): 'rules' are the test pairs of "
                "data/chat_preferences.jsonl, 'own_mistakes' the SFT model's wrong greedy answers "
                "to the held-out instructions (so the SFT model's own score there is near 0); "
                "'reward_accuracy' is the DPO model's implicit reward margin > 0 against its "
                "reference (the SFT model)",
        "n_test_pairs": {"rules": len(pairs_test), "own_mistakes": len(mistakes_test)},
        "n_train_pairs": {"rules": len(pairs_train), "own_mistakes": len(mistakes_train)},
        "mining_seconds": mining_seconds,
        "rules": {"untuned": preference_report(untuned, chat, pairs_test),
                  "sft": preference_report(sft, chat, pairs_test),
                  "dpo": preference_report(dpo, chat, pairs_test)},
        "own_mistakes": {"sft": preference_report(sft, chat, mistakes_test),
                         "dpo": preference_report(dpo, chat, mistakes_test)},
        "reward_accuracy": {
            "rules": preference_accuracy(dpo, chat, pairs_test, reference=sft),
            "own_mistakes": preference_accuracy(dpo, chat, mistakes_test, reference=sft)},
        "train_pairs": {"sft": preference_accuracy(sft, chat, pairs_train + mistakes_train),
                        "dpo": preference_accuracy(dpo, chat, pairs_train + mistakes_train)},
    }
    print(f"DPO ({dpo_seconds} s):", json.dumps(dpo_scores), "preference (rules)",
          preference["rules"]["sft"]["all"], "->", preference["rules"]["dpo"]["all"],
          "(own mistakes)", preference["own_mistakes"]["sft"]["all"], "->",
          preference["own_mistakes"]["dpo"]["all"], flush=True)

    sft_more = control(sft, chat, pairs_train, mistakes_train, mistakes_test, pairs_test)
    print("control, SFT on the chosen answers instead:", json.dumps(sft_more), flush=True)

    previous_file = args.out_dir / RESULTS.name
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else {}
    screening = previous.get("screening") if args.no_screen else screen(base_model, base_tokenizer)
    command = "OMP_NUM_THREADS=1 python data/build_tuned_models.py" + (
        f" --base {args.base}" if args.base != BASE else "") + (" --no-screen" if args.no_screen else "")
    common = {"command": command, "date": datetime.date.today().isoformat(),
              "machine": machine_description(), "torch": torch.__version__,
              "base": {"file": args.base.name, "checksum": checksum(
                  {k: v.detach().cpu() for k, v in base_model.state_dict().items()})}}
    results = {
        "what": "chapter 11's instruction tasks (data/chat_tasks.jsonl): greedy exact match on "
                "the held-out instructions, against the best of three baselines, for the "
                "instruction-tuned (SFT) and preference-tuned (DPO) models",
        **common, "bar": BAR, "seconds_total": round(time.perf_counter() - started),
        "n_train": len(train), "n_test": len(test),
        "n_pairs": {"train": len(pairs_train), "test": len(pairs_test)},
        "baselines": baselines, "baseline_seconds": baseline_seconds,
        "sft": {"recipe": {**SFT, "optimizer": "AdamW", "weight_decay": 0.0, "grad_clip": 1.0},
                "seconds": sft_seconds, "seconds_per_step": round(sft_seconds / SFT["steps"], 3),
                "exact_match": sft_scores, "tasks": sft_report, "passed": passed(sft_report),
                "after_one_exchange": sft_history, "single_exchange_control": single_report,
                "train_loss": [round(x, 4) for x in sft_losses], "samples": samples(test, sft_answers),
                "answers": sft_answers},
        "dpo": {"recipe": {**DPO, "optimizer": "AdamW", "reference": "the SFT model, frozen",
                           "pairs": "the train pairs of data/chat_preferences.jsonl + the SFT "
                                    "model's own mistakes on their prompts"},
                "seconds": dpo_seconds, "exact_match": dpo_scores, "tasks": dpo_report,
                "after_one_exchange": dpo_history,
                "passed": passed(dpo_report), "train_loss": [round(x, 4) for x in dpo_losses],
                "samples": samples(test, dpo_answers), "answers": dpo_answers},
        "preference_accuracy": preference,
        "control": sft_more,
        "screening": screening,
    }
    out = args.out_dir
    save_pretrained(out / "checkpoints" / "shakespeare-bpe-sft.safetensors", sft, chat,
                    {**common, "what": "shakespeare-bpe instruction-tuned on data/chat_tasks.jsonl",
                     "recipe": results["sft"]["recipe"], "seconds": sft_seconds,
                     "exact_match": sft_scores, "baselines": baselines})
    save_pretrained(out / "checkpoints" / "shakespeare-bpe-dpo.safetensors", dpo, chat,
                    {**common, "what": "shakespeare-bpe-sft preference-tuned (DPO) on "
                                       "data/chat_preferences.jsonl",
                     "recipe": results["dpo"]["recipe"], "seconds": dpo_seconds,
                     "exact_match": dpo_scores, "preference_accuracy": {
                         "rules": {k: v["all"] for k, v in preference["rules"].items()},
                         "own_mistakes": {k: v["all"] for k, v in preference["own_mistakes"].items()}}})
    write_text_atomic(out / RESULTS.name, json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / RESULTS.name} and two checkpoints ({results['seconds_total']} s)")


if __name__ == "__main__":
    main()
