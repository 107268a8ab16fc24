"""The report card (utils/report_card.py): every number of the table recomputed here by a
route of its own, on a small slice, for the shipped char model and a tiny BPE family made in
a temporary folder (a base GPT and an instruction-tuned copy of it)."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import utils.report_card as rc
from utils.bpe_tokenizer import pretrained_bpe
from utils.chat_tasks import TASKS, evaluate_tasks, load_chat_tasks
from utils.instructions import ChatTokenizer, Instruction, add_special_tokens, encode_example
from utils.model import GPT, GPTConfig, estimate_flops_per_token, parameter_breakdown
from utils.paths import REPO_ROOT
from utils.preferences import Preference
from utils.pretrained import load_model_file, pretrained_path, pretrained_record, save_pretrained
from utils.tokenizers import CharTokenizer
from utils.tuning import instruction_tune

LIMIT, TASK_LIMIT = 3000, 3            # held-out characters; prompts per task
BASE_TOKENS = {"tokens_per_step": 256, "steps": 10}
SFT_TOKENS = 1234


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(entries, paths): the shipped char model, and a tiny BPE base + a tuned copy that has
    memorised half of the held-out slice (so its accuracies are neither all 0 nor all 1)."""
    folder = tmp_path_factory.mktemp("card")
    tok = pretrained_bpe(512)
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32))
    save_pretrained(folder / "base.safetensors", base, tok, BASE_TOKENS)
    tuned, chat = add_special_tokens(base, tok)
    instruction_tune(tuned, chat, rc.held_out_tasks(TASK_LIMIT)[::2], steps=40, batch_size=6, lr=1e-2)
    save_pretrained(folder / "sft.safetensors", tuned, chat, {"tuning_tokens": {"sft": SFT_TOKENS}})
    entries = [rc.Entry("char", pretrained_path("shakespeare-char")),
               rc.Entry("base", folder / "base.safetensors"),
               rc.Entry("sft", folder / "sft.safetensors", tuned_from="base")]
    return entries, {e.name: e.path for e in entries}


@pytest.fixture(scope="module")
def rows(family):
    return rc.report_card(family[0], limit=LIMIT, task_limit=TASK_LIMIT, log=lambda *a: None)


def _row(rows, name):
    return next(r for r in rows if r["model"] == name)


def _bits_per_char_by_hand(model, tok, text):
    """Consecutive windows of block_size tokens, every target scored once, total nats over
    the characters the targets spell."""
    ids = torch.tensor(tok.encode(text))
    T = model.config.block_size
    n = (len(ids) - 1) // T
    x, y = ids[: n * T].view(n, T), ids[1 : n * T + 1].view(n, T)
    with torch.no_grad():
        nats = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten(), reduction="sum").item()
    return nats / len(tok.decode(y.flatten().tolist())) / math.log(2)


def _preference_accuracy_by_hand(model, chat, pairs):
    """log p(response | prompt) summed token by token, one pair at a time."""
    def logp(prompt, response):
        ids, n = encode_example(chat, prompt, response)
        with torch.no_grad():
            logits = model(torch.tensor([ids[:-1]]))[0][0]
        return sum(torch.log_softmax(logits[i], -1)[ids[i + 1]].item() for i in range(n - 1, len(ids) - 1))

    return sum(logp(p.prompt, p.chosen) > logp(p.prompt, p.rejected) for p in pairs) / len(pairs)


def test_one_row_per_model_in_order(rows, family):
    assert [r["model"] for r in rows] == [e.name for e in family[0]]


def test_parameters_match_the_config_formula(rows, family):
    for name, path in family[1].items():
        model, _, _ = load_model_file(path)
        assert _row(rows, name)["parameters"] == parameter_breakdown(model.config)["total"]
    assert _row(rows, "sft")["parameters"] == _row(rows, "base")["parameters"] + 3 * 32  # 3 new rows


