"""Chapter 10's fine-tuning data and losses: utils/instructions.py (special tokens, prompt
masking, answers) and utils/preferences.py (sequence scores, DPO), and the shipped data."""

import copy
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from utils.instructions import (
    END,
    IGNORE_INDEX,
    INSTRUCTION,
    RESPONSE,
    UNFINISHED,
    ChatTokenizer,
    Instruction,
    add_special_tokens,
    answer,
    collate,
    encode_example,
    evaluate_instructions,
    exact_match,
    format_prompt,
    instruction_batches,
    load_instructions,
    masked_lm_loss,
    respond,
)
from utils.model import GPT, GPTConfig
from utils.paths import DATA_DIR
from utils.preferences import (
    Preference,
    collate_preferences,
    dpo_loss,
    encode_pair,
    load_preferences,
    preference_logprobs,
    sequence_logprob,
)
from utils.tokenizers import CharTokenizer

ALPHABET = "abcdefgh ?\n"


def tiny_gpt(vocab_size, tie_weights=True, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16,
                         tie_weights=tie_weights)).eval()


@pytest.fixture(scope="module")
def base():
    tokenizer = CharTokenizer(ALPHABET)
    return tiny_gpt(tokenizer.vocab_size), tokenizer


@pytest.fixture(scope="module")
def chat_model(base):
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    return add_special_tokens(model, tokenizer)


# ---- special tokens ----------------------------------------------------------------------------

def test_chat_tokenizer_ids_follow_the_characters(base):
    tokenizer = ChatTokenizer(base[1])
    n = base[1].vocab_size
    assert tokenizer.vocab_size == n + 3
    assert [tokenizer.ids_of(t) for t in (INSTRUCTION, RESPONSE, END)] == [n, n + 1, n + 2]
    ids = [tokenizer.ids_of(INSTRUCTION), *tokenizer.encode("ab"), tokenizer.ids_of(END)]
    assert tokenizer.decode(ids) == f"{INSTRUCTION}ab{END}"
    assert tokenizer.decode(ids, skip_special=True) == "ab"
    with pytest.raises(ValueError, match="not a special token"):
        tokenizer.ids_of("<|system|>")
    with pytest.raises(ValueError, match="not in the vocabulary"):   # text cannot spell one
        tokenizer.encode(END)
    with pytest.raises(ValueError, match="distinct"):
        ChatTokenizer(base[1], [END, END])


