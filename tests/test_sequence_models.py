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


def test_timing_reports_every_length_through_the_timing_helper():
    rows = time_sequential_vs_parallel([4, 8], d=8, batch=2, repeats=3)
    assert [r["seq_len"] for r in rows] == [4, 8]
    assert all(r["rnn_steps"] == r["seq_len"] and r["attention_steps"] == 1 for r in rows)
    for r in rows:
        for name in ("rnn", "attention"):
            assert len(r[name].seconds) == 3                    # every repeat kept
            assert r[f"{name}_ms"] == 1000 * r[name].median > 0  # the median is reported


def test_gradient_is_the_jacobian_norm_of_one_backward_pass_per_output():
    """The forward-mode shortcut must give the Frobenius norm of the Jacobian
    d output_t / d x_1 that backward passes (one per output coordinate) give."""
    torch.manual_seed(1)
    x = torch.randn(12, 5)
    for model in (TinyRNN(5, 6, recurrent_scale=1.2), TinyAttention(5, 6)):
        fast = gradient_from_first_token(model, x)
        x64 = x.double().requires_grad_(True)
        outputs = model.double()(x64)
        for t in range(12):
            rows = [torch.autograd.grad(outputs[t, j], x64, retain_graph=True)[0][0]
                    for j in range(6)]                            # row j: d output_t[j] / d x_1
            jacobian = torch.stack(rows)                          # [d_out, d]
            assert torch.isclose(fast[t], jacobian.norm(), rtol=1e-9, atol=1e-300), (model, t)


def test_compare_gradients_can_run_one_model_with_the_same_result():
    both = compare_gradients(20, recurrent_scale=1.1)
    assert torch.equal(compare_gradients(20, 1.1, models=("rnn",))["rnn"], both["rnn"])
    assert torch.equal(compare_gradients(20, 0.5, models=("attention",))["attention"],
                       both["attention"])  # attention ignores the RNN's scale


def test_recall_batch_marks_the_answer_only_by_its_position():
    from utils.sequence_models import make_recall_batch
    x, y = make_recall_batch(200, distance=7, n_symbols=5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (200, 8) and torch.equal(x[:, 0], y)
    assert ((x[:, :-1] >= 0) & (x[:, :-1] < 5)).all()   # symbol and fillers share one vocabulary
    assert (x[:, 1:-1] == y[:, None]).any()              # the answer's id also occurs as a filler
    assert (x[:, -1] == 5).all()
    with pytest.raises(ValueError, match="distance"):
        make_recall_batch(2, distance=0)


def test_mean_baseline_cannot_tell_which_token_came_first():
    from utils.sequence_models import MeanOfEmbeddings
    x = torch.randn(6, 4)
    swapped = x[[1, 0, 2, 3, 4, 5]]
    assert torch.allclose(MeanOfEmbeddings()(x)[-1], MeanOfEmbeddings()(swapped)[-1])
    assert torch.allclose(MeanOfEmbeddings()(x)[2], x[:3].mean(dim=0))  # causal running mean


def test_recall_test_overlap_counts_rows_seen_in_training():
    from utils.sequence_models import recall_test_overlap
    # 8 ** 2 = 64 possible sequences at distance 2: every test row was also a training row
    assert recall_test_overlap(2, steps=50) == 1.0
    assert recall_test_overlap(12, steps=50) == 0.0   # 8 ** 12 sequences: none repeats


def test_recall_only_attention_finds_the_first_token_far_away():
    # Same data, steps and optimiser: at distance 3 the RNN and attention learn the task; at
    # distance 40 the RNN and the no-attention mean stay near chance (1/8) while attention
    # still recalls the first token. Near: the mean does better than chance (it can count),
    # but cannot know which of the tokens came first.
    from utils.sequence_models import train_recall
    torch.set_num_threads(1)
    assert train_recall("rnn", 3, steps=150) > 0.95
    assert train_recall("attention", 3, steps=150) > 0.95
    assert train_recall("attention", 40, steps=150) > 0.95
    assert train_recall("rnn", 40, steps=150) < 0.3
    assert train_recall("mean", 3, steps=150) < 0.6
    assert train_recall("mean", 40, steps=150) < 0.3