def test_training_flops_are_flops_per_token_times_recorded_tokens(rows, family):
    char, _, _ = load_model_file(family[1]["char"])
    record = pretrained_record("shakespeare-char")
    fpt = estimate_flops_per_token(char.config, training=True)
    assert _row(rows, "char")["training_flops"] == fpt * record["tokens_per_step"] * record["steps"]
    base, _, _ = load_model_file(family[1]["base"])
    sft, _, _ = load_model_file(family[1]["sft"])
    base_flops = estimate_flops_per_token(base.config, training=True) * 256 * 10
    assert _row(rows, "base")["training_flops"] == base_flops
    expected = base_flops + estimate_flops_per_token(sft.config, training=True) * SFT_TOKENS
    assert _row(rows, "sft")["training_flops"] == pytest.approx(expected, rel=1e-12)
    assert _row(rows, "sft")["flops_counted"] == "pre-training + SFT"


def test_bits_per_char_match_a_computation_by_hand(rows, family):
    text = rc.held_out_text(LIMIT)
    assert len(text) == LIMIT and text == rc.held_out_text()[:LIMIT]
    for name, path in family[1].items():
        model, tok, _ = load_model_file(path)
        assert _row(rows, name)["val_bits_per_char"] == pytest.approx(
            _bits_per_char_by_hand(model, tok, text), rel=1e-5)
        assert _row(rows, name)["val_chars"] == LIMIT


def test_held_out_slice_is_test_prompts_spread_over_every_task():
    examples = rc.held_out_tasks(TASK_LIMIT)
    test = load_chat_tasks("test")
    assert all(e in test for e in examples) and len(set(examples)) == len(examples)
    assert sorted(e.task for e in examples) == sorted(list(TASKS) * TASK_LIMIT)
    assert len(rc.held_out_pairs(TASK_LIMIT)) == TASK_LIMIT * len(TASKS)
    everything = rc.held_out_tasks(None)
    assert len(everything) == len(test) and set(everything) == set(test)


def test_task_accuracy_matches_evaluate_tasks_on_the_slice(rows, family):
    examples = rc.held_out_tasks(TASK_LIMIT)
    sft, chat, _ = load_model_file(family[1]["sft"])
    fresh = evaluate_tasks(sft, chat, examples)
    assert _row(rows, "sft")["tasks"] == {t: fresh[t] for t in TASKS}
    assert 0 < fresh["all"] < 1, "the memorised half should be right, the rest mostly wrong"
    base, tok, _ = load_model_file(family[1]["base"])
    untuned = evaluate_tasks(*add_special_tokens(base, tok), examples)
    assert _row(rows, "base")["tasks"] == {t: untuned[t] for t in TASKS}
    assert _row(rows, "char")["tasks"] is None and _row(rows, "char")["preference_accuracy"] is None


def test_preference_accuracy_matches_log_probs_by_hand(rows, family):
    pairs = rc.held_out_pairs(TASK_LIMIT)
    sft, chat, _ = load_model_file(family[1]["sft"])
    assert _row(rows, "sft")["preference_accuracy"] == pytest.approx(
        _preference_accuracy_by_hand(sft, chat, pairs))
    base, tok, _ = load_model_file(family[1]["base"])
    assert _row(rows, "base")["preference_accuracy"] == pytest.approx(
        _preference_accuracy_by_hand(*add_special_tokens(base, tok), pairs))


def test_tokens_per_second_is_positive_and_finite(rows):
    for row in rows:
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
        assert row["generated_tokens"] == rc.GEN_TOKENS