@pytest.mark.parametrize("tie_weights", [True, False])
def test_growing_the_embedding_keeps_every_old_logit(base, tie_weights):
    tokenizer = base[1]
    model = tiny_gpt(tokenizer.vocab_size, tie_weights=tie_weights, seed=1)
    idx = torch.randint(0, tokenizer.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, _ = model(idx)
    model, chat = add_special_tokens(model, tokenizer)
    with torch.no_grad():
        after, _ = model(idx)
    n = tokenizer.vocab_size
    assert after.shape == (3, 20, n + 3) and model.config.vocab_size == n + 3
    torch.testing.assert_close(after[..., :n], before, rtol=0, atol=1e-6)
    # each new row is the mean of the old rows, so its logit is the mean of the old logits
    torch.testing.assert_close(after[..., n:], before.mean(-1, keepdim=True).expand(-1, -1, 3),
                               rtol=0, atol=1e-5)
    assert (model.lm_head.weight is model.embed.token.weight) == tie_weights
    # the new ids can be read in and trained
    new_ids = torch.tensor([[chat.ids_of(INSTRUCTION), 0, chat.ids_of(RESPONSE), chat.ids_of(END)]])
    logits, loss = model(new_ids, new_ids)
    loss.backward()
    assert model.embed.token.weight.grad[n:].abs().sum() > 0


def test_add_special_tokens_refuses_a_mismatched_pair(base):
    with pytest.raises(ValueError, match="do not belong together"):
        add_special_tokens(tiny_gpt(5), base[1])
    with pytest.raises(TypeError, match="already has special tokens"):
        add_special_tokens(tiny_gpt(base[1].vocab_size), ChatTokenizer(base[1]))


# ---- template and collation --------------------------------------------------------------------

def test_template_layout(chat_model):
    _, chat = chat_model
    ids, n_prompt = encode_example(chat, "ab?", "cd")
    assert ids == [chat.ids_of(INSTRUCTION), *chat.encode("ab?"), chat.ids_of(RESPONSE),
                   *chat.encode("cd"), chat.ids_of(END)]
    assert n_prompt == len(format_prompt(chat, "ab?")) == 5
    assert encode_pair(chat.base, "ab\n", "cd\n") == (chat.encode("ab\ncd\n"), 3)


def test_collate_shifts_masks_the_prompt_and_pads_on_the_right():
    x, y = collate([([1, 2, 3, 4, 5], 3), ([6, 7, 8], 1)], pad_id=9)
    assert x.tolist() == [[1, 2, 3, 4], [6, 7, 9, 9]]
    # row 0: targets 2, 3 belong to the prompt [1, 2, 3]; 4 and 5 are the response
    assert y.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 4, 5], [7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    assert x.dtype == y.dtype == torch.long


def test_collate_checks_its_input():
    with pytest.raises(ValueError, match="prompt_length"):
        collate([([1, 2, 3], 3)])          # no response token left
    with pytest.raises(ValueError, match="prompt_length"):
        collate([([1, 2, 3], 0)])
    with pytest.raises(ValueError, match="block_size"):
        collate([(list(range(10)), 2)], block_size=8)
    with pytest.raises(ValueError, match="at least one"):
        collate([])


def test_instruction_batches_are_seeded_and_cover_each_example_once_per_epoch(chat_model):
    _, chat = chat_model
    data = [Instruction("t", "ab" * (i % 3 + 1), "c" * (i + 1), "train") for i in range(5)]
    run = list(instruction_batches(chat, data, batch_size=2, steps=5, seed=3))
    again = list(instruction_batches(chat, data, batch_size=2, steps=5, seed=3))
    assert len(run) == 5 and all(torch.equal(a[0], b[0]) for a, b in zip(run, again, strict=True))
    # the response length (targets kept, minus <|end|>) identifies each example
    seen = [int((y[row] != IGNORE_INDEX).sum()) - 1 for _, y in run for row in range(2)]
    assert sorted(seen[:5]) == [1, 2, 3, 4, 5] and sorted(seen[5:10]) == [1, 2, 3, 4, 5]
    other = list(instruction_batches(chat, data, batch_size=2, steps=5, seed=4))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(run, other, strict=True))


def test_prompt_tokens_are_excluded_from_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 12)
    a = [([1, 2, 3, 4, 5, 6, 7], 4), ([3, 3, 3, 8], 2)]
    b = [([1, 11, 0, 4, 5, 6, 7], 4), ([3, 10, 3, 8], 2)]       # other prompt tokens
    xa, ya = collate(a)
    xb, yb = collate(b)
    assert torch.equal(ya, yb) and not torch.equal(xa, xb)
    assert masked_lm_loss(logits, ya) == masked_lm_loss(logits, yb)
    # by hand: the mean of -log softmax over the response targets only
    logp = torch.log_softmax(logits, -1)
    terms = [-logp[0, t, ids[t + 1]] for t in range(3, 6) for ids in [a[0][0]]]
    terms += [-logp[1, t, a[1][0][t + 1]] for t in range(1, 3)]
    assert len(terms) == 5          # 7 - 4 response targets + 4 - 2
    torch.testing.assert_close(masked_lm_loss(logits, ya), torch.stack(terms).mean())
    # averaging over every position (the mistake) gives something else
    everything = F.cross_entropy(logits.reshape(-1, 12), collate(a, pad_id=0)[0].roll(-1, 1).reshape(-1))
    assert not torch.isclose(masked_lm_loss(logits, ya), everything)


def test_masked_loss_refuses_nothing_to_learn():
    with pytest.raises(ValueError, match="IGNORE_INDEX"):
        masked_lm_loss(torch.randn(1, 3, 5), torch.full((1, 3), IGNORE_INDEX))
    with pytest.raises(ValueError, match="must agree"):
        masked_lm_loss(torch.randn(1, 3, 5), torch.zeros(1, 4, dtype=torch.long))


