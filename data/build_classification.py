"""Build data/classification.jsonl: real or shuffled? Passages of spoken text, half of them
with the words of each line shuffled, labelled 1 (as written) or 0 (shuffled).

Why this task. The obvious ones were measured first and do not work at this scale: with 96
characters of dialogue, which of the nine plays (chance 11 %) is guessed 17 % of the time from
character frequencies and 8-20 % from the shipped model's frozen hidden states; comedy or
tragedy stays at the majority class. A passage that short does not say which play it is from.
Whether its words are in Shakespeare's order, though, is something a language model knows and
a bag of characters cannot see at all: shuffling words within a line keeps every character
and every line length, so the bag-of-characters baseline is at chance *by construction*, and
anything above 50 % comes from reading the order. (It is the character-level cousin of
acceptability tasks such as CoLA.)

    python data/build_classification.py            # writes data/classification.jsonl
    python data/build_classification.py --results  # also trains the four classifiers and
                                                   # writes data/classification_results.json

How a passage is made (utils/plays.py finds the speeches):
  1. Only what characters *say*: speaker lines, stage directions and bracketed asides are
     removed, and every line is stripped of its indentation.
  2. Each play's spoken lines are split by position: lines in the first 80 % of the play go
     to the classifier's training pool, lines in the last 20 % to its test pool, so a test
     passage never shares a scene with a training passage.
  3. Each pool is cut into consecutive, non-overlapping passages that start at a line start
     and are exactly PASSAGE_CHARS characters long (lines joined with "\\n"; the last line is
     cut off mid-way). Equal lengths need no padding, so the last position the classifier
     reads is always a real character.
  4. From each play, N_TRAIN training and N_TEST test passages are drawn at random (seed
     SEED); every second one, in a shuffled order, has the words (runs of characters between
     single spaces) of each line shuffled until the passage differs from the original. Each
     passage is used once, real or shuffled, never both. Both classes are the same size in
     every play and split: the majority baseline is 50 %.

What the base model has seen. The shipped model was pre-trained (next-character prediction)
on the first 90 % of the corpus: the real passages of the first seven plays and of the Dream
were part of its training text, so it may recognise them; Twelfth Night's were not. Each
record says `seen_in_pretraining`, and the chapter reports Twelfth Night's accuracy
separately as the honest measure on text the model never saw.

Each line of the output is one JSON record:
  {"text": ..., "label": 1 (as written) | 0 (shuffled), "play": ..., "split": "train"|"test",
   "start": first character's offset in data/shakespeare.txt, "end": last line's end offset,
   "seen_in_pretraining": bool}
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.paths import write_text_atomic  # noqa: E402
from utils.plays import PLAYS, load_speeches, play_spans, val_start  # noqa: E402

PASSAGE_CHARS = 96
LABELS = ("shuffled", "as written")
N_TRAIN = 80          # per play
N_TEST = 40           # per play
TEST_FRACTION = 0.2   # the last 20 % of each play is the test pool
SEED = 0
OUTPUT = Path(__file__).resolve().parent / "classification.jsonl"
RESULTS = Path(__file__).resolve().parent / "classification_results.json"
STEPS = 120           # training steps of every variant in the precomputed results
BATCH_SIZE = 32

_ASIDE = re.compile(r"\[[^\]]*\]")


def spoken_lines(play: str) -> list[tuple[int, str]]:
    """(corpus offset, line) for every spoken line of `play`, directions and asides removed."""
    lines = []
    for speech in load_speeches(play):
        offset = speech.start
        for raw in speech.text.split("\n"):
            line = " ".join(_ASIDE.sub(" ", raw).split())
            if line:
                lines.append((offset + len(raw) - len(raw.lstrip()), line))
            offset += len(raw) + 1
    return lines


def cut_passages(lines: list[tuple[int, str]], length: int) -> list[tuple[int, int, str]]:
    """Consecutive non-overlapping passages of exactly `length` characters, each starting at
    a line start: (start offset, end offset of its last line, text)."""
    passages, i = [], 0
    while i < len(lines):
        j, text = i, lines[i][1]
        while len(text) < length and j + 1 < len(lines):
            j += 1
            text += "\n" + lines[j][1]
        if len(text) < length:
            break                                   # the pool's tail is too short
        passages.append((lines[i][0], lines[j][0] + len(lines[j][1]), text[:length]))
        i = j + 1
    return passages


def shuffle_words(text: str, rng: random.Random, tries: int = 20) -> str | None:
    """`text` with the words of each line in a random order (spaces and newlines stay where
    they are); None when no shuffle changes it (every line has one distinct word)."""
    lines = text.split("\n")
    for _ in range(tries):
        shuffled = []
        for line in lines:
            words = line.split(" ")
            rng.shuffle(words)
            shuffled.append(" ".join(words))
        result = "\n".join(shuffled)
        if result != text:
            return result
    return None


def build(length: int = PASSAGE_CHARS, n_train: int = N_TRAIN, n_test: int = N_TEST,
          seed: int = SEED) -> list[dict]:
    """The records, in play order, training passages first within each play."""
    rng = random.Random(seed)
    spans, held_out = play_spans(), val_start()
    records = []
    for play in PLAYS:
        start, end = spans[play]
        cut = start + int((end - start) * (1 - TEST_FRACTION))
        lines = spoken_lines(play)
        pools = {"train": [x for x in lines if x[0] < cut], "test": [x for x in lines if x[0] >= cut]}
        for split, n in (("train", n_train), ("test", n_test)):
            candidates = cut_passages(pools[split], length)
            if len(candidates) < n:
                raise ValueError(f"{play} has only {len(candidates)} {split} passages of {length} "
                                 f"characters, asked for {n}")
            if n % 2:
                raise ValueError(f"n_train and n_test must be even (half real, half shuffled), got {n}")
            rng.shuffle(candidates)
            chosen, labels = [], [1, 0] * n
            for p_start, p_end, text in candidates:
                if len(chosen) == n:
                    break
                label = labels[len(chosen)]
                if label == 0:
                    text = shuffle_words(text, rng)
                    if text is None:
                        continue                    # nothing to shuffle: take the next passage
                chosen.append({"text": text, "label": label, "play": play, "split": split,
                               "start": p_start, "end": p_end,
                               "seen_in_pretraining": p_end <= held_out})
            if len(chosen) < n:
                raise ValueError(f"{play}: only {len(chosen)} usable {split} passages, asked for {n}")
            records += sorted(chosen, key=lambda r: r["start"])
    return records


def write(records: list[dict], path: Path = OUTPUT) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def train_all(records: list[dict], steps: int = STEPS, seed: int = SEED) -> dict:
    """Train the classifier four ways (utils.classification.VARIANTS) on the training
    passages and measure each on the test passages; returns a JSON-ready summary."""
    import datetime
    import platform
    import time

    import torch

    from utils.classification import (
        VARIANTS,
        GPTClassifier,
        accuracy,
        confusion_matrix,
        encode_records,
        predict,
        set_trainable,
        train_classifier,
        trainable_parameters,
    )
    from utils.device import set_seed
    from utils.pretrained import load_pretrained

    torch.set_num_threads(1)
    results = {"command": "python data/build_classification.py --results", "steps": steps,
               "batch_size": BATCH_SIZE, "seed": seed, "torch": torch.__version__,
               "machine": f"{platform.machine()} CPU, 1 torch thread",
               "date": datetime.date.today().isoformat(), "variants": {}}
    for which, lr in VARIANTS.items():
        base, tokenizer = load_pretrained("shakespeare-char")
        x_train, y_train, _ = encode_records(records, "train", tokenizer)
        x_test, y_test, seen = encode_records(records, "test", tokenizer)
        set_seed(seed)                      # the head's random start, as in the chapter
        classifier = set_trainable(GPTClassifier(base, n_classes=2), which)
        started = time.perf_counter()
        losses = train_classifier(classifier, x_train, y_train, steps, batch_size=BATCH_SIZE,
                                  lr=lr, seed=seed)
        seconds = time.perf_counter() - started
        pred = predict(classifier, x_test)
        results["variants"][which] = {
            "lr": lr, "trainable": trainable_parameters(classifier), "seconds": round(seconds, 1),
            "accuracy": round(accuracy(pred, y_test), 4),
            "accuracy_unseen": round(accuracy(pred[~seen], y_test[~seen]), 4),
            "confusion": confusion_matrix(pred, y_test, 2).tolist(),
            "losses": [round(v, 4) for v in losses]}
        row = results["variants"][which]
        print(f"{which:>10}: {row['trainable']:>9,} trainable, {seconds:6.1f} s, test accuracy "
              f"{row['accuracy']:.3f} (text unseen in pre-training {row['accuracy_unseen']:.3f})",
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", action="store_true",
                        help="also train the four classifiers and write " + RESULTS.name)
    args = parser.parse_args()
    records = build()
    write(records)
    for split in ("train", "test"):
        part = [r for r in records if r["split"] == split]
        seen = sum(r["seen_in_pretraining"] for r in part)
        print(f"{split}: {len(part)} passages ({len(part) // len(PLAYS)} per play, half shuffled), "
              f"{seen} of them inside the base model's pre-training text")
    print(f"wrote {OUTPUT.name}: {OUTPUT.stat().st_size:,} bytes")
    if args.results:
        results = train_all(records)
        write_text_atomic(RESULTS, json.dumps(results, indent=1) + "\n")
        print(f"wrote {RESULTS.name}")


if __name__ == "__main__":
    main()
