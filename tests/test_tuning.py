"""utils/tuning.py: the SFT and DPO loops, preference pairs in the chat template, and the
preference accuracy that chapter 11's report card lists. All on a tiny model, in seconds."""

import copy
import math

import pytest
import torch

from utils.instructions import (
    END,
    UNFINISHED,
    Instruction,
    add_special_tokens,
    collate,
    encode_example,
    evaluate_instructions,
)
from utils.model import GPT, GPTConfig
from utils.preferences import Preference, sequence_logprob
from utils.tokenizers import CharTokenizer
from utils.tuning import (
    collate_chat_preferences,
    frozen_copy,
    instruction_tune,
    mistake_pairs,
    pair_logprobs,
    preference_accuracy,
    preference_tune,
)

ALPHABET = "abcdefgh ?\n"
DATA = [Instruction("t", "ab?", "cab", "train"), Instruction("u", "hg?", "d", "train"),
        Instruction("t", "ba?", "ggh", "train")]
# chosen is long, rejected short: an untrained model gives the short one the higher
# log-probability (fewer tokens to pay for), so it starts out preferring the wrong one
PAIRS = [Preference("ab?", "cabbage", "c", "test rule", "train"),
         Preference("hg?", "deaf bead", "d", "test rule", "train"),
         Preference("ba?", "ggh ggh", "h", "test rule", "train")]


def chat_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=32, n_layer=2, n_head=2, n_embd=16))
    return add_special_tokens(model, CharTokenizer(ALPHABET))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- instruction tuning ------------------------------------------------------------------------

def test_instruction_tune_memorises_a_tiny_set_and_leaves_eval_mode():
    model, chat = chat_model()
    steps = []
    losses = instruction_tune(model, chat, DATA, steps=120, batch_size=3, lr=1e-2,
                              callback=lambda step, loss: steps.append((step, loss)))
    assert len(losses) == 120 and losses[-1] < 0.02 * losses[0]
    assert [s for s, _ in steps] == list(range(1, 121)) and [x for _, x in steps] == losses
    assert not model.training
    scores, answers = evaluate_instructions(model, chat, DATA)
    assert answers == ["cab", "d", "ggh"] and scores["all"] == 1.0


def test_instruction_tune_is_deterministic_for_a_seed():
    runs = []
    for seed in (0, 0, 1):
        model, chat = chat_model()
        runs.append((instruction_tune(model, chat, DATA, steps=6, batch_size=1, lr=1e-2, seed=seed),
                     state(model)))
    assert runs[0][0] == runs[1][0] and same_state(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]        # another seed, another order of examples


def test_final_lr_anneals_and_equal_to_lr_is_the_constant_run():
    runs = {}
    for final_lr in (None, 1e-2, 0.0):
        model, chat = chat_model()
        runs[final_lr] = instruction_tune(model, chat, DATA, steps=5, batch_size=3, lr=1e-2,
                                          final_lr=final_lr)
    assert runs[None] == runs[1e-2]
    assert runs[0.0][:2] == runs[None][:2]  # the first step is at lr either way (its loss is before it)
    assert runs[0.0][2:] != runs[None][2:]
    model, chat = chat_model()
    with pytest.raises(ValueError, match="final_lr"):
        instruction_tune(model, chat, DATA, steps=2, lr=1e-3, final_lr=1e-2)


@pytest.mark.parametrize("kwargs, name", [({"steps": -1}, "steps"), ({"steps": 1.5}, "steps"),
                                          ({"batch_size": 0}, "batch_size"), ({"lr": 0}, "lr")])
