"""Build data/preferences.jsonl: a small preference dataset for DPO, made from the corpus.

Preference tuning needs, for each prompt, a response that is better (chosen) and one that is
worse (rejected). Real datasets get the judgement from people or from a reward model; here it
comes from one rule anyone can check by reading a row:

    prompt    a line of verse from a speech, ending with its newline
    chosen    the line that really follows it in that speech, ending properly
    rejected  the same next line, stopped in the middle of its last word

    {"prompt": "The interim having weigh'd it, let us speak\\n",
     "chosen": "Our free hearts each to other.\\n",
     "rejected": "Our free hearts each to othe\\n", ...}

Why this rule: the two responses differ only in how they end, so a model that prefers the
chosen one has learned exactly one thing, to finish its lines. The shipped model already
prefers the complete line most of the time (it read these plays), but not always: summing
log-probabilities favours shorter texts, and the cut one is shorter. Chapter 10 measures how
often, before and after DPO.

How it is made (`utils.plays.load_speeches` cuts the corpus into speeches):
  * pairs of neighbouring lines of one speech, both of at least MIN_WORDS words, the next
    line's last word at least 3 letters long (so there is a middle to cut it in);
  * the cut point is a seeded random position strictly inside the last word (at least one
    letter kept, at least one dropped), and everything after it is dropped too;
  * held-out split **by speech**: a seeded random 10 % of the speeches are "test", and at most
    one pair is taken from each speech, so no held-out line is ever in a training pair;
  * prompt + chosen is at most MAX_CHARS characters, to fit the model's context of 128;
  * deterministic: the same corpus and SEED give the same file byte for byte.

    python data/build_preferences.py            # writes data/preferences.jsonl, prints counts
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.paths import write_text_atomic  # noqa: E402
from utils.plays import load_speeches  # noqa: E402

SEED = 11
TEST_FRACTION = 0.1
PER_SPLIT = {"train": 1200, "test": 128}
MIN_WORDS = 4
MAX_CHARS = 120
RULE = "cut mid-word"
OUT = Path(__file__).resolve().parent / "preferences.jsonl"

_LAST_WORD = re.compile(r"([A-Za-z']*[A-Za-z])[^A-Za-z]*$")


def cut_last_word(line: str, rng: random.Random) -> str | None:
    """`line` stopped strictly inside its last word, or None if that word is too short.

    >>> cut_last_word("Our free hearts each to other.", random.Random(0))
    'Our free hearts each to othe'
    """
    match = _LAST_WORD.search(line)
    if match is None:
        return None
    start, end = match.span(1)
    letters = [i for i in range(start + 1, end) if line[i].isalpha() and line[i - 1].isalpha()]
    if end - start < 3 or not letters:
        return None
    return line[:rng.choice(letters)]


def build(seed: int = SEED) -> list[dict]:
    speeches = load_speeches()
    rng = random.Random(seed)
    splits = ["test" if rng.random() < TEST_FRACTION else "train" for _ in speeches]
    order = list(range(len(speeches)))
    rng.shuffle(order)
    made = Counter()
    rows = []
    for index in order:
        split = splits[index]
        if made[split] >= PER_SPLIT[split]:
            continue
        lines = speeches[index].lines
        pairs = [(a, b) for a, b in pairwise(lines)
                 if len(a.split()) >= MIN_WORDS and len(b.split()) >= MIN_WORDS
                 and len(a) + len(b) + 2 <= MAX_CHARS]
        if not pairs:
            continue
        prompt, following = rng.choice(pairs)
        rejected = cut_last_word(following, rng)
        if rejected is None:
            continue
        rows.append({"prompt": prompt + "\n", "chosen": following + "\n",
                     "rejected": rejected + "\n", "rule": RULE, "split": split})
        made[split] += 1
    if any(made[s] < n for s, n in PER_SPLIT.items()):
        raise SystemExit(f"not enough line pairs: made {dict(made)}, wanted {PER_SPLIT}")
    return [r for r in rows if r["split"] == "train"] + [r for r in rows if r["split"] == "test"]


def main() -> None:
    rows = build()
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(OUT, text)
    counts = Counter(r["split"] for r in rows)
    print(f"{OUT.name}: {len(rows)} pairs ({counts['train']} train, {counts['test']} test), "
          f"{len(text.encode()):,} bytes, sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
