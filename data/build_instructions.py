"""Build data/instructions.jsonl: a small instruction-tuning dataset made from the corpus.

Chapter 10 teaches the shipped model to answer questions (instruction tuning). There is no
human-written instruction data for these plays, so the questions are made from the text
itself, with answers that can be checked by exact match:

    task        instruction                                   response
    speaker     Who speaks this line?\\n<a line of a speech>    the speaker, as the text names
                                                              them ("Ham", "IAGO", "Lady Capulet")
    play        Which play is this from?\\n<one or two lines>   the play ("Macbeth", "King Lear")
    last_word   Finish this line:\\n<a line minus its last word> that last word, no punctuation

(A "continue this speech" task, answered by the whole next line, was left out: a model almost
never writes a whole line letter for letter, so exact match would be zero before and after
and measure nothing. The last word keeps the idea, predicting what comes next, with an answer
short enough to be right or wrong. Chapter 10's DPO data uses whole next lines instead.)

How it is made (`utils.plays.load_speeches` cuts the corpus into speeches):
  * Only speakers with at least MIN_SPEECHES speeches are asked about (the main characters):
    a question about a messenger who speaks twice is a guess, not something to learn.
  * Held-out split **by speech**: a seeded random 10 % of all speeches are "test", the rest
    "train", and each speech gives at most one example, so no held-out line (or its
    neighbours in the same speech) is ever in a training instruction. The split is not by play:
    "which play?" could not be learnt for a play never seen. Note that the shipped model read
    the first 90 % of the corpus in pre-training (everything but the end of A Midsummer
    Night's Dream and Twelfth Night), so it has seen most held-out lines as plain text; what
    instruction tuning adds is the skill of answering a question about them.
  * Every example fits the model's context: the template's 3 special tokens + instruction +
    response + end is at most BLOCK_SIZE + 1 tokens (inputs and shifted targets are then
    BLOCK_SIZE long).
  * Deterministic: the same corpus and SEED give the same file byte for byte.

    python data/build_instructions.py            # writes data/instructions.jsonl, prints counts
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.paths import write_text_atomic  # noqa: E402
from utils.plays import load_speeches  # noqa: E402

SEED = 10
TEST_FRACTION = 0.1
PER_TASK = {"train": 500, "test": 50}      # examples of each task in each split
MIN_SPEECHES = 30                           # speakers asked about: at least this many speeches
BLOCK_SIZE = 128                            # the shipped model's context
N_SPECIAL = 3                               # <|instruction|> <|response|> <|end|>
QUESTIONS = {
    "speaker": "Who speaks this line?\n",
    "play": "Which play is this from?\n",
    "last_word": "Finish this line:\n",
}
OUT = Path(__file__).resolve().parent / "instructions.jsonl"

_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z']*[A-Za-z])[^A-Za-z']*$")


def speaker_example(speech, rng, main_speakers):
    if (speech.play, speech.speaker) not in main_speakers:
        return None
    lines = [line for line in speech.lines if 15 <= len(line) <= 70]
    return rng.choice(lines) if lines else None, speech.speaker


def play_example(speech, rng, _):
    lines = speech.lines
    if not lines:
        return None
    i = rng.randrange(len(lines))
    passage = lines[i]
    if i + 1 < len(lines) and len(passage) + 1 + len(lines[i + 1]) <= 80:
        passage += "\n" + lines[i + 1]           # two lines when they fit: more to go on
    return (passage, speech.play) if 30 <= len(passage) <= 80 else None


def last_word_example(speech, rng, _):
    candidates = []
    for line in speech.lines:
        match = _LAST_WORD.match(line)
        if match and len(line) <= 70 and len(line.split()) >= 5 and len(match.group(2)) >= 3:
            candidates.append((match.group(1), match.group(2)))
    return rng.choice(candidates) if candidates else None


MAKERS = {"speaker": speaker_example, "play": play_example, "last_word": last_word_example}


def build(seed: int = SEED) -> list[dict]:
    speeches = load_speeches()
    counts = Counter((s.play, s.speaker) for s in speeches)
    main_speakers = {key for key, n in counts.items() if n >= MIN_SPEECHES}
    rng = random.Random(seed)
    splits = ["test" if rng.random() < TEST_FRACTION else "train" for _ in speeches]
    order = list(range(len(speeches)))
    rng.shuffle(order)
    made = Counter()
    rows = []
    tasks = list(MAKERS)
    turn = 0
    for index in order:
        speech, split = speeches[index], splits[index]
        # offer the speech to each task in turn, starting with the next one in the rotation,
        # so that tasks that are picky about their speeches still get their share
        for k in range(len(tasks)):
            task = tasks[(turn + k) % len(tasks)]
            if made[task, split] >= PER_TASK[split]:
                continue
            made_example = MAKERS[task](speech, rng, main_speakers)
            if made_example is None or made_example[0] is None:
                continue
            text, response = made_example
            instruction = QUESTIONS[task] + text
            if N_SPECIAL + len(instruction) + len(response) > BLOCK_SIZE + 1:
                continue
            rows.append({"task": task, "instruction": instruction, "response": response,
                         "split": split})
            made[task, split] += 1
            turn = (turn + k + 1) % len(tasks)
            break
    short = {key: n for key, n in made.items() if n < PER_TASK[key[1]]}
    missing = [(t, s) for t in tasks for s in PER_TASK if (t, s) not in made]
    if short or missing:
        raise SystemExit(f"not enough speeches for every task: made {dict(made)}")
    # train first, then test; within a split, in the (random) order they were made
    return [r for r in rows if r["split"] == "train"] + [r for r in rows if r["split"] == "test"]


def main() -> None:
    rows = build()
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(OUT, text)
    counts = Counter((r["task"], r["split"]) for r in rows)
    print(f"{OUT.name}: {len(rows)} examples, {len(text.encode()):,} bytes, "
          f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    for (task, split), n in sorted(counts.items()):
        print(f"  {task:10s} {split:5s} {n}")


if __name__ == "__main__":
    main()
