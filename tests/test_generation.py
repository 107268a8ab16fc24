"""utils.generation: the filters, the loop, argument checking, reproducibility and scoring."""

import math

import pytest
import torch

from utils.generation import (
    apply_repetition_penalty,
    apply_temperature,
    beam_search,
    bits_per_char,
    entropy_bits,
    generate,
    next_token_probs,
    perplexity,
    sequence_nll,
    stream,
    top_k_filter,
    top_p_filter,
)
from utils.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16)).eval()


# ---- filters ---------------------------------------------------------------------------------

def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([3.0, 1.0, 0.0])
    base = entropy_bits(torch.softmax(logits, -1))
    assert entropy_bits(torch.softmax(apply_temperature(logits, 0.5), -1)) < base
    assert entropy_bits(torch.softmax(apply_temperature(logits, 2.0), -1)) > base
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, -1.0)


def test_top_k_keeps_k_largest_and_ties_at_the_boundary():
    logits = torch.tensor([[0.1, 2.0, 1.0, 1.0, -3.0]])
    assert torch.isfinite(top_k_filter(logits, 1)).tolist() == [[False, True, False, False, False]]
    # the 2nd largest is tied: both copies stay
    assert torch.isfinite(top_k_filter(logits, 2)).sum() == 3
    assert torch.equal(top_k_filter(logits, 50), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.25, 0.15])
    kept = lambda p: torch.isfinite(top_p_filter(probs.log(), p)).tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]         # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, True, False]
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [False, True, False, False]        # the top token always stays
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            top_p_filter(probs.log(), bad)


def test_filters_do_not_modify_their_input_and_probs_sum_to_one():
    logits = torch.randn(3, 30)
    before = logits.clone()
    probs = next_token_probs(logits, temperature=0.7, top_k=10, top_p=0.8)
    assert torch.equal(logits, before)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    assert ((probs > 0).sum(-1) <= 10).all()


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 0]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 1.0]]
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_repetition_penalty(logits, torch.tensor([[0]]), 0.0)


def test_greedy_probs_are_one_hot():
    assert next_token_probs(torch.tensor([0.0, 5.0, 1.0]), temperature=0).tolist() == [0, 1, 0]


# ---- generation ------------------------------------------------------------------------------

def test_same_seed_same_text_and_different_seed_different_text(model):
    idx = torch.zeros(1, 2, dtype=torch.long)
    run = lambda seed: generate(model, idx, 40, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_greedy_is_the_argmax_at_every_step(model):
    idx = torch.tensor([[3, 4, 5]])
    out = generate(model, idx, 5, temperature=0, use_cache=False)
    for t in range(3, 8):
        logits, _ = model(out[:, :t])
        assert out[0, t] == logits[0, -1].argmax()


def test_top_k_one_equals_greedy(model):
    idx = torch.tensor([[1, 2]])
    greedy = generate(model, idx, 15, temperature=0)
    assert torch.equal(generate(model, idx, 15, temperature=1.3, top_k=1,
                                generator=torch.Generator().manual_seed(0)), greedy)


def test_stream_yields_the_same_tokens_as_generate(model):
    idx = torch.tensor([[1, 2, 3]])
    streamed = list(stream(model, idx, 10, temperature=0.8,
                           generator=torch.Generator().manual_seed(5)))
    whole = generate(model, idx, 10, temperature=0.8, generator=torch.Generator().manual_seed(5))
    assert streamed == whole[0, 3:].tolist()


def test_stop_ends_generation_with_the_stop_token_kept(model):
    idx = torch.tensor([[1]])
    free = generate(model, idx, 30, temperature=0)[0, 1:].tolist()
    target = free[4]
    stopped = generate(model, idx, 30, temperature=0, stop=target)[0, 1:].tolist()
    assert stopped == free[:free.index(target) + 1]
    # a sequence of ids: the text (prompt included) stops at its first occurrence
    pair, text = free[2:4], [1] + free
    first_end = next(j for j in range(2, len(text) + 1) if text[j - 2:j] == pair)
    stopped = generate(model, idx, 30, temperature=0, stop=[pair])[0].tolist()
    assert stopped == text[:first_end]


def test_invalid_arguments_name_the_argument(model):
    idx = torch.tensor([[1, 2]])
    cases = [({"temperature": -0.5}, "temperature"), ({"top_p": 0.0}, "top_p"),
             ({"top_p": 1.2}, "top_p"), ({"top_k": 0}, "top_k"),
             ({"repetition_penalty": -1.0}, "repetition_penalty"), ({"stop": [[]]}, "stop")]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            generate(model, idx, 3, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, idx, -1)
    with pytest.raises(ValueError, match="idx.*block_size"):
        generate(model, torch.zeros(1, 13, dtype=torch.long), 1, crop=False)
    with pytest.raises(ValueError, match="idx.*block_size"):
        generate(model, idx, 11, crop=False)


def test_cropping_lets_generation_run_past_block_size(model):
    out = generate(model, torch.zeros(2, 20, dtype=torch.long), 10, temperature=0)
    assert out.shape == (2, 30)


def test_generation_leaves_the_training_flag_alone(model):
    model.train()
    generate(model, torch.tensor([[1]]), 3)
    assert model.training
    model.eval()


def test_beam_search_scores_at_least_as_well_as_greedy(model):
    idx = torch.tensor([[2, 7]])
    greedy = generate(model, idx, 6, temperature=0)
    with torch.no_grad():
        logp = torch.log_softmax(model(greedy)[0][0, 1:-1].float(), -1)
        greedy_score = logp.gather(-1, greedy[0, 2:, None]).sum().item()
    best, score = beam_search(model, idx, 6, beam_width=4)
    assert best.shape == (1, 8)
    assert score >= greedy_score - 1e-5
    assert torch.equal(beam_search(model, idx, 6, beam_width=1)[0], greedy)


# ---- scoring ---------------------------------------------------------------------------------

def test_sequence_nll_matches_the_model_loss_inside_one_window(model):
    ids = torch.randint(0, 20, (12,), generator=torch.Generator().manual_seed(0))
    nll = sequence_nll(model, ids)
    with torch.no_grad():
        _, loss = model(ids[None, :-1], ids[None, 1:])
    assert nll.shape == (11,)
    assert math.isclose(float(nll.mean()), loss.item(), rel_tol=1e-5)
    assert math.isclose(perplexity(nll), math.exp(loss.item()), rel_tol=1e-5)
    assert math.isclose(bits_per_char(nll), loss.item() / math.log(2), rel_tol=1e-5)


@pytest.mark.parametrize("n", [13, 14, 30, 41])
def test_sequence_nll_on_long_texts_gives_each_token_its_window_context(model, n):
    ids = torch.randint(0, 20, (n,), generator=torch.Generator().manual_seed(n))
    nll = sequence_nll(model, ids, stride=4, batch_size=2)
    block = model.config.block_size
    with torch.no_grad():
        for i in range(n - 1):                 # target ids[i + 1]; context starts at a window
            starts = [s for s in range(0, n, 4) if s <= i < s + block]
            s = starts[0] if i < block else next(s for s in starts if i >= s + block - 4)
            logits, _ = model(ids[None, s:i + 1])
            expected = -torch.log_softmax(logits[0, -1], -1)[ids[i + 1]]
            assert math.isclose(nll[i].item(), expected.item(), rel_tol=1e-4), i
