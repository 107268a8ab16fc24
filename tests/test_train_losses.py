"""Cross-entropy and the loss reference lines (utils/losses.py): each checked against a direct computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.losses import (
    bigram_loss,
    bigram_probs,
    bits_per_token,
    reference_losses,
    uniform_loss,
    unigram_entropy,
    unigram_loss,
)


def test_uniform_is_ln_v_and_equals_cross_entropy_of_equal_logits():
    V = 65
    targets = torch.randint(V, (100,))
    assert uniform_loss(V) == pytest.approx(F.cross_entropy(torch.zeros(100, V), targets).item())
    assert bits_per_token(uniform_loss(256)) == pytest.approx(8.0)


def test_unigram_entropy_of_a_fair_coin_is_ln2():
    assert unigram_entropy([0, 1] * 50, 2) == pytest.approx(math.log(2))
    assert unigram_entropy([3] * 10, 5) == pytest.approx(0.0)


def test_unigram_loss_matches_counting_by_hand():
    train, val = [0, 0, 0, 1], [1, 0]
    # add-one counts 4, 2, 1 out of 7: p(0) = 4/7, p(1) = 2/7, p(2) = 1/7
    expected = -(math.log(2 / 7) + math.log(4 / 7)) / 2
    assert unigram_loss(train, val, 3) == pytest.approx(expected)


def test_bigram_rows_are_distributions_and_loss_matches_by_hand():
    probs = bigram_probs([0, 1, 0, 1, 1], 3)
    assert torch.allclose(probs.sum(1), torch.ones(3, dtype=probs.dtype))
    # pairs (0,1) x2, (1,0), (1,1); add-one: P(1|0) = 3/5, P(0|1) = 2/5
    expected = -(math.log(3 / 5) + math.log(2 / 5)) / 2
    assert bigram_loss([0, 1, 0, 1, 1], [0, 1, 0], 3) == pytest.approx(expected)


def test_reference_lines_are_ordered_on_shakespeare():
    from utils.data import load_corpus, train_val_split
    from utils.tokenizers import CharTokenizer

    text = load_corpus()
    tok = CharTokenizer(text)
    train, val = train_val_split(torch.tensor(tok.encode(text)))
    lines = reference_losses(train, val, tok.vocab_size)
    assert lines["uniform"] > lines["unigram"] > lines["bigram"] > 2.0
    assert abs(lines["unigram"] - lines["unigram entropy"]) < 0.1


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        uniform_loss(0)
    with pytest.raises(ValueError, match="1-D"):
        unigram_loss([], [1], 3)
    with pytest.raises(ValueError, match="2 tokens"):
        bigram_loss([0, 1], [1], 3)


def test_cross_entropy_written_out_matches_torch_even_for_huge_logits():
    from utils.losses import cross_entropy, log_softmax, next_token_loss

    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 30.0, 1e4):
        logits = torch.randn(3, 5, 11, generator=g) * scale
        targets = torch.randint(11, (3, 5), generator=g)
        expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        assert torch.allclose(cross_entropy(logits, targets), expected, rtol=1e-5)
        assert torch.isfinite(log_softmax(logits)).all()
    tokens = torch.randint(11, (3, 6), generator=g)
    logits = torch.randn(3, 5, 11, generator=g)
    assert torch.allclose(next_token_loss(logits, tokens),
                          F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()))
