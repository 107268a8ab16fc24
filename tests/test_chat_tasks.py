"""Chapter 11's instruction tasks (utils/chat_tasks.py): the rules, the shipped datasets and
how they were split, the baselines, and the shipped tuned models against their record."""

import copy
import json
import sys

import pytest
import torch

from utils.chat_tasks import (
    CANDIDATES,
    END_MARKS,
    TASKS,
    answer_for,
    copy_baseline,
    end_mark,
    evaluate_tasks,
    first_word,
    input_text,
    last_word,
    load_chat_preferences,
    load_chat_tasks,
    margins,
    task_baselines,
    task_of,
    word_count,
)
from utils.instructions import ChatTokenizer, Instruction, add_special_tokens, encode_example
from utils.model import GPT, GPTConfig
from utils.paths import DATA_DIR
from utils.plays import load_speeches
from utils.tokenizers import CharTokenizer
from utils.tuning import instruction_tune, preference_accuracy

RESULTS = json.loads((DATA_DIR / "tuned_results.json").read_text())


def build_module():
    sys.path.insert(0, str(DATA_DIR))
    try:
        return __import__("build_chat_tasks")
    finally:
        sys.path.remove(str(DATA_DIR))


# ---- the rules ---------------------------------------------------------------------------------

def test_word_rules_on_lines_with_known_answers():
    assert first_word("Now, by my faith, lords") == "Now"
    assert first_word("O'er the hills!") == "O'er"
    assert first_word("'Tis so") is None and first_word("--And so") is None
    assert last_word("To be, or not to be:") == "be"
    assert last_word("Who's there?") == "there"
    assert last_word("The ne'er-do-well") is None and last_word("Farewell --") is None
    assert word_count("Who's there, my lord?") == "4"
    assert word_count("Go -- now") is None


def test_end_mark_names_each_mark_and_nothing_else():
    for mark, name in END_MARKS.items():
        assert end_mark("It is so" + mark) == name
    assert end_mark("And so") is None          # no mark
    assert end_mark("Away!--") is None         # a dash after the mark
    assert end_mark("Ay, 'tis so.'") is None   # a quote after it


def test_answer_for_the_other_rules():
    assert answer_for("speaker", "Who is speaking?\nLADY MACBETH. Out, damned spot!") == "LADY MACBETH"
    assert answer_for("longer", "Which line is longer, the first or the second?\nab\nabc") == "second"
    assert answer_for("longer", "Which line is longer, the first or the second?\nabc\nabc") is None
    cue = 'Which word comes after "{}" in this line?\nThe air bites shrewdly; it is very cold.'
    assert answer_for("next_word", cue.format("shrewdly")) == "it"
    assert answer_for("next_word", cue.format("cold")) is None      # nothing after it
    with pytest.raises(ValueError, match="task"):
        answer_for("rhyme", "Q?\nx")
    with pytest.raises(ValueError, match="question line"):
        input_text("no newline here")


# ---- the shipped datasets ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return load_chat_tasks("train"), load_chat_tasks("test")


def test_every_response_is_its_rule_applied_to_the_prompt(shipped):
    train, test = shipped
    assert {e.task for e in train} == {e.task for e in test} == set(TASKS)
    for e in train + test:
        assert answer_for(e.task, e.instruction) == e.response, e
    for task in TASKS:
        assert sum(e.task == task for e in train) >= 400 and sum(e.task == task for e in test) >= 100
    # balanced tasks: every answer equally often, so the majority baseline is 1 / classes
    for task, classes in (("end_mark", len(END_MARKS)), ("longer", 2)):
        counts = {}
        for e in test:
            if e.task == task:
                counts[e.response] = counts.get(e.response, 0) + 1
        assert len(counts) == classes and len(set(counts.values())) == 1


def test_held_out_examples_come_from_held_out_speeches_and_lines(shipped):
    train, test = shipped
    module = build_module()
    speeches, splits = load_speeches(), module.speech_splits()
    lines_by_split = {"train": set(), "test": set()}
    for speech, split in zip(speeches, splits, strict=True):
        lines_by_split[split].update(speech.lines)
    for examples, split in ((train, "train"), (test, "test")):
        for e in examples:
            text = input_text(e.instruction)
            lines = text.split("\n") if e.task == "longer" else [text.split(". ", 1)[1]
                                                                 if e.task == "speaker" else text]
            assert all(line in lines_by_split[split] for line in lines), e
            if split == "test":                    # never a line a training speech has
                assert not any(line in lines_by_split["train"] for line in lines), e
    assert not {e.instruction for e in train} & {e.instruction for e in test}


