"""Build data/chat_tasks.jsonl and data/chat_preferences.jsonl: chapter 11's instruction tasks.

Chapter 10's questions (which play? who speaks? the last word of a famous line?) need facts
the small model does not hold, and tuning left them near the majority baseline. These tasks
ask about the form of the text in the prompt, so the answer is always there to be found
(`utils.chat_tasks` has the rules; `answer_for(task, instruction)` computes every response):

    first_word  What is the first word of this line?\\n<line>    -> its first word
    last_word   What is the last word of this line?\\n<line>     -> its last word, no punctuation
    speaker     Who is speaking?\\n<NAME>. <line>                -> NAME, as the text writes it
    end_mark    How does this line end?\\n<line>                 -> "comma", "full stop", ...

How the examples are made (`utils.plays.load_speeches` cuts the corpus into speeches):
  * A line is a spoken line of MIN_WORDS or more words and MIN_CHARS..MAX_CHARS characters.
  * Held-out split **by speech**: a seeded random TEST_FRACTION of the speeches are "test".
    Each task takes at most one example per speech, walking the speeches in its own seeded
    order, so every task sees a spread of plays and speakers. A test example also may not use
    a line that occurs anywhere in a training speech (short lines such as "Ay, my lord."
    recur), so no held-out line is ever seen in training.
  * end_mark takes an equal number of examples of each mark in each split, so that always
    answering the commonest mark scores 1 / 6, and learning to read the mark shows.
  * Preferences: one pair per prompt. The training pairs are on *fresh* prompts: another
    seeded draw from the training speeches, leaving out any instruction the SFT data has, so
    that the instruction-tuned model's answers to them show the mistakes it makes on prompts
    it has not learnt by heart (data/build_tuned_models.py mines those). The test pairs are
    on the held-out instructions. `chosen` is the answer; `rejected` a plausible wrong one,
    by rules taken in turn (each named in the row's "rule"):
        neighbour   the word next to the right one (the second word instead of the first,
                    the line's first word instead of the name), another mark, the other line
        unfinished  the answer stopped inside it ("Macb")
        copy        the prompt's text, echoed
        too long    the answer and more ("Now, by my", "first line")
  * Deterministic: the same corpus and SEED give the same files byte for byte.

    python data/build_chat_tasks.py                     # writes both files, prints counts
    python data/build_chat_tasks.py --candidates DIR    # every measured candidate, into DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.chat_tasks import (  # noqa: E402
    CANDIDATES,
    END_MARKS,
    QUESTIONS,
    TASKS,
    WORD,
    answer_for,
    input_text,
)
from utils.paths import write_text_atomic  # noqa: E402
from utils.plays import load_speeches  # noqa: E402

SEED = 19
TEST_FRACTION = 0.1
PER_TASK = {"train": 600, "test": 102}     # 102: six marks x 17 for end_mark
MIN_WORDS, MIN_CHARS, MAX_CHARS = 3, 12, 70
OUT_DIR = Path(__file__).resolve().parent
TASKS_NAME, PREFERENCES_NAME = "chat_tasks.jsonl", "chat_preferences.jsonl"
BALANCED = {"end_mark": len(END_MARKS), "longer": 2}    # tasks with an equal share per answer
REJECTIONS = ("neighbour", "unfinished", "copy", "too long")


def usable(line: str) -> bool:
    return len(line.split()) >= MIN_WORDS and MIN_CHARS <= len(line) <= MAX_CHARS


def text_for(task: str, speech, lines: list[str], rng: random.Random) -> str | None:
    """The input text of one example of `task` from one speech (None: nothing suitable)."""
    if task == "speaker":
        if "." in speech.speaker or len(speech.speaker) > 20:
            return None
        return f"{speech.speaker}. {rng.choice(lines)}" if lines else None
    if task == "longer":
        pairs = [(a, b) for a, b in zip(lines, lines[1:], strict=False) if abs(len(a) - len(b)) >= 8]
        if not pairs:
            return None
        pair = list(rng.choice(pairs))
        if rng.random() < 0.5:            # prose wraps long lines first: shuffle the order
            pair.reverse()
        return "\n".join(pair)
    if task == "next_word":
        import re
        options = []
        for line in lines:
            words = [w.strip(",.;:!?") for w in line.split()]
            options += [(line, w) for w in words[:-1] if re.fullmatch(WORD, w) and words.count(w) == 1]
        if not options:
            return None
        line, cue = rng.choice(options)
        return cue + "\n" + line          # the cue goes into the question (see `instruction_for`)
    return rng.choice(lines) if lines else None


def instruction_for(task: str, text: str) -> str:
    if task == "next_word":
        cue, text = text.split("\n", 1)
        return QUESTIONS[task].format(cue=cue) + "\n" + text
    return QUESTIONS[task] + "\n" + text


def speech_splits(seed: int = SEED) -> list[str]:
    """The split of every speech of `load_speeches()`, in order: a seeded TEST_FRACTION "test"."""
    rng = random.Random(seed)
    return ["test" if rng.random() < TEST_FRACTION else "train" for _ in load_speeches()]


def build_tasks(tasks=TASKS, seed: int = SEED, per_task=PER_TASK, draw: str = "") -> list[dict]:
    """Examples of each task, per_task[split] of each; `draw` names another seeded draw."""
    speeches, splits = load_speeches(), speech_splits(seed)
    train_lines = {line for s, split in zip(speeches, splits, strict=True) if split == "train"
                   for line in s.lines}
    rows = []
    for task in tasks:
        task_rng = random.Random(f"{seed}-{task}{draw}")
        order = list(range(len(speeches)))
        task_rng.shuffle(order)
        made: Counter = Counter()
        classes = BALANCED.get(task, 1)
        for index in order:
            split = splits[index]
            lines = [line for line in speeches[index].lines if usable(line)
                     and (split == "train" or line not in train_lines)]
            if task in ("first_word", "last_word", "end_mark", "word_count"):
                lines = [line for line in lines if CANDIDATES[task]("?\n" + line) is not None]
            text = text_for(task, speeches[index], lines, task_rng)
            if text is None:
                continue
            instruction = instruction_for(task, text)
            response = answer_for(task, instruction)
            key = (split, response if task in BALANCED else None)
            if response is None or made[key] >= per_task.get(split, 0) // classes:
                continue
            made[key] += 1
            rows.append({"task": task, "instruction": instruction, "response": response,
                         "split": split})
        short = {k: n for k, n in made.items() if n < per_task[k[0]] // classes}
        if short or len(made) < sum(n > 0 for n in per_task.values()) * classes:
            raise SystemExit(f"{task}: not enough speeches, made {dict(made)}")
    # train first, then test; within a split, task by task in the order they were made
    return [r for r in rows if r["split"] == "train"] + [r for r in rows if r["split"] == "test"]


def rejected_for(row: dict, rule: str, rng: random.Random) -> str | None:
    """A wrong answer to `row` by `rule` (None when the rule does not apply to it)."""
    task, answer, text = row["task"], row["response"], input_text(row["instruction"])
    words = text.split()
    if rule == "neighbour":
        if task == "end_mark":
            return rng.choice(sorted(set(END_MARKS.values()) - {answer}))
        if task == "longer":
            return "second" if answer == "first" else "first"
        if task == "speaker":
            candidate = text.split(". ", 1)[1].split()[0]
        else:
            candidate = words[1] if task == "first_word" else words[-2]
        candidate = candidate.strip(",.;:!?'")
        return candidate or None
    if rule == "unfinished":
        return answer[:rng.randrange(1, len(answer))] if len(answer) >= 3 else None
    if rule == "copy":
        return text
    if rule == "too long":
        if task == "end_mark":
            return None
        if task == "longer":
            return answer + " line"
        if task == "last_word":
            return " ".join(words[-3:]).rstrip(",.;:!?")
        n = len(answer.split()) + 2               # the answer's words and two more
        return " ".join(text.split()[:n])
    raise ValueError(f"rule must be one of {REJECTIONS}, got {rule!r}")


def build_preferences(task_rows: list[dict], seed: int = SEED) -> list[dict]:
    rng = random.Random(f"{seed}-preferences")
    pairs, turn = [], Counter()
    for row in task_rows:
        for k in range(len(REJECTIONS)):
            rule = REJECTIONS[(turn[row["task"]] + k) % len(REJECTIONS)]
            rejected = rejected_for(row, rule, rng)
            if rejected and rejected != row["response"]:
                break
        else:
            raise SystemExit(f"no rule makes a wrong answer for {row}")
        turn[row["task"]] += k + 1
        pairs.append({"prompt": row["instruction"], "chosen": row["response"],
                      "rejected": rejected, "rule": rule, "split": row["split"]})
    return pairs


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(task rows, preference rows) exactly as the shipped files hold them."""
    rows = build_tasks(TASKS, seed)
    seen = {r["instruction"] for r in rows}
    fresh = [r for r in build_tasks(TASKS, seed, {"train": PER_TASK["train"]}, draw="-preferences")
             if r["instruction"] not in seen]
    return rows, build_preferences(fresh + [r for r in rows if r["split"] == "test"], seed)


def write(rows: list[dict], path: Path) -> str:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(path, text)
    return (f"{path.name}: {len(rows)} rows, {len(text.encode()):,} bytes, "
            f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=Path, default=None,
                        help="write every measured candidate task to DIR/chat_candidates.jsonl")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.candidates is not None:
        args.candidates.mkdir(parents=True, exist_ok=True)
        print(write(build_tasks(tuple(CANDIDATES)), args.candidates / "chat_candidates.jsonl"))
        return
    rows, pairs = build()
    print(write(rows, args.out_dir / TASKS_NAME))
    print(write(pairs, args.out_dir / PREFERENCES_NAME))
    for (task, split), n in sorted(Counter((r["task"], r["split"]) for r in rows).items()):
        print(f"  {task:10s} {split:5s} {n}")
    for rule, n in sorted(Counter(p["rule"] for p in pairs).items()):
        print(f"  rejected by {rule}: {n}")


if __name__ == "__main__":
    main()
