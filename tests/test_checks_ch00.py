"""Chapter 00's graders: the solutions pass, plausible mistakes get a hint, stubs are 'not yet'."""

import torch

from tests.grading import assert_accepts, assert_not_attempted, assert_rejects, stub
from utils.checks import ch00 as check


def rnn_step(h, x, W_h, W_x, b):
    return torch.tanh(x @ W_x + h @ W_h + b)


def run_rnn(xs, h0, W_h, W_x, b):
    states, h = [], h0
    for x in xs:
        h = rnn_step(h, x, W_h, W_x, b)
        states.append(h)
    return torch.stack(states)


def test_rnn_step():
    assert_accepts(check.rnn_step, rnn_step)
    assert "tanh" in assert_rejects(check.rnn_step, lambda h, x, W_h, W_x, b: x @ W_x + h @ W_h + b)
    assert "sigmoid" in assert_rejects(
        check.rnn_step, lambda h, x, W_h, W_x, b: torch.sigmoid(x @ W_x + h @ W_h + b))
    assert_rejects(check.rnn_step, lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + h @ W_h))  # no bias
    assert_rejects(check.rnn_step, lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + W_h @ h + b))
    assert_not_attempted(check.rnn_step, stub)


def test_run_rnn():
    assert_accepts(check.run_rnn, run_rnn)
    assert "last" in assert_rejects(check.run_rnn, lambda *a: run_rnn(*a)[-1])
    assert "h0" in assert_rejects(
        check.run_rnn, lambda xs, h0, *w: torch.cat([h0[None], run_rnn(xs, h0, *w)]))
    assert "h0" in assert_rejects(
        check.run_rnn, lambda xs, h0, *w: torch.stack([rnn_step(h0, x, *w) for x in xs]))
    assert_not_attempted(check.run_rnn, stub)


def test_all_pairs_scores():
    assert_accepts(check.all_pairs_scores, lambda X: X @ X.T)
    assert "X.T @ X" in assert_rejects(check.all_pairs_scores, lambda X: X.T @ X)
    assert_rejects(check.all_pairs_scores, lambda X: X * X)
    assert_rejects(check.all_pairs_scores, lambda X: torch.softmax(X @ X.T, dim=-1))
    assert_not_attempted(check.all_pairs_scores, stub)


def test_remaining_signal():
    assert_accepts(check.remaining_signal, 0.9**49)
    assert "49 steps" in assert_rejects(check.remaining_signal, 0.9**50)
    assert "power" in assert_rejects(check.remaining_signal, 0.9 * 49)
    assert_rejects(check.remaining_signal, 0.1)
    assert_not_attempted(check.remaining_signal, None)
