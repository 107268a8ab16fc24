"""Chapter 00's graders: the solutions pass, plausible mistakes get a hint, stubs are 'not yet'.

Every wrong answer below is one a learner could really write; each must be rejected.
"""

import math

import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.checks import ch00 as check


def rnn_step(h, x, W_h, W_x, b):
    return torch.tanh(x @ W_x + h @ W_h + b)


def run_rnn(xs, h0, W_h, W_x, b):
    states, h = [], h0
    for x in xs:
        h = rnn_step(h, x, W_h, W_x, b)
        states.append(h)
    return torch.stack(states)


# ---- exercise 1: one RNN step ------------------------------------------------------------

def test_rnn_step_accepts_solution_and_stub_not_attempted():
    assert_accepts(check.rnn_step, rnn_step)
    assert_accepts(check.rnn_step, lambda h, x, W_h, W_x, b: torch.tanh(h @ W_h + x @ W_x + b))
    assert_not_attempted(check.rnn_step, stub)


def test_rnn_step_rejects_missing_or_wrong_nonlinearity():
    assert "tanh" in assert_rejects(check.rnn_step, lambda h, x, W_h, W_x, b: x @ W_x + h @ W_h + b)
    assert "sigmoid" in assert_rejects(
        check.rnn_step, lambda h, x, W_h, W_x, b: torch.sigmoid(x @ W_x + h @ W_h + b))
    assert "ReLU" in assert_rejects(
        check.rnn_step, lambda h, x, W_h, W_x, b: torch.relu(x @ W_x + h @ W_h + b))


def test_rnn_step_rejects_bias_mistakes():
    assert "bias" in assert_rejects(check.rnn_step,
                                    lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + h @ W_h))
    assert "inside" in assert_rejects(
        check.rnn_step, lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + h @ W_h) + b)


def test_rnn_step_rejects_transposed_weight_and_ignored_state():
    # W_h is square, so W_h @ h runs on one hidden state: only its values are wrong
    assert "W_h" in assert_rejects(check.rnn_step,
                                   lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + W_h @ h + b))
    # with h = 0 (the first step) this is right; with any other h it is not
    assert "ignored" in assert_rejects(check.rnn_step,
                                       lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + b))


def test_rnn_step_rejects_changing_h_in_place():
    def in_place(h, x, W_h, W_x, b):
        h += x @ W_x + b  # looks like an update, but it overwrites the caller's h
        return torch.tanh(h @ W_h)
    assert "changed its input" in assert_rejects(check.rnn_step, in_place)


def test_rnn_step_rejects_a_list_or_array():
    assert "tensor" in assert_rejects(check.rnn_step, lambda *a: rnn_step(*a).tolist())
    assert "tensor" in assert_rejects(check.rnn_step, lambda *a: rnn_step(*a).numpy())


def test_rnn_step_rejects_an_answer_right_only_on_the_first_case():
    # without the bias: right wherever b = 0, so a grader thinned to one case would pass it
    assert_rejects(check.rnn_step, right_on_first_call_only(
        rnn_step, lambda h, x, W_h, W_x, b: torch.tanh(x @ W_x + h @ W_h)))


def test_rnn_step_rejects_exit():
    assert "exit" in assert_rejects(check.rnn_step, lambda *args: exit())


# ---- exercise 2: the whole sequence ------------------------------------------------------

def test_run_rnn_accepts_solution_and_stub_not_attempted():
    assert_accepts(check.run_rnn, run_rnn)
    assert_not_attempted(check.run_rnn, stub)


def test_run_rnn_rejects_last_state_only_and_h0_included():
    assert "last" in assert_rejects(check.run_rnn, lambda *a: run_rnn(*a)[-1])
    assert "h0" in assert_rejects(
        check.run_rnn, lambda xs, h0, *w: torch.cat([h0[None], run_rnn(xs, h0, *w)]))


def test_run_rnn_rejects_every_step_from_h0():
    assert "h0" in assert_rejects(
        check.run_rnn, lambda xs, h0, *w: torch.stack([rnn_step(h0, x, *w) for x in xs]))


def test_run_rnn_rejects_ignoring_h0():
    # starting from zeros is only right when the grader happens to pass h0 = 0
    assert "h0" in assert_rejects(
        check.run_rnn, lambda xs, h0, *w: run_rnn(xs, torch.zeros_like(h0), *w))