def test_sequence_logprob_sums_response_tokens_and_keeps_gradients(chat_model):
    model, chat = chat_model
    examples = [encode_example(chat, "ab", "cde"), encode_example(chat, "hhh?", "a")]
    x, y = collate(examples)
    got = sequence_logprob(model, x, y)
    assert got.shape == (2,)
    logits, _ = model(x)
    logp = torch.log_softmax(logits, -1)
    for row, (ids, n_prompt) in enumerate(examples):
        want = sum(logp[row, t, ids[t + 1]] for t in range(n_prompt - 1, len(ids) - 1))
        torch.testing.assert_close(got[row], want)
    got.sum().backward()
    assert model.embed.token.weight.grad is not None
    model.zero_grad()


# ---- DPO -------------------------------------------------------------------------------------

def test_dpo_loss_matches_a_hand_computation():
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -4.5]), torch.tensor([-2.5, -1.0])
    beta = 0.1
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta)
    # z = beta * ((policy_c - ref_c) - (policy_r - ref_r)); loss = mean of log(1 + e^-z)
    z0 = beta * ((-1.0 + 2.0) - (-3.0 + 2.5))
    z1 = beta * ((-4.0 + 4.5) - (-2.0 + 1.0))
    by_hand = (math.log(1 + math.exp(-z0)) + math.log(1 + math.exp(-z1))) / 2
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.05])
    assert rejected.tolist() == pytest.approx([-0.05, -0.1])
    # without the reference the loss would differ: it is really used
    assert dpo_loss(pc, pr, torch.zeros(2), torch.zeros(2), beta)[0].item() != pytest.approx(by_hand)


def test_dpo_loss_is_log2_and_gradient_free_when_policy_equals_reference_on_symmetric_data():
    # two responses a and b, each once chosen and once rejected
    a = torch.tensor(-3.0, requires_grad=True)
    b = torch.tensor(-5.0, requires_grad=True)
    policy_chosen, policy_rejected = torch.stack([a, b]), torch.stack([b, a])
    ref_chosen, ref_rejected = policy_chosen.detach(), policy_rejected.detach()
    loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    assert loss.item() == pytest.approx(math.log(2))
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0
    loss.backward()
    assert a.grad.item() == pytest.approx(0.0, abs=1e-7) and b.grad.item() == pytest.approx(0.0, abs=1e-7)


def test_dpo_through_a_model_symmetric_pair_gives_zero_gradient(base):
    model, tokenizer = copy.deepcopy(base[0]).train(), base[1]
    reference = copy.deepcopy(model).eval()
    pairs = [Preference("ab\n", "cd\n", "ce\n", "test", "train"),
             Preference("ab\n", "ce\n", "cd\n", "test", "train")]
    x, y = collate_preferences(tokenizer, pairs)
    assert x.shape[0] == 4
    with torch.no_grad():
        ref_c, ref_r = preference_logprobs(reference, x, y)
    pol_c, pol_r = preference_logprobs(model, x, y)
    loss, _, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r)
    loss.backward()
    worst = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert worst < 1e-7
    # one pair alone is not symmetric: the gradient is not zero
    model.zero_grad()
    pol_c, pol_r = preference_logprobs(model, x[[0, 2]], y[[0, 2]])
    dpo_loss(pol_c, pol_r, ref_c[:1], ref_r[:1])[0].backward()
    assert max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) > 1e-5


def test_dpo_loss_checks_arguments():
    t = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(t, t, t, t, beta=0)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(t, t, t, torch.zeros(3))


# ---- answers and exact match -----------------------------------------------------------------

def test_exact_match():
    assert exact_match(["a", "b"], ["a", "c"]) == 0.5
    assert exact_match(["a "], ["a"]) == 0.0          # exact means exact
    with pytest.raises(ValueError, match="same length"):
        exact_match(["a"], [])


@pytest.fixture(scope="module")
def tuned(base):
    """A tiny model fine-tuned until it answers two instructions by heart."""
    model, chat = add_special_tokens(copy.deepcopy(base[0]), base[1])
    data = [Instruction("t", "ab?", "cab", "train"), Instruction("u", "hg?", "d", "train")]
    x, y = collate([encode_example(chat, d.instruction, d.response) for d in data])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(80):
        logits, _ = model(x)
        loss = masked_lm_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), chat, data


