"""utils/classification.py: the GPT classifier, what trains, the baselines, and the shipped passages."""

import copy
import importlib.util
import json
import re

import pytest
import torch

from utils.classification import (
    LABELS,
    TRAINABLE,
    GPTClassifier,
    Hidden,
    accuracy,
    bag_of_characters,
    confusion_matrix,
    encode_passages,
    frozen_blocks,
    load_records,
    majority_baseline,
    predict,
    run_frozen,
    set_trainable,
    train_classifier,
    train_logistic,
    trainable_parameters,
)
from utils.model import GPT, GPTConfig
from utils.paths import DATA_DIR
from utils.plays import PLAYS


def tiny_gpt(seed=0, n_layer=3):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=n_layer, n_head=2, n_embd=16))


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- measuring

def test_confusion_matrix_rows_are_true_columns_predicted():
    true = torch.tensor([0, 0, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 0, 2, 2])
    cm = confusion_matrix(pred, true, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert cm.sum() == 6 and cm.trace() == 4
    assert confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                            2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)


def test_accuracy_and_majority_baseline():
    assert accuracy(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])) == 0.75
    with pytest.raises(ValueError, match="same non-empty shape"):
        accuracy(torch.tensor([1]), torch.tensor([1, 0]))
    majority, acc = majority_baseline(torch.tensor([2, 2, 1, 0, 2]), torch.tensor([2, 1, 1, 2]))
    assert (majority, acc) == (2, 0.5)


def test_bag_of_characters_counts_frequencies_not_order():
    ids = torch.tensor([[3, 1, 1, 0], [1, 0, 1, 3]])
    bags = bag_of_characters(ids, 5)
    assert bags.shape == (2, 5)
    assert torch.allclose(bags.sum(1), torch.ones(2))
    assert torch.equal(bags[0], bags[1])                       # same characters, other order
    assert torch.allclose(bags[0], torch.tensor([0.25, 0.5, 0.0, 0.25, 0.0]))


def test_logistic_baseline_learns_an_easy_task_and_not_an_order_task():
    gen = torch.Generator().manual_seed(0)
    # class 1 passages use characters 5..9 more often than class 0: frequencies tell them apart
    low = torch.randint(0, 7, (200, 40), generator=gen)
    high = torch.randint(3, 10, (200, 40), generator=gen)
    x, y = torch.cat([low, high]), torch.tensor([0] * 200 + [1] * 200)
    test_x = torch.cat([torch.randint(0, 7, (100, 40), generator=gen),
                        torch.randint(3, 10, (100, 40), generator=gen)])
    test_y = torch.tensor([0] * 100 + [1] * 100)
    model = train_logistic(bag_of_characters(x, 10), y, 2, steps=100)
    assert accuracy(model(bag_of_characters(test_x, 10)).argmax(-1), test_y) > 0.9
    # the same passages reversed (label 0) or not (label 1): identical bags, nothing to learn
    order = train_logistic(bag_of_characters(torch.cat([x, x.flip(1)]), 10),
                           torch.tensor([1] * 400 + [0] * 400), 2, steps=100)
    pred = order(bag_of_characters(torch.cat([test_x, test_x.flip(1)]), 10)).argmax(-1)
    assert torch.equal(pred[:200], pred[200:])                 # cannot tell a passage from its reverse


# ---------------------------------------------------------------------------- classifier

def test_classifier_reads_the_final_norm_of_the_last_position():
    gpt = tiny_gpt()
    clf = GPTClassifier(gpt, n_classes=4).eval()
    idx = torch.randint(0, 12, (3, 10))
    with torch.no_grad():
        expected = clf.head(gpt.norm(gpt(idx, return_hidden=True).hidden_states[-1][:, -1]))
        logits = clf(idx)
    assert logits.shape == (3, 4)
    assert torch.allclose(logits, expected, atol=1e-6)
    with pytest.raises(ValueError, match="n_classes"):
        GPTClassifier(gpt, n_classes=1)


def test_prediction_depends_on_every_token_of_the_passage_through_attention():
    clf = GPTClassifier(tiny_gpt(), n_classes=3).eval()
    idx = torch.randint(0, 12, (1, 10))
    with torch.no_grad():
        base_logits = clf(idx)
        for position in (0, 4, 9):                             # first, middle, last token
            changed = idx.clone()
            changed[0, position] = (changed[0, position] + 1) % 12
            assert not torch.allclose(clf(changed), base_logits), position


def test_starting_from_stored_hidden_states_gives_the_same_logits():
    clf = GPTClassifier(tiny_gpt(), n_classes=2).eval()
    idx = torch.randint(0, 12, (4, 8))
    with torch.no_grad():
        full = clf(idx)
        for k in range(4):
            assert torch.allclose(clf.logits_from(clf.hidden_after(idx, k), k), full, atol=1e-6)


@pytest.mark.parametrize("which", TRAINABLE)
def test_set_trainable_freezes_exactly_what_it_says(which):
    clf = set_trainable(GPTClassifier(tiny_gpt(), n_classes=2), which)
    names = trainable_names(clf)
    everything = {name for name, _ in clf.named_parameters()}
    head = {"head.weight", "head.bias"}
    if which == "head":
        assert names == head
        assert frozen_blocks(clf) == 3
    elif which == "last_block":
        assert names == head | {n for n in everything if n.startswith(("base.blocks.2.", "base.norm."))}
        assert any(n.startswith("base.blocks.2.attn") for n in names)
        assert frozen_blocks(clf) == 2
    elif which == "all":
        assert names == everything
        assert frozen_blocks(clf) is None
    else:
        assert names - head and all(n.endswith(("lora_A", "lora_B")) for n in names - head)
        assert {n.split(".")[2] for n in names - head} == {"0", "1", "2"}   # every block adapted
        assert frozen_blocks(clf) == 0
    assert trainable_parameters(clf) == sum(p.numel() for p in clf.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="which must be one of"):
        set_trainable(clf, "last")