def test_loops_name_a_bad_argument(kwargs, name):
    model, chat = chat_model()
    settings = {"steps": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        instruction_tune(model, chat, DATA, **settings)
    with pytest.raises(ValueError, match=name):
        preference_tune(model, chat, PAIRS, **settings)
    with pytest.raises(ValueError, match="beta"):
        preference_tune(model, chat, PAIRS, steps=1, beta=0)
    with pytest.raises(ValueError, match="examples"):
        instruction_tune(model, chat, [], steps=1)
    with pytest.raises(ValueError, match="pairs"):
        preference_tune(model, chat, [], steps=1)


# ---- pairs in the chat template ----------------------------------------------------------------

def test_pairs_are_laid_out_chosen_first_in_the_chat_template():
    _, chat = chat_model()
    x, y = collate_chat_preferences(chat, PAIRS[:2])
    expected = collate([encode_example(chat, p.prompt, p.chosen) for p in PAIRS[:2]]
                       + [encode_example(chat, p.prompt, p.rejected) for p in PAIRS[:2]])
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    # each row's last scored target is <|end|>: a response that stops is scored as stopping
    for row in y:
        assert row[row != -100][-1].item() == chat.ids_of(END)


def test_pair_logprobs_equal_scoring_each_response_alone():
    model, chat = chat_model()
    chosen, rejected = pair_logprobs(model, chat, PAIRS, batch_size=2)   # batches with padding
    for i, p in enumerate(PAIRS):
        for response, got in ((p.chosen, chosen[i]), (p.rejected, rejected[i])):
            ids, n_prompt = encode_example(chat, p.prompt, response)
            logits, _ = model(torch.tensor([ids[:-1]]))
            logp = torch.log_softmax(logits[0], dim=-1)
            by_hand = sum(logp[t, ids[t + 1]].item() for t in range(n_prompt - 1, len(ids) - 1))
            assert got.item() == pytest.approx(by_hand, abs=1e-4)


def test_preference_accuracy_with_and_without_a_reference():
    model, chat = chat_model()
    chosen, rejected = pair_logprobs(model, chat, PAIRS)
    assert preference_accuracy(model, chat, PAIRS) == pytest.approx((chosen > rejected).float().mean().item())
    # against itself every reward margin is exactly 0, which is not a preference
    assert preference_accuracy(model, chat, PAIRS, reference=copy.deepcopy(model)) == 0.0
    with pytest.raises(ValueError, match="pairs"):
        preference_accuracy(model, chat, [])


# ---- preference tuning -------------------------------------------------------------------------

def test_preference_tune_raises_preference_accuracy_on_its_pairs():
    model, chat = chat_model()
    before = preference_accuracy(model, chat, PAIRS)
    assert before == 0.0                    # the untrained model prefers every short answer
    losses = preference_tune(model, chat, PAIRS, steps=40, batch_size=3, lr=1e-2)
    assert preference_accuracy(model, chat, PAIRS) == 1.0
    assert losses[-1] < 0.3 * losses[0] and not model.training


def test_preference_tune_starts_at_log2_against_a_copy_and_never_moves_the_reference():
    model, chat = chat_model()
    reference = frozen_copy(model)
    assert not any(p.requires_grad for p in reference.parameters())
    kept = state(reference)
    losses = preference_tune(model, chat, PAIRS, steps=5, batch_size=2, lr=1e-2, reference=reference)
    assert same_state(kept, state(reference)) and not reference.training
    assert not same_state(kept, state(model))                       # the policy did move
    # the first step's policy is the reference, so every margin is 0 and the loss is log 2;
    # with reference=None the copy is made inside, and the first loss is log 2 as well
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    fresh, chat = chat_model()
    first = preference_tune(fresh, chat, PAIRS, steps=1, batch_size=2)[0]
    assert first == pytest.approx(math.log(2), abs=1e-6)
    # a reference that is not the starting model gives another first loss
    other, _ = chat_model(seed=1)
    fresh, chat = chat_model()
    assert preference_tune(fresh, chat, PAIRS, steps=1, batch_size=2, reference=other)[0] != \
        pytest.approx(math.log(2), abs=1e-3)


def test_preference_tune_is_deterministic_for_a_seed():
    runs = []
    for seed in (0, 0, 1):
        model, chat = chat_model()
        runs.append((preference_tune(model, chat, PAIRS, steps=4, batch_size=1, lr=1e-2, seed=seed),
                     state(model)))
    assert runs[0][0] == runs[1][0] and same_state(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_mistake_pairs_hold_the_models_own_wrong_answers():
    model, chat = chat_model()
    _, answers = evaluate_instructions(model, chat, DATA)
    pairs = mistake_pairs(model, chat, DATA)
    wrong = [(e, a) for e, a in zip(DATA, answers, strict=True) if a != e.response]
    assert len(pairs) == len(wrong) > 0 and any(a.endswith(UNFINISHED) for _, a in wrong)
    for p, (e, a) in zip(pairs, wrong, strict=True):
        assert (p.prompt, p.chosen, p.rule) == (e.instruction, e.response, "own mistake")
        # the answer as far as the model got: the "…" that marks an unfinished one is not text
        assert p.rejected == a.removesuffix(UNFINISHED) and p.rejected != p.chosen
    instruction_tune(model, chat, DATA, steps=120, batch_size=3, lr=1e-2)
    assert mistake_pairs(model, chat, DATA) == []       # nothing wrong, nothing to prefer


def test_sequence_logprob_of_the_pairs_matches_the_library_scorer():
    # the batch scorer is utils.preferences.sequence_logprob applied to the chat layout
    model, chat = chat_model()
    x, y = collate_chat_preferences(chat, PAIRS)
    with torch.no_grad():
        scores = sequence_logprob(model, x, y)
    chosen, rejected = pair_logprobs(model, chat, PAIRS)
    assert torch.allclose(torch.cat([chosen, rejected]), scores, atol=1e-5)


def test_nll_weight_holds_the_chosen_answers_up():
    runs = {}
    for weight in (0.0, 1.0):
        model, chat = chat_model()
        preference_tune(model, chat, PAIRS, steps=15, batch_size=3, lr=1e-2, nll_weight=weight)
        runs[weight] = pair_logprobs(model, chat, PAIRS)[0]          # log p(chosen)
    assert (runs[1.0] > runs[0.0]).all()
    model, chat = chat_model()
    with pytest.raises(ValueError, match="nll_weight"):
        preference_tune(model, chat, PAIRS, steps=1, nll_weight=-1)


# ---- multi-turn instruction tuning --------------------------------------------------------------

def test_conversation_batches_learn_every_reply_and_no_user_token():
    from utils.chat import Turn, encode_chat
    from utils.tuning import conversation_batches

    _, chat = chat_model()
    end = chat.ids_of("<|end|>")
    lengths = set()
    for x, y in conversation_batches(chat, DATA, batch_size=3, steps=20, max_history=2,
                                     block_size=32, seed=1):
        for row in range(x.size(0)):
            ids = x[row].tolist()
            n = max(i for i, t in enumerate(y[row].tolist()) if t != -100) + 1   # real targets
            full = ids[:n] + [y[row, n - 1].item()]
            assert full[-1] == end                        # every row ends with a reply's <|end|>
            lengths.add(full.count(end))
            # rebuild the conversation from its text and compare the mask, token for token
            text = chat.decode(full)
            turns = []
            for exchange in text.split("<|end|>")[:-1]:
                question, answer_ = exchange.removeprefix("<|instruction|>").split("<|response|>")
                turns += [Turn("user", question), Turn("assistant", answer_)]
            want_ids, want_mask = encode_chat(chat, turns)
            assert want_ids == full
            learned = [t != -100 for t in y[row, :n].tolist()]
            assert learned == [bool(m) for m in want_mask[1:]]
    assert lengths == {1, 2, 3}                           # 0, 1 and 2 earlier exchanges occur


def test_conversation_batches_drop_the_oldest_exchange_to_fit_and_are_seeded():
    from utils.tuning import conversation_batches

    _, chat = chat_model()
    end = chat.ids_of("<|end|>")
    # 2 exchanges of DATA are at most 2 * 10 = 20 tokens: block_size 12 leaves room for one
    for x, y in conversation_batches(chat, DATA, 3, 10, max_history=2, block_size=12, seed=0):
        assert x.size(1) <= 12 and all((row == end).sum() <= 1 for row in torch.cat([x, y], 1))
    a = list(conversation_batches(chat, DATA, 3, 5, max_history=2, block_size=32, seed=3))
    b = list(conversation_batches(chat, DATA, 3, 5, max_history=2, block_size=32, seed=3))
    assert all(torch.equal(p, q) for (p, _), (q, _) in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="max_history"):
        next(conversation_batches(chat, DATA, 3, 1, max_history=-1, block_size=32))
    with pytest.raises(ValueError, match="block_size"):
        next(conversation_batches(chat, DATA, 3, 1, max_history=0, block_size=4))


def test_multi_turn_tuning_answers_after_a_history():
    from utils.chat import Turn, reply

    model, chat = chat_model()
    instruction_tune(model, chat, DATA, steps=200, batch_size=3, lr=1e-2, max_history=2)
    history = [Turn("user", DATA[1].instruction), Turn("assistant", DATA[1].response)]
    assert reply(model, chat, history, DATA[0].instruction, 8).text == DATA[0].response
    assert reply(model, chat, [], DATA[2].instruction, 8).text == DATA[2].response


def test_evaluate_after_history_scores_answers_that_follow_an_exchange():
    from utils.chat import Turn, reply
    from utils.chat_tasks import evaluate_after_history

    model, chat = chat_model(seed=2)
    before = evaluate_after_history(model, chat, DATA, DATA)
    instruction_tune(model, chat, DATA, steps=200, batch_size=3, lr=1e-2, max_history=2)
    after = evaluate_after_history(model, chat, DATA, DATA, seed=5)
    assert set(after) == {"t", "u", "all"} and after["all"] == 1.0 > before["all"]
    # the same as asking by hand: DATA[1] is the only exchange of another task than "t"
    history = [Turn("user", DATA[1].instruction), Turn("assistant", DATA[1].response)]
    assert reply(model, chat, history, DATA[0].instruction, 4).text == DATA[0].response