def test_run_rnn_rejects_reversed_order_and_one_step_short():
    assert "order" in assert_rejects(check.run_rnn, lambda xs, h0, *w: run_rnn(xs.flip(0), h0, *w))

    def short(xs, h0, W_h, W_x, b):
        states, h = [], h0
        for t in range(len(xs) - 1):
            h = rnn_step(h, xs[t], W_h, W_x, b)
            states.append(h)
        return torch.stack(states)
    assert_rejects(check.run_rnn, short)


def test_run_rnn_rejects_one_tensor_updated_in_place():
    def aliased(xs, h0, W_h, W_x, b):
        h, states = h0.clone(), []
        for x in xs:
            h[:] = rnn_step(h, x, W_h, W_x, b)  # every list entry is the same tensor
            states.append(h)
        return torch.stack(states)
    assert "same tensor" in assert_rejects(check.run_rnn, aliased)


def test_run_rnn_rejects_a_list():
    assert "tensor" in assert_rejects(check.run_rnn, lambda *a: list(run_rnn(*a)))


def test_run_rnn_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.run_rnn, right_on_first_call_only(
        run_rnn, lambda xs, h0, *w: run_rnn(xs, torch.zeros_like(h0), *w)))


# ---- exercise 3: every pair at once ------------------------------------------------------

def test_all_pairs_scores_accepts_solution_and_loop():
    assert_accepts(check.all_pairs_scores, lambda X: X @ X.T)
    assert_accepts(check.all_pairs_scores, lambda X: torch.tensor(
        [[float(X[i] @ X[j]) for j in range(len(X))] for i in range(len(X))]).reshape(len(X), len(X)))
    assert_not_attempted(check.all_pairs_scores, stub)


def test_all_pairs_scores_rejects_dimension_product():
    assert "X.T @ X" in assert_rejects(check.all_pairs_scores, lambda X: X.T @ X)


def test_all_pairs_scores_rejects_elementwise_and_softmax():
    assert_rejects(check.all_pairs_scores, lambda X: X * X)
    assert "softmax" in assert_rejects(check.all_pairs_scores,
                                       lambda X: torch.softmax(X @ X.T, dim=-1))


def test_all_pairs_scores_rejects_early_scaling_and_cosine():
    assert "√d" in assert_rejects(check.all_pairs_scores,
                                  lambda X: X @ X.T / math.sqrt(X.shape[-1]))
    unit = lambda X: X / X.norm(dim=-1, keepdim=True)
    assert "cosine" in assert_rejects(check.all_pairs_scores, lambda X: unit(X) @ unit(X).T)


def test_all_pairs_scores_rejects_square_only_product():
    assert_rejects(check.all_pairs_scores, lambda X: X @ X)


def test_all_pairs_scores_rejects_nested_lists_and_arrays():
    assert "tensor" in assert_rejects(check.all_pairs_scores, lambda X: (X @ X.T).tolist())
    assert "tensor" in assert_rejects(check.all_pairs_scores, lambda X: (X @ X.T).numpy())


def test_all_pairs_scores_rejects_an_answer_right_only_on_the_first_case():
    assert_rejects(check.all_pairs_scores, right_on_first_call_only(
        lambda X: X @ X.T, lambda X: X @ X.T / math.sqrt(X.shape[-1])))


# ---- exercise 4: the remaining signal ----------------------------------------------------

def test_remaining_signal_accepts_answer_and_none_not_attempted():
    assert_accepts(check.remaining_signal, 0.9**49)
    assert_accepts(check.remaining_signal, torch.tensor(0.9)**49)
    assert_not_attempted(check.remaining_signal, None)


def test_remaining_signal_rejects_off_by_one_both_ways():
    assert "49 steps" in assert_rejects(check.remaining_signal, 0.9**50)
    assert "49 steps" in assert_rejects(check.remaining_signal, 0.9**48)


def test_remaining_signal_rejects_linear_losses():
    assert "power" in assert_rejects(check.remaining_signal, 0.9 * 49)
    assert "compounds" in assert_rejects(check.remaining_signal, 1 - 0.1 * 49)


def test_remaining_signal_rejects_lost_fraction_and_percentage():
    assert "lost" in assert_rejects(check.remaining_signal, 1 - 0.9**49)
    assert "percent" in assert_rejects(check.remaining_signal, 100 * 0.9**49)


def test_remaining_signal_rejects_rounding_and_strings_without_leaking():
    hint = assert_rejects(check.remaining_signal, 0.006)
    assert "decimals" in hint and "0.0057" not in hint
    assert "number" in assert_rejects(check.remaining_signal, "0.0057")
    assert "number" in assert_rejects(check.remaining_signal, True)