def test_training_changes_only_the_trainable_weights_and_caching_changes_nothing():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 12, (64, 8), generator=gen)
    y = (x[:, 0] % 2)                                          # depends on the first token
    first = set_trainable(GPTClassifier(tiny_gpt(), 2), "last_block")
    second = copy.deepcopy(first)
    before = {n: p.detach().clone() for n, p in first.named_parameters()}
    losses = train_classifier(first, x, y, steps=5, batch_size=16, lr=1e-2, seed=3)
    # the same training started from the embeddings (no blocks computed ahead)
    again = train_classifier(second, run_frozen(second, x, blocks=0), y, steps=5, batch_size=16,
                             lr=1e-2, seed=3)
    assert losses == pytest.approx(again, abs=1e-5)
    for name, p in first.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == p.requires_grad, name
    assert torch.equal(predict(first, x), predict(second, x))
    assert torch.equal(predict(first, x), predict(first, run_frozen(first, x)))


def test_hidden_states_past_a_trainable_block_are_refused():
    clf = set_trainable(GPTClassifier(tiny_gpt(), 2), "last_block")
    x = torch.randint(0, 12, (8, 8))
    stale = Hidden(torch.zeros(8, 8, 16), blocks=3)
    with pytest.raises(ValueError, match="hidden states after 3 blocks"):
        train_classifier(clf, stale, torch.zeros(8, dtype=torch.long), steps=1)
    with pytest.raises(ValueError, match="nothing to train"):
        train_classifier(GPTClassifier(tiny_gpt(), 2).requires_grad_(False), x,
                         torch.zeros(8, dtype=torch.long), steps=1)


def test_full_fine_tuning_learns_a_task_that_needs_the_first_token():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 12, (256, 8), generator=gen)
    y = (x[:, 0] >= 6).long()                                  # only the first token matters
    clf = set_trainable(GPTClassifier(tiny_gpt(n_layer=2), 2), "all")
    train_classifier(clf, x, y, steps=150, batch_size=64, lr=3e-3, seed=0)
    test = torch.randint(0, 12, (200, 8), generator=gen)
    assert accuracy(predict(clf, test), (test[:, 0] >= 6).long()) > 0.9


# -------------------------------------------------------------------------- shipped data

@pytest.fixture(scope="module")
def records():
    return load_records()


def test_shipped_passages_are_balanced_and_split_by_position(records):
    assert len(records) == 1080 and (DATA_DIR / "classification.jsonl").stat().st_size < 300_000
    assert {len(r["text"]) for r in records} == {96}
    for play in PLAYS:
        for split, n in (("train", 80), ("test", 40)):
            labels = [r["label"] for r in records if r["play"] == play and r["split"] == split]
            assert sorted(labels) == [0] * (n // 2) + [1] * (n // 2), (play, split)
        train_end = max(r["end"] for r in records if r["play"] == play and r["split"] == "train")
        test_start = min(r["start"] for r in records if r["play"] == play and r["split"] == "test")
        assert train_end < test_start, play
    assert all(not r["seen_in_pretraining"] for r in records if r["play"] == "Twelfth Night")
    assert LABELS[1] == "as written"


def test_real_passages_are_the_spoken_text_and_shuffled_ones_keep_every_word(records):
    from utils.data import load_corpus

    corpus = load_corpus()
    for r in records:
        lines = r["text"].split("\n")
        # the corpus lines the passage was cut from, asides removed and spaces normalised
        region = [" ".join(re.sub(r"\[[^\]]*\]", " ", line).split())
                  for line in corpus[r["start"]:r["end"]].split("\n")]
        assert "[" not in r["text"]
        if r["label"] == 1:                                    # as written: these lines, in order
            position = 0
            for line in lines[:-1]:
                position = region.index(line, position) + 1
            assert any(other.startswith(lines[-1]) for other in region[position:])
        else:                                                  # each line's words, permuted
            words = [sorted(line.split(" ")) for line in region]
            assert all(sorted(line.split(" ")) in words for line in lines[:-1])
            assert not all(line in region for line in lines[:-1]) or lines[-1] not in region


def test_the_shipped_file_is_what_the_script_builds(records):
    spec = importlib.util.spec_from_file_location("build_classification",
                                                  DATA_DIR / "build_classification.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.build() == records
    assert json.loads(json.dumps(records[0])) == records[0]


def test_encode_passages_needs_one_length():
    class Chars:
        def encode(self, text):
            return [ord(c) - 97 for c in text]

    assert encode_passages(["ab", "ba"], Chars()).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="same length"):
        encode_passages(["ab", "abc"], Chars())


def test_shipped_results_match_the_data_and_the_model(records):
    from utils.pretrained import load_pretrained

    results = json.loads((DATA_DIR / "classification_results.json").read_text())
    assert set(results["variants"]) == set(TRAINABLE)
    n_test = sum(r["split"] == "test" for r in records)
    base, _ = load_pretrained("shakespeare-char")
    for which, row in results["variants"].items():
        cm = torch.tensor(row["confusion"])
        assert cm.shape == (2, 2) and cm.sum() == n_test
        assert row["accuracy"] == pytest.approx(cm.trace().item() / n_test, abs=1e-4)
        assert len(row["losses"]) == results["steps"]
        clf = set_trainable(GPTClassifier(copy.deepcopy(base), n_classes=2), which)
        assert row["trainable"] == trainable_parameters(clf), which