def test_markdown_has_one_line_per_model_with_its_numbers(rows):
    baselines = rc.baselines_for(rows, TASK_LIMIT)
    text = rc.to_markdown(rows, baselines, command="python -m utils.report_card --limit 3000")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)                        # the header, then one per model
    for line, row in zip(table[1:], rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["model"]
        assert cells[3] == f"{row['val_bits_per_char']:.3f}"
        assert len(cells) == len(table[0].strip("|").split("|"))
    char_cells = table[1].split("|")
    assert char_cells[5].strip() == "—"                       # not scored on the chat tasks
    sft_line = table[3]
    for task in TASKS:
        name, value = rc.best_baseline(_row(rows, "sft"), rows, baselines, task)
        assert f"{100 * _row(rows, 'sft')['tasks'][task]:.0f} % ({name} {100 * value:.0f} %)" in sft_line
    assert "python -m utils.report_card --limit 3000" in text and torch.__version__ in text


def test_majority_and_copy_baselines_by_hand(rows):
    baselines = rc.baselines_for(rows, TASK_LIMIT)
    train = load_chat_tasks("train")
    for task in TASKS:
        answers = [e.response for e in train if e.task == task]
        top = max(map(answers.count, set(answers)))
        slice_ = [e for e in rc.held_out_tasks(TASK_LIMIT) if e.task == task]
        # end_mark's answers are balanced in training: any most common one is "the majority"
        scores = {sum(e.response == a for e in slice_) / len(slice_)
                  for a in set(answers) if answers.count(a) == top}
        assert baselines[task]["majority"] in scores
        copied = sum(e.instruction.partition("\n")[2] == e.response for e in slice_) / len(slice_)
        assert baselines[task]["copy"] == copied
        assert "untuned" not in baselines[task]         # the base row is the untuned baseline


def test_best_baseline_is_the_strongest_of_the_three():
    rows = [{"model": "b", "tuned_from": None, "tasks": {"t": 0.4, "u": 0.1}},
            {"model": "s", "tuned_from": "b", "tasks": {"t": 0.9, "u": 0.9}}]
    baselines = {"t": {"majority": 0.3, "copy": 0.2}, "u": {"majority": 0.05, "copy": 0.5}}
    assert rc.best_baseline(rows[1], rows, baselines, "t") == ("untuned", 0.4)
    assert rc.best_baseline(rows[1], rows, baselines, "u") == ("copy", 0.5)


def test_training_flops_without_a_record_is_nan_and_says_so():
    cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)
    flops, note = rc.training_flops(cfg, {})
    assert math.isnan(flops) and "no record" in note
    flops, note = rc.training_flops(cfg, {}, base_flops=100.0)
    assert flops == 100.0 and "not recorded" in note
    dpo, _ = rc.training_flops(cfg, {"tuning_tokens": {"dpo": 3}}, base_flops=0.0)
    assert dpo == 3 * 4 / 3 * estimate_flops_per_token(cfg, training=True)   # + the reference


def test_tuning_tokens_count_what_each_step_feeds_the_model():
    chat = ChatTokenizer(CharTokenizer("abc"))
    # <|instruction|> a b <|response|> c <|end|>: 6 ids, the model reads the first 5
    examples = [Instruction("t", "ab", "c", "train"), Instruction("t", "abc", "cc", "train")]
    assert rc.tuning_tokens(chat, examples, {"steps": 10, "batch_size": 2}) == {"sft": 10 * 2 * 6}
    pairs = [Preference("ab", "c", "cc", "rule", "train")]          # 5 + 6 per pair
    got = rc.tuning_tokens(chat, pairs=pairs, dpo={"steps": 3, "batch_size": 2})
    assert got == {"dpo": 3 * 2 * 11}


def test_bad_arguments_name_themselves(family):
    entries = family[0]
    with pytest.raises(ValueError, match="limit"):
        rc.report_card(entries[:1], limit=0)
    with pytest.raises(ValueError, match="limit"):
        rc.report_card(entries[:1], limit=50)           # fewer tokens than one window
    with pytest.raises(ValueError, match="tuned from 'base'"):
        rc.report_card([entries[2]], limit=LIMIT)


def test_command_line_writes_the_table(tmp_path):
    out = tmp_path / "card.md"
    result = subprocess.run([sys.executable, "-m", "utils.report_card", "--limit", "2000",
                             "--task-limit", "1", "--out", str(out)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    shipped = [e.name for e in rc.shipped_entries() if e.path.exists()]
    assert [line.split("|")[1].strip() for line in text.splitlines()[2:2 + len(shipped)]] == shipped
    assert "--limit 2000" in text
    help_text = subprocess.run([sys.executable, "-m", "utils.report_card", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60).stdout
    assert "--task-limit" in help_text and "--out" in help_text
