"""Instruction tasks a small model can learn: answers that are in the prompt (chapter 11).

Chapter 10 asked the character model questions whose answers are *facts about the plays*
(which play? who speaks?). After tuning it stayed near the majority baseline: a model of about
a million parameters that read the plays once does not hold such facts. The tasks here ask
about the **form** of the text in the prompt instead, so every answer can be read off the
prompt by a short rule, and what the model must learn is where to look:

    task        instruction                                       response
    first_word  What is the first word of this line?\\n<line>      its first word, no punctuation
    speaker     Who is speaking?\\n<NAME>. <line>                  NAME ("Ham", "FIRST WITCH")
    end_mark    How does this line end?\\n<line>                   "comma", "full stop", ...
    longer      Which line is longer, the first or the second?\\n<line>\\n<line>
                                                                  "first" or "second"

`answer_for(task, instruction)` is that rule; `data/build_chat_tasks.py` builds
data/chat_tasks.jsonl with it, and `load_chat_tasks` reads it back.

Three more candidates were measured the same way and dropped (`CANDIDATES` keeps their rules,
data/tuned_results.json their numbers under "screening"). `last_word` and `next_word` stayed
at the majority baseline, for a reason that is about tokens, not about reading: inside a line
a word's tokens carry its leading space, while the answer alone is spelled without it and
often splits differently (" question" is one token of the shipped tokenizer, "question" is
"qu" + "estion"), so the answer cannot be copied, it must be re-spelled. `first_word`
copies the tokens right after a newline, which have no space before them either, and is
learnt. `word_count` (counting) cleared the bar only just, and not on every checkpoint of
the base model it was tried on, so it is not shipped.

To count as learned, a task must beat its best *simple baseline* by a clear margin:
`task_baselines` scores the majority answer, the copied prompt (answering with the input
text itself), and the untuned model; `evaluate_tasks` scores a model by greedy exact match.

data/chat_preferences.jsonl pairs an answer (chosen) with a plausible wrong one (rejected) for
preference tuning (`utils.tuning.preference_tune`); `load_chat_preferences` reads it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

from utils.instructions import (
    ChatTokenizer,
    Instruction,
    add_special_tokens,
    evaluate_instructions,
    exact_match,
    majority_baseline,
    read_jsonl,
)
from utils.paths import DATA_DIR
from utils.preferences import Preference

CHAT_TASKS_FILE = DATA_DIR / "chat_tasks.jsonl"
CHAT_PREFERENCES_FILE = DATA_DIR / "chat_preferences.jsonl"

# A word: letters, with apostrophes only inside ("o'er", "ne'er"); "'Tis" and "--" are not.
WORD = r"[A-Za-z]+(?:'[A-Za-z]+)*"
_WORD_THEN_MARKS = re.compile(rf"({WORD})[,.;:!?]*")
END_MARKS = {".": "full stop", ",": "comma", "?": "question mark", "!": "exclamation mark",
             ";": "semicolon", ":": "colon"}

QUESTIONS = {
    "first_word": "What is the first word of this line?",
    "last_word": "What is the last word of this line?",
    "speaker": "Who is speaking?",
    "end_mark": "How does this line end?",
    "word_count": "How many words are in this line?",
    "next_word": 'Which word comes after "{cue}" in this line?',
    "longer": "Which line is longer, the first or the second?",
}


def input_text(instruction: str) -> str:
    """What the question is about: the instruction after its first line (the question).

    >>> input_text("Who is speaking?\\nHam. To be, or not to be")
    'Ham. To be, or not to be'
    """
    question, newline, text = instruction.partition("\n")
    if not newline:
        raise ValueError(f"instruction: expected a question line, a newline, then the text; "
                         f"got {instruction!r}")
    return text


def task_of(instruction: str) -> str:
    """Which candidate task an instruction asks, from its question line.

    >>> task_of("Who is speaking?\\nHam. Words, words, words.")
    'speaker'
    """
    question = instruction.partition("\n")[0]
    for task, template in QUESTIONS.items():
        if re.fullmatch(re.escape(template).replace(re.escape("{cue}"), '[^"]+'), question):
            return task
    raise ValueError(f"instruction: its question {question!r} is none of the tasks' questions")


# ------------------------------------------------------------------------------------ the rules

def first_word(line: str) -> str | None:
    """The line's first word without its punctuation, or None when it is not a plain word.

    >>> first_word("Now, by my faith, lords, 'twas"), first_word("'Tis so")
    ('Now', None)
    """
    match = _WORD_THEN_MARKS.fullmatch(line.split()[0]) if line.split() else None
    return match.group(1) if match else None


def last_word(line: str) -> str | None:
    """The line's last word without its punctuation, or None when it is not a plain word.

    >>> last_word("That is the question."), last_word("Farewell --")
    ('question', None)
    """
    match = _WORD_THEN_MARKS.fullmatch(line.split()[-1]) if line.split() else None
    return match.group(1) if match else None


def end_mark(line: str) -> str | None:
    """The name of the mark that ends the line ("comma", ...), or None for any other ending.

    >>> end_mark("Who's there?"), end_mark("And so")
    ('question mark', None)
    """
    return END_MARKS.get(line[-1:]) if line[-2:-1].isalpha() else None


def word_count(line: str) -> str | None:
    """How many words the line has, as digits, when every space-separated piece has a letter.

    >>> word_count("Who's there, my lord?")
    '4'
    """
    pieces = line.split()
    return str(len(pieces)) if pieces and all(re.search("[A-Za-z]", p) for p in pieces) else None


def _speaker(text: str) -> str | None:
    name, sep, _ = text.partition(". ")
    return name if sep else None


def _next_word(instruction: str) -> str | None:
    cue = re.match(r'Which word comes after "([^"]+)"', instruction)
    words = [_WORD_THEN_MARKS.fullmatch(p) for p in input_text(instruction).split()]
    words = [m.group(1) if m else None for m in words]
    if cue is None or words.count(cue.group(1)) != 1:
        return None
    i = words.index(cue.group(1))
    return words[i + 1] if i + 1 < len(words) else None


def _longer(text: str) -> str | None:
    first, _, second = text.partition("\n")
    return None if len(first) == len(second) else ("first" if len(first) > len(second) else "second")


def _line_rule(rule: Callable[[str], str | None]) -> Callable[[str], str | None]:
    return lambda instruction: rule(input_text(instruction))


# Every candidate that was measured: task -> rule(instruction) -> answer (None: no answer).
CANDIDATES: dict[str, Callable[[str], str | None]] = {
    "first_word": _line_rule(first_word),
    "last_word": _line_rule(last_word),
    "speaker": _line_rule(_speaker),
    "end_mark": _line_rule(end_mark),
    "word_count": _line_rule(word_count),
    "next_word": _next_word,
    "longer": _line_rule(_longer),
}
# The tasks that cleared the bar (data/tuned_results.json has every candidate's numbers).
TASKS: tuple[str, ...] = ("first_word", "speaker", "end_mark", "longer")


def answer_for(task: str, instruction: str) -> str | None:
    """The correct response to `instruction`, computed from the prompt by `task`'s rule.

    >>> answer_for("last_word", "What is the last word of this line?\\nTo be, or not to be:")
    'be'
    """
    if task not in CANDIDATES:
        raise ValueError(f"task must be one of {list(CANDIDATES)}, got {task!r}")
    return CANDIDATES[task](instruction)


# -------------------------------------------------------------------------------------- datasets

def load_chat_tasks(split: str | None = None) -> list[Instruction]:
    """The shipped chapter-11 tasks, data/chat_tasks.jsonl (all, or split="train" / "test")."""
    return read_jsonl(CHAT_TASKS_FILE, Instruction, split)


def load_chat_preferences(split: str | None = None) -> list[Preference]:
    """The shipped preference pairs, data/chat_preferences.jsonl (all, or one split).

    Each `prompt` is an instruction (it goes through the chat template, `format_prompt`),
    `chosen` its correct answer and `rejected` a wrong one made by the rule named in `rule`;
    both responses end with <|end|> when encoded (`utils.tuning.encode_chat_pair`).
    """
    return read_jsonl(CHAT_PREFERENCES_FILE, Preference, split)


# ------------------------------------------------------------------------------------- scoring

def copy_baseline(test: Sequence[Instruction]) -> dict[str, float]:
    """Exact match of answering with the input text itself (the prompt minus its question):
    what a model that only learned to echo its prompt would score."""
    scores = {}
    for task in sorted({e.task for e in test}):
        examples = [e for e in test if e.task == task]
        scores[task] = exact_match([input_text(e.instruction) for e in examples],
                                   [e.response for e in examples])
    return scores


def evaluate_tasks(model, tokenizer: ChatTokenizer, examples: Sequence[Instruction]) -> dict[str, float]:
    """{task: exact match of the model's greedy answers, ..., "all": over every example}."""
    if not examples:
        raise ValueError("examples: need at least one instruction to evaluate")
    was_training = model.training
    model.eval()
    try:
        return evaluate_instructions(model, tokenizer, examples)[0]
    finally:
        model.train(was_training)


def evaluate_after_history(model, tokenizer: ChatTokenizer, examples: Sequence[Instruction],
                           earlier: Sequence[Instruction], seed: int = 0) -> dict[str, float]:
    """Like `evaluate_tasks`, but each question comes after one earlier exchange, as in a chat:
    a question of another task from `earlier` with its correct answer, drawn with `seed`.

    A model tuned on single exchanges only has never seen its question anywhere but right
    after the first <|instruction|>; this measures what a history in front does to it.
    """
    import random

    from utils.chat import Turn, reply

    if not examples:
        raise ValueError("examples: need at least one instruction to evaluate")
    rng = random.Random(seed)
    hits: dict[str, list[bool]] = {}
    for example in examples:
        other = rng.choice([e for e in earlier if e.task != example.task] or list(earlier))
        history = [Turn("user", other.instruction), Turn("assistant", other.response)]
        run = reply(model, tokenizer, history, example.instruction, len(example.response) + 1)
        hits.setdefault(example.task, []).append(run.finished and run.text == example.response)
    scores = {task: sum(h) / len(h) for task, h in sorted(hits.items())}
    scores["all"] = sum(sum(h) for h in hits.values()) / len(examples)
    return scores


def task_baselines(train: Sequence[Instruction], test: Sequence[Instruction], untuned_model=None,
                   tokenizer=None) -> dict[str, dict[str, float]]:
    """{task: {"majority": acc, "copy": acc, "untuned": acc}} on `test`, each by exact match.

    majority  always the task's most common answer in `train` (`majority_baseline`)
    copy      the input text of the instruction (`copy_baseline`)
    untuned   the greedy answers of `untuned_model`, the pre-trained model before any tuning
              (only when a model is given). Pass its plain tokenizer, and special tokens are
              added to a copy of the model, which is left unchanged; or a model that already
              has them with its ChatTokenizer.
    """
    if not train or not test:
        raise ValueError("train and test must both hold instructions")
    missing = {e.task for e in test} - {e.task for e in train}
    if missing:
        raise ValueError(f"test has tasks with no training examples, so no majority answer: "
                         f"{sorted(missing)}")
    majority, copied = majority_baseline(train, test), copy_baseline(test)
    out = {task: {"majority": majority[task], "copy": copied[task]} for task in majority}
    if untuned_model is not None:
        if tokenizer is None:
            raise ValueError("tokenizer: the untuned model needs its tokenizer")
        if not isinstance(tokenizer, ChatTokenizer):
            untuned_model, tokenizer = add_special_tokens(copy.deepcopy(untuned_model), tokenizer)
        untuned = evaluate_tasks(untuned_model, tokenizer, test)
        for task in out:
            out[task]["untuned"] = untuned[task]
    return out


def margins(scores: dict[str, float], baselines: dict[str, dict[str, float]]) -> dict[str, dict]:
    """{task: {"accuracy", "best_baseline" (its name), "baseline" (its score), "margin"}}: how
    far each task's accuracy is above the strongest of its baselines (points are margin x 100).

    >>> margins({"t": 0.9}, {"t": {"majority": 0.3, "copy": 0.0}})["t"]["margin"]
    0.6
    """
    out = {}
    for task, base in baselines.items():
        name = max(base, key=base.get)
        out[task] = {"accuracy": scores[task], "best_baseline": name, "baseline": base[name],
                     "margin": round(scores[task] - base[name], 6)}
    return out
