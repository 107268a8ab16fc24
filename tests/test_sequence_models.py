import pytest
import torch

from utils.sequence_models import (
    TinyAttention,
    TinyRNN,
    compare_gradients,
    gradient_from_first_token,
    time_sequential_vs_parallel,
)


def test_rnn_matches_its_recurrence():
    rnn = TinyRNN(3, 5)
    x = torch.randn(4, 3)
    h = torch.zeros(5)
    for t in range(4):
        h = torch.tanh(x[t] @ rnn.W_x + h @ rnn.W_h + rnn.b)
        assert torch.allclose(rnn(x)[t], h, atol=1e-6)


def test_models_accept_batches():
    x = torch.randn(2, 7, 3)
    assert TinyRNN(3, 5)(x).shape == (2, 7, 5)
    assert TinyAttention(3, 5)(x).shape == (2, 7, 5)
    rnn, attention = TinyRNN(3, 5), TinyAttention(3, 5)
    assert torch.allclose(rnn(x)[1], rnn(x[1]), atol=1e-6)  # batched == one sequence at a time
    assert torch.allclose(attention(x)[1], attention(x[1]), atol=1e-6)


def test_attention_is_causal():
    attention = TinyAttention(3, 4)
    x = torch.randn(6, 3)
    changed = x.clone()
    changed[4:] += 5.0  # change the future
    assert torch.allclose(attention(x)[:4], attention(changed)[:4], atol=1e-6)
    assert not torch.allclose(attention(x)[4:], attention(changed)[4:])


def test_rnn_gradient_vanishes_and_attention_does_not():
    grads = compare_gradients(60, recurrent_scale=0.9)
    assert grads["rnn"][59] < 1e-6 * grads["rnn"][0]
    assert grads["attention"][59] > 1e-3 * grads["attention"][0]
    assert (grads["rnn"] >= 0).all() and torch.isfinite(grads["rnn"]).all()


def test_token_one_gradient_is_zero_only_for_models_that_ignore_it():
    class LastTokenOnly(torch.nn.Module):
        def forward(self, x):
            return x * 2

    grads = gradient_from_first_token(LastTokenOnly(), torch.randn(5, 3))
    assert grads[0] > 0 and torch.all(grads[1:] == 0)


def test_timing_reports_every_length():
    rows = time_sequential_vs_parallel([4, 8], d=8, batch=2, repeats=1)
    assert [r["seq_len"] for r in rows] == [4, 8]
    assert all(r["rnn_steps"] == r["seq_len"] and r["attention_steps"] == 1 for r in rows)
    assert all(r["rnn_ms"] > 0 and r["attention_ms"] > 0 for r in rows)


def test_gradient_matches_one_backward_pass_per_position():
    """The forward-mode shortcut must give what T separate backward passes give."""
    import math

    torch.manual_seed(1)
    x = torch.randn(12, 5)
    for model in (TinyRNN(5, 6, recurrent_scale=1.2), TinyAttention(5, 6)):
        fast = gradient_from_first_token(model, x)
        x64 = x.double().requires_grad_(True)
        outputs = model.double()(x64)
        direction = torch.ones(6, dtype=torch.float64) / math.sqrt(6)
        for t in range(12):
            (grad,) = torch.autograd.grad(outputs[t] @ direction, x64, retain_graph=True)
            assert torch.isclose(fast[t], grad[0].norm(), rtol=1e-9, atol=1e-300), (model, t)


def test_compare_gradients_can_run_one_model_with_the_same_result():
    both = compare_gradients(20, recurrent_scale=1.1)
    assert torch.equal(compare_gradients(20, 1.1, models=("rnn",))["rnn"], both["rnn"])
    assert torch.equal(compare_gradients(20, 0.5, models=("attention",))["attention"],
                       both["attention"])  # attention ignores the RNN's scale


def test_recall_batch_asks_for_the_first_token():
    from utils.sequence_models import make_recall_batch
    x, y = make_recall_batch(50, distance=7, n_symbols=5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (50, 8) and torch.equal(x[:, 0], y)
    assert ((x[:, 1:-1] >= 5) & (x[:, 1:-1] < 10)).all()   # distractors never look like a symbol
    assert (x[:, -1] == 10).all() and (y < 5).all()
    with pytest.raises(ValueError, match="distance"):
        make_recall_batch(2, distance=0)


def test_recall_attention_reaches_far_and_the_rnn_does_not():
    # Same data, steps and optimiser: at distance 3 both learn the task; at distance 40 the
    # RNN stays near chance (1/8) while attention still recalls the first token.
    from utils.sequence_models import train_recall
    torch.set_num_threads(1)
    assert train_recall("rnn", 3, steps=150) > 0.95
    assert train_recall("attention", 3, steps=150) > 0.95
    assert train_recall("attention", 40, steps=150) > 0.95
    assert train_recall("rnn", 40, steps=150) < 0.3