def test_examples_fit_the_models_context():
    from utils.pretrained import load_pretrained
    _, tokenizer = load_pretrained("shakespeare-bpe-sft")
    for e in load_chat_tasks():
        ids, n_prompt = encode_example(tokenizer, e.instruction, e.response)
        assert len(ids) <= 129 and n_prompt < len(ids)


def test_preferences_pair_each_prompt_with_a_wrong_answer_by_its_rule(shipped):
    train, test = shipped
    pairs_train, pairs_test = load_chat_preferences("train"), load_chat_preferences("test")
    # test pairs: one per held-out instruction; training pairs: fresh prompts, none an SFT one
    assert [(p.prompt, p.chosen) for p in pairs_test] == [(e.instruction, e.response) for e in test]
    assert not {p.prompt for p in pairs_train} & {e.instruction for e in train + test}
    assert len(pairs_train) >= 2000 and {task_of(p.prompt) for p in pairs_train} == set(TASKS)
    for p in pairs_train + pairs_test:
        assert answer_for(task_of(p.prompt), p.prompt) == p.chosen
        assert p.rejected and p.rejected != p.chosen
        text = input_text(p.prompt)
        if p.rule == "unfinished":
            assert p.chosen.startswith(p.rejected) and len(p.rejected) < len(p.chosen)
        elif p.rule == "copy":
            assert p.rejected == text
        elif p.rule == "too long":
            assert p.chosen in p.rejected and len(p.rejected) > len(p.chosen)
        elif p.rule == "neighbour":
            options = set(END_MARKS.values()) | {"first", "second"} | {
                w.strip(",.;:!?'") for w in text.split()}
            assert p.rejected in options
        else:
            pytest.fail(f"unknown rule {p.rule!r}")
    assert {p.rule for p in pairs_train} == {p.rule for p in pairs_test} == {
        "neighbour", "unfinished", "copy", "too long"}


def test_task_of_reads_the_question():
    assert task_of("How does this line end?\nAy.") == "end_mark"
    assert task_of('Which word comes after "to" in this line?\nto be') == "next_word"
    with pytest.raises(ValueError, match="question"):
        task_of("Why?\nBecause.")


def test_shipped_files_are_what_the_script_builds():
    rows, pairs = build_module().build()
    for name, built in (("chat_tasks", rows), ("chat_preferences", pairs)):
        path = DATA_DIR / f"{name}.jsonl"
        shipped = [json.loads(line) for line in path.open(encoding="utf-8")]
        assert built == shipped, f"data/{name}.jsonl is stale: rerun data/build_chat_tasks.py"
        assert path.stat().st_size < 600_000


# ---- baselines ---------------------------------------------------------------------------------

def make(task, instruction, response, split="test"):
    return Instruction(task, instruction, response, split)


def test_majority_and_copy_baselines_on_known_answers():
    train = [make("a", "Q?\nx", "yes", "train"), make("a", "Q?\nx", "yes", "train"),
             make("a", "Q?\nx", "no", "train"), make("b", "Q?\nhi", "hi", "train")]
    test = [make("a", "Q?\nyes", "yes"), make("a", "Q?\nyes", "no"), make("a", "Q?\nno", "no"),
            make("a", "Q?\nmaybe", "yes"), make("b", "Q?\nhi", "hi"), make("b", "Q?\nho", "he")]
    assert copy_baseline(test) == {"a": 0.5, "b": 0.5}
    assert task_baselines(train, test) == {"a": {"majority": 0.5, "copy": 0.5},
                                           "b": {"majority": 0.5, "copy": 0.5}}
    with pytest.raises(ValueError, match="no training examples"):
        task_baselines(train[:3], test)
    with pytest.raises(ValueError, match="tokenizer"):
        task_baselines(train, test, untuned_model=object())


@pytest.fixture(scope="module")
def tiny():
    """A tiny model (plain tokenizer, no special tokens yet) and data it can memorise."""
    torch.manual_seed(0)
    base = CharTokenizer("abcdefgh ?\n")
    model = GPT(GPTConfig(vocab_size=base.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16))
    data = [make("t", "ab?\ncab", "cab", "train"), make("u", "hg?\nd", "d", "train"),
            make("t", "ba?\nhh", "gg", "train")]
    return model.eval(), base, data


