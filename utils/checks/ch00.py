"""Graders for chapter 00, the introduction: `from utils.checks import ch00 as check`.

Each function grader compares the learner's code with a reference on hand-picked cases aimed at
the mistakes below and on seeded random cases (batches, hidden and input sizes that differ,
non-zero hidden states), so an answer that is only right on tidy inputs still fails.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from utils.checks.grading import (
    Hint,
    compare_with_reference,
    expect_close,
    expect_number,
    expect_value,
    grader,
    require_value,
    seeded_cases,
)


def _close(a, b, atol: float = 1e-5) -> bool:
    try:
        a = torch.as_tensor(a).double()
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b.double(), atol=atol))


def _weights(rng: np.random.Generator, d_in: int, d_hidden: int) -> tuple[torch.Tensor, ...]:
    """W_h [H, H], W_x [D, H], b [H], scaled as an RNN initialises them (tanh not saturated)."""
    t = lambda *shape: torch.from_numpy(rng.standard_normal(shape)).float()  # noqa: E731
    return t(d_hidden, d_hidden) / math.sqrt(d_hidden), t(d_in, d_hidden) / math.sqrt(d_in), \
        t(d_hidden) * 0.5


def _compare_tensor(got, expected, what: str, atol: float = 1e-5) -> None:
    """A tensor of the reference's shape and values: a list or a NumPy array is a wrong answer
    (the next step, and every later chapter, feeds the result to torch operations)."""
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: return a torch tensor, got {type(got).__name__} (keep the result "
                   "as the tensor torch computed; no .tolist() or .numpy())")
    expect_close(got, expected, what, atol=atol)


def _reference_step(h, x, W_h, W_x, b):
    return torch.tanh(x @ W_x + h @ W_h + b)


# ---- exercise 1 -------------------------------------------------------------------------

def _step_case(rng: np.random.Generator, batched: bool | None = None) -> tuple:
    d_in, d_hidden = (int(n) for n in rng.choice([2, 3, 5, 8], size=2, replace=False))
    batched = rng.random() < 0.6 if batched is None else batched
    batch = (int(rng.integers(1, 6)),) if batched else ()
    h = torch.from_numpy(rng.uniform(-1, 1, (*batch, d_hidden))).float()  # a tanh output
    x = torch.from_numpy(rng.standard_normal((*batch, d_in))).float()
    return (h, x, *_weights(rng, d_in, d_hidden))


def _step_mistake(got, expected, h, x, W_h, W_x, b) -> str | None:
    pre = x @ W_x + h @ W_h + b
    named = [
        (pre, "the values are right before the non-linearity — apply torch.tanh"),
        (torch.sigmoid(pre), "that is a sigmoid; this RNN uses tanh, which keeps h between -1 "
                             "and 1"),
        (torch.relu(pre), "that is a ReLU; this RNN uses tanh"),
        (torch.tanh(x @ W_x + h @ W_h), "the bias b is missing"),
        (torch.tanh(x @ W_x + h @ W_h) + b, "b is added after the tanh; it belongs inside it"),
        (torch.tanh(x @ W_x + h @ W_h.T + b), "W_h is applied transposed: the state enters as "
                                              "h @ W_h (a row times the matrix), not W_h @ h"),
        (torch.tanh(x @ W_x + b), "the previous state h is ignored: it must enter as h @ W_h "
                                  "(it is zero only at the very first step)"),
    ]
    for wrong, mistake in named:
        if _close(got, wrong):
            return mistake
    return None


@grader
def rnn_step(fn):
    """Exercise 1: h_new = tanh(x W_x + h W_h + b), for one state [H] or a batch [B, H]."""
    rng = np.random.default_rng(0)
    cases = [_step_case(rng, batched=False) for _ in range(2)]  # one state first: the
    # classic slips then give wrong numbers rather than a shape error, and can be named
    # hand-picked: a batch as large as the hidden size (W_x @ x-style slips run but are wrong)
    h, x = torch.full((4, 4), 0.5), torch.linspace(-1, 1, 12).view(4, 3)
    cases.append((h, x, *_weights(rng, 3, 4)))
    cases += seeded_cases(_step_case, n=20, seed=100)
    compare_with_reference(fn, _reference_step, cases, _compare_tensor, name="rnn_step",
                           diagnose=_step_mistake)
    return "One step of the relay: everything the RNN knows must fit in h."


# ---- exercise 2 -------------------------------------------------------------------------

def _reference_run(xs, h0, W_h, W_x, b):
    h, states = h0, []
    for x in xs:
        h = _reference_step(h, x, W_h, W_x, b)
        states.append(h)
    return torch.stack(states)


def _run_case(rng: np.random.Generator) -> tuple:
    d_in, d_hidden = (int(n) for n in rng.choice([2, 3, 4, 6], size=2, replace=False))
    T = int(rng.integers(1, 12))
    xs = torch.from_numpy(rng.standard_normal((T, d_in))).float()
    h0 = torch.from_numpy(rng.uniform(-1, 1, d_hidden)).float()  # a carried-over state
    return (xs, h0, *_weights(rng, d_in, d_hidden))


def _compare_run(got, expected, what: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: return one tensor of shape {tuple(expected.shape)} "
                   f"(torch.stack(states)), got {type(got).__name__}")
    T, H = expected.shape
    if got.shape == (H,) and T > 1:
        raise Hint(f"{what}: you returned only the last hidden state; stack every h_t into [T, H]")
    if got.shape == (T + 1, H):
        raise Hint(f"{what}: got {T + 1} states for {T} tokens — leave h0 out, it is not an "
                   "output")
    if got.shape == (T - 1, H) and T > 1:
        raise Hint(f"{what}: got {T - 1} states for {T} tokens — one step short: an off-by-one "
                   "in the loop over the rows of xs")
    expect_close(got, expected, what)


def _run_mistake(got, expected, xs, h0, W_h, W_x, b) -> str | None:
    T = len(xs)
    if T > 1 and _close(got, _reference_step(h0, xs, W_h, W_x, b)):
        return "every step used h0 — feed each new h into the next step"
    if _close(got, _reference_run(xs, torch.zeros_like(h0), W_h, W_x, b)):
        return "the result is what you get starting from zeros: start from the h0 you are given"
    if T > 1 and _close(got, _reference_run(xs.flip(0), h0, W_h, W_x, b)):
        return "the tokens were read in reverse order: start with xs[0]"
    if T > 1 and _close(got, expected[-1].expand(T, -1)):
        return ("every row equals the last state: you appended the same tensor each time and "
                "changed it in place (h[:] = ... or h.copy_); make a new h at each step instead")
    return None


@grader
def run_rnn(fn):
    """Exercise 2: run the step over a sequence, returning every hidden state [T, H]."""
    rng = np.random.default_rng(1)
    cases = [_run_case(rng) for _ in range(2)]
    xs, h0, *weights = _run_case(rng)
    cases.append((xs[:1], h0, *weights))  # a single token: one state, shape [1, H]
    cases += seeded_cases(_run_case, n=15, seed=200)
    compare_with_reference(fn, _reference_run, cases, _compare_run, name="run_rnn",
                           diagnose=_run_mistake)
    return "T steps, each waiting for the one before: the queue attention removes."


# ---- exercise 3 -------------------------------------------------------------------------

def _scores_case(rng: np.random.Generator) -> tuple:
    T, d = int(rng.integers(1, 9)), int(rng.integers(2, 9))
    if rng.random() < 0.3:
        d = T if T > 1 else 2  # square X: X.T @ X and X @ X then have the right shape
    scale = 10.0 ** rng.uniform(-1, 1, (T, 1))  # tokens of very different lengths
    return (torch.from_numpy(rng.standard_normal((T, d)) * scale).float(),)


def _scores_mistake(got, expected, X) -> str | None:
    T, d = X.shape
    if T != d and tuple(getattr(got, "shape", ())) == (d, d):
        return (f"got shape {(d, d)} — that is X.T @ X, which compares dimensions; compare "
                "tokens with X @ X.T")
    unit = X / X.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    named = [
        (X.T @ X, "that is X.T @ X, which compares dimensions; compare tokens with X @ X.T"),
        (torch.softmax(X @ X.T, dim=-1), "those are softmax weights; return the raw scores "
                                         "(chapter 03 adds the softmax)"),
        (X @ X.T / math.sqrt(X.shape[-1]), "you divided by √d: that scaling comes in chapter "
                                           "03; here return the plain dot products"),
        (unit @ unit.T, "those are cosine similarities; the exercise asks for plain dot "
                        "products, which also grow with the tokens' lengths"),
    ]
    for wrong, mistake in named:
        if wrong.shape == expected.shape and _close(got, wrong, atol=1e-4):
            return mistake
    return None


@grader
def all_pairs_scores(fn):
    """Exercise 3: the dot product of every token with every token, in one product."""
    cases = [(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0],
                            [0.5, 0.5, 0.5], [-1.0, 2.0, 2.0]]),),   # 5 tokens of width 3
             (torch.tensor([[2.0, -1.0]]),),                          # a single token
             (torch.tensor([[1.0, 2.0], [3.0, -1.0]]),)]              # square: T == d
    cases += seeded_cases(_scores_case, n=20, seed=300)
    compare_with_reference(fn, lambda X: X @ X.T, cases,
                           lambda got, exp, what: _compare_tensor(got, exp, what, atol=1e-4),
                           name="all_pairs_scores", diagnose=_scores_mistake)
    return "T × T scores from one product: this is where attention starts."


# ---- exercise 4 -------------------------------------------------------------------------

KEEP_PER_STEP = 0.9
FIRST, LAST = 1, 50


@grader
def remaining_signal(value):
    """Exercise 4: 0.9 per step, token 1 to token 50 is 49 steps: 0.9 ** 49."""
    value = expect_number(require_value(value, "remaining_signal"), "remaining_signal")
    steps = LAST - FIRST
    expected = KEEP_PER_STEP**steps
    if math.isclose(value, KEEP_PER_STEP ** (steps + 1), rel_tol=1e-6) or math.isclose(
            value, KEEP_PER_STEP ** (steps - 1), rel_tol=1e-6):
        raise Hint("off by one: from token 1 to token 50 there are 49 steps")
    if math.isclose(value, KEEP_PER_STEP * steps, rel_tol=1e-6):
        raise Hint("the shrinking multiplies at every step: use a power, not a product with "
                   "the number of steps")
    if value < 0 or math.isclose(value, 1 - (1 - KEEP_PER_STEP) * steps, rel_tol=1e-6):
        raise Hint("losing 10% per step compounds: each step keeps 90% of what is left, so the "
                   "signal never goes negative")
    if math.isclose(value, 1 - expected, rel_tol=1e-6):
        raise Hint("that is the fraction lost; the question asks what is left")
    if math.isclose(value, 100 * expected, rel_tol=1e-3):
        raise Hint("that looks like a percentage; give the fraction (a number between 0 and 1)")
    for decimals in range(1, 6):
        if value == round(expected, decimals) and value != expected:
            raise Hint(f"you rounded to {decimals} decimals, which is too coarse for a number "
                       "this small: keep the value Python computes")
    expect_value(value, expected, "remaining_signal", tol=expected * 1e-3)
    return f"About {expected:.1%}: a whisper after 49 relays."
