"""Graders for chapter 00, the introduction."""

from __future__ import annotations

import torch

from utils.checks.grading import Hint, attempt, expect_close, expect_shape, grader, require_value


def _rnn_inputs(seed: int, batch: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    d_in, d_hidden = 3, 4
    return (torch.randn(*batch, d_hidden, generator=g), torch.randn(*batch, d_in, generator=g),
            torch.randn(d_hidden, d_hidden, generator=g), torch.randn(d_in, d_hidden, generator=g),
            torch.randn(d_hidden, generator=g))


def _reference_step(h, x, W_h, W_x, b):
    return torch.tanh(x @ W_x + h @ W_h + b)


@grader
def rnn_step(fn):
    """Exercise 1: h_new = tanh(x W_x + h W_h + b)."""
    for seed in range(3):
        h, x, W_h, W_x, b = _rnn_inputs(seed)
        got = attempt(fn, h, x, W_h, W_x, b)
        expect_shape(got, (4,), "rnn_step on a hidden state of size 4")
        expected = _reference_step(h, x, W_h, W_x, b)
        if torch.allclose(torch.as_tensor(got), x @ W_x + h @ W_h + b, atol=1e-5):
            raise Hint("the values are right before the non-linearity — apply torch.tanh")
        if torch.allclose(torch.as_tensor(got), torch.sigmoid(x @ W_x + h @ W_h + b), atol=1e-5):
            raise Hint("that is a sigmoid; this RNN uses tanh, which keeps h between -1 and 1")
        expect_close(got, expected, f"rnn_step with seed {seed}")
    # A batch of hidden states must work too: the same formula, row by row.
    h, x, W_h, W_x, b = _rnn_inputs(7, batch=(5,))
    expect_close(attempt(fn, h, x, W_h, W_x, b), _reference_step(h, x, W_h, W_x, b),
                 "rnn_step on a batch of 5 hidden states (use x @ W_x, not W_x @ x)")


@grader
def run_rnn(fn):
    """Exercise 2: run the step over a sequence, returning every hidden state [T, H]."""
    g = torch.Generator().manual_seed(0)
    for T in (6, 1):
        xs = torch.randn(T, 3, generator=g)
        _, _, W_h, W_x, b = _rnn_inputs(T)
        h0 = torch.zeros(4)
        got = attempt(fn, xs, h0, W_h, W_x, b)
        h, expected = h0, []
        for x in xs:
            h = _reference_step(h, x, W_h, W_x, b)
            expected.append(h)
        expected = torch.stack(expected)
        got_t = torch.as_tensor(got)
        if got_t.shape == (4,) and T > 1:
            raise Hint("you returned only the last hidden state; stack every h_t into [T, H]")
        if got_t.shape == (T + 1, 4):
            raise Hint(f"got {T + 1} states for {T} tokens — leave h0 out, it is not an output")
        expect_shape(got_t, (T, 4), f"run_rnn on {T} tokens")
        if T > 1 and torch.allclose(got_t, _reference_step(h0, xs, W_h, W_x, b), atol=1e-5):
            raise Hint("every step used h0 — feed each new h into the next step")
        expect_close(got_t, expected, f"run_rnn on {T} tokens")


@grader
def all_pairs_scores(fn):
    """Exercise 3: the dot product of every token with every token, in one product."""
    g = torch.Generator().manual_seed(1)
    for T, d in ((5, 3), (2, 7)):
        X = torch.randn(T, d, generator=g)
        got = attempt(fn, X)
        if tuple(torch.as_tensor(got).shape) == (d, d) and T != d:
            raise Hint(f"got shape {(d, d)} — that is X.T @ X, comparing dimensions; "
                       "compare tokens with X @ X.T")
        expect_shape(got, (T, T), f"all_pairs_scores on X of shape {(T, d)}")
        expect_close(got, X @ X.T, f"all_pairs_scores on X of shape {(T, d)}")


@grader
def remaining_signal(value):
    """Exercise 4: 0.9 per step, token 1 to token 50 is 49 steps: 0.9 ** 49."""
    value = float(require_value(value, "remaining_signal"))
    if abs(value - 0.9**50) < 1e-6:
        raise Hint("off by one: from token 1 to token 50 there are 49 steps, not 50")
    if abs(value - 0.9 * 49) < 1e-6:
        raise Hint("the shrinking multiplies at every step: use a power, not a product with 49")
    if abs(value - (1 - 0.1 * 49)) < 1e-6 or value < 0:
        raise Hint("losing 10% per step compounds; the signal never goes negative")
    expect_close(value, 0.9**49, "the fraction of signal left after 49 steps", rtol=1e-3)