def test_untuned_baseline_scores_the_model_as_given_and_leaves_it_alone(tiny):
    model, base, data = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = task_baselines(data, data, model, base)
    assert model.config.vocab_size == base.vocab_size            # special tokens went on a copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    added, chat = add_special_tokens(copy.deepcopy(model), base)
    expected = evaluate_tasks(added, chat, data)
    assert {t: got[t]["untuned"] for t in got} == {t: expected[t] for t in got}
    # a model that knows the answers by heart scores 1.0 as the "untuned" one
    instruction_tune(added, chat, data, steps=120, batch_size=3, lr=1e-2)
    scores = task_baselines(data, data, added, chat)
    assert {t: s["untuned"] for t, s in scores.items()} == {"t": 1.0, "u": 1.0}
    assert scores["t"]["copy"] == 0.5 and scores["u"]["copy"] == 1.0


def test_evaluate_tasks_restores_the_mode_and_refuses_nothing(tiny):
    model, base, data = tiny
    added, chat = add_special_tokens(copy.deepcopy(model), base)
    added.train()
    scores = evaluate_tasks(added, chat, data)
    assert added.training and set(scores) == {"t", "u", "all"}
    with pytest.raises(ValueError, match="examples"):
        evaluate_tasks(added, chat, [])


def test_margins_pick_the_strongest_baseline():
    got = margins({"a": 0.9, "b": 0.2}, {"a": {"majority": 0.3, "copy": 0.5, "untuned": 0.1},
                                         "b": {"majority": 0.25, "copy": 0.0}})
    assert got["a"] == {"accuracy": 0.9, "best_baseline": "copy", "baseline": 0.5, "margin": 0.4}
    assert got["b"]["best_baseline"] == "majority" and got["b"]["margin"] == pytest.approx(-0.05)


# ---- the shipped tuned models and their record -------------------------------------------------

def test_the_record_says_every_shipped_task_clears_the_bar():
    assert RESULTS["bar"] == 0.2
    for model in ("sft", "dpo"):
        for task in TASKS:
            row = RESULTS[model]["tasks"][task]
            best = max(RESULTS["baselines"][task].values())
            assert row["baseline"] == best and row["accuracy"] - best >= 0.2 - 1e-9, (model, task)
    # the screening measured every candidate; the shipped tasks are among those that passed
    screening = RESULTS["screening"]
    assert set(screening["tasks"]) == set(CANDIDATES)
    assert all(screening["passed"][task] for task in TASKS)


def test_the_recorded_answers_give_the_recorded_scores():
    test = load_chat_tasks("test")
    for name in ("sft", "dpo"):
        answers = RESULTS[name]["answers"]
        assert len(answers) == len(test)
        for task in TASKS:
            pairs = [(a, e.response) for a, e in zip(answers, test, strict=True) if e.task == task]
            right = sum(a == r for a, r in pairs) / len(pairs)
            assert right == pytest.approx(RESULTS[name]["exact_match"][task]), (name, task)


SLICE = 25      # held-out examples per task that the test answers again (100 in all, a few s)


@pytest.mark.parametrize("name", ["sft", "dpo"])
def test_shipped_tuned_model_gives_its_recorded_answers(name):
    from utils.instructions import evaluate_instructions
    from utils.pretrained import load_pretrained, pretrained_path
    path = pretrained_path(f"shakespeare-bpe-{name}")
    assert path.stat().st_size <= 6_000_000
    model, tokenizer = load_pretrained(f"shakespeare-bpe-{name}")
    assert isinstance(tokenizer, ChatTokenizer)
    test = load_chat_tasks("test")
    picked = [i for task in TASKS for i in [j for j, e in enumerate(test) if e.task == task][:SLICE]]
    _, answers = evaluate_instructions(model, tokenizer, [test[i] for i in picked])
    recorded = [RESULTS[name]["answers"][i] for i in picked]
    # Greedy answers are deterministic on one machine, but another CPU's float kernels can
    # flip a near-tie between two tokens: allow one answer in the 100 to differ.
    differ = [(test[i].instruction, got, want) for i, got, want in zip(picked, answers, recorded, strict=True)
              if got != want]
    assert len(differ) <= 1, differ
    pairs = load_chat_preferences("test")
    recorded = RESULTS["preference_accuracy"]["rules"][name]["all"]
    assert abs(preference_accuracy(model, tokenizer, pairs) - recorded) <= 2 / len(pairs) + 1e-9


def test_the_record_is_of_the_shipped_base_model():
    # a new shakespeare-bpe makes the tuned models stale: rerun data/build_tuned_models.py
    from utils.checkpoints import checksum
    from utils.pretrained import load_pretrained, pretrained_record
    base, _ = load_pretrained("shakespeare-bpe")
    weights = {k: v.detach().cpu() for k, v in base.state_dict().items()}
    assert checksum(weights) == RESULTS["base"]["checksum"]
    for name in ("sft", "dpo"):
        assert pretrained_record(f"shakespeare-bpe-{name}")["base"] == RESULTS["base"]