def test_answers_stop_at_end_and_are_scored_by_task(tuned):
    model, chat, data = tuned
    assert answer(model, chat, "ab?") == "cab"
    assert respond(model, chat, "hg?") == ("d", True)
    assert respond(model, chat, "ab?", max_new_tokens=2) == ("ca", False)
    scores, answers = evaluate_instructions(model, chat, data)
    assert answers == ["cab", "d"] and scores == {"t": 1.0, "u": 1.0, "all": 1.0}
    wrong = [Instruction("t", "ab?", "ca", "test"), Instruction("u", "hg?", "d", "test")]
    scores, answers = evaluate_instructions(model, chat, wrong)
    # the model goes on past "ca": stopped after len("ca") + 1 tokens without <|end|>
    assert answers == ["cab" + UNFINISHED, "d"] and scores == {"t": 0.0, "u": 1.0, "all": 0.5}


def test_answer_refuses_an_instruction_longer_than_the_context(tuned):
    model, chat, _ = tuned
    with pytest.raises(ValueError, match="block_size"):
        answer(model, chat, "a" * 40)


# ---- the shipped datasets --------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_tokenizer():
    from utils.data import load_corpus
    return ChatTokenizer(CharTokenizer(load_corpus()))


def test_shipped_instructions_fit_the_model_and_hold_out_whole_lines(shipped_tokenizer):
    train, test = load_instructions("train"), load_instructions("test")
    assert len(train) >= 1000 and len(test) >= 100 and len(train) + len(test) <= 5000
    assert {e.task for e in test} == {e.task for e in train} == {"speaker", "play", "last_word"}
    for e in train + test:
        ids, n_prompt = encode_example(shipped_tokenizer, e.instruction, e.response)
        assert len(ids) <= 129 and n_prompt < len(ids)
    assert not {e.instruction for e in train} & {e.instruction for e in test}
    assert (DATA_DIR / "instructions.jsonl").stat().st_size < 300_000


def test_shipped_preferences_follow_their_rule(shipped_tokenizer):
    pairs = load_preferences()
    assert {p.split for p in pairs} == {"train", "test"}
    for p in pairs:
        ids, _ = encode_pair(shipped_tokenizer, p.prompt, p.chosen)
        assert len(ids) <= 129
        # the rule: rejected is chosen stopped inside its last word
        cut = p.rejected[:-1]
        assert p.chosen.startswith(cut) and p.chosen[len(cut)].isalpha() and cut[-1].isalpha()
        assert p.rejected.endswith("\n") and p.chosen.endswith("\n")
    assert (DATA_DIR / "preferences.jsonl").stat().st_size < 300_000


@pytest.mark.parametrize("name", ["instructions", "preferences"])
def test_shipped_data_is_what_its_script_builds(name):
    sys.path.insert(0, str(DATA_DIR))
    try:
        module = __import__(f"build_{name}")
    finally:
        sys.path.remove(str(DATA_DIR))
    rows = module.build()
    shipped = [json.loads(line) for line in (DATA_DIR / f"{name}.jsonl").open(encoding="utf-8")]
    assert rows == shipped, f"data/{name}.jsonl is stale: rerun data/build_{name}.py"


def test_loading_reports_a_bad_split_and_a_bad_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="split"):
        load_instructions("validation")
    bad = tmp_path / "instructions.jsonl"
    bad.write_text('{"task": "x", "instruction": "a", "response": "b", "split": "train"}\n'
                   '{"task": "x"}\n')
    monkeypatch.setattr("utils.instructions.INSTRUCTIONS_FILE", bad)
    with pytest.raises(ValueError, match="line 2"):
        load_instructions()


def test_majority_baseline_scores_each_tasks_commonest_answer():
    from utils.instructions import majority_baseline
    make = lambda task, response: Instruction(task, "?", response, "train")  # noqa: E731
    train = [make("play", "Hamlet"), make("play", "Hamlet"), make("play", "Lear"),
             make("speaker", "Kent")]
    test = [make("play", "Hamlet"), make("play", "Lear"), make("play", "Hamlet"),
            make("play", "Othello"), make("speaker", "Edgar")]
    assert majority_baseline(train, test) == {"play": 0.5, "speaker": 0.0}
