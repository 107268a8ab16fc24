"""Graders for chapter 07 (training): `from utils.checks import ch07 as check`."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from utils.checks.grading import (
    Hint,
    attempt,
    compare_with_reference,
    expect_close,
    expect_number,
    forbid_calls,
    grader,
    seeded_cases,
)
from utils.losses import next_token_loss as reference_next_token_loss
from utils.optim import adamw_step as reference_adamw_step
from utils.optim import lr_at as reference_lr_at

# ------------------------------------------------------------------ exercise 1: the loss


def _loss_case(B: int, T: int, V: int, scale: float, seed: int, transposed: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * scale
    if transposed:  # non-contiguous, as after a .transpose in a model
        logits = torch.randn(B, V, T, generator=g).transpose(1, 2) * scale
    tokens = torch.randint(V, (B, T + 1), generator=g)
    return logits, tokens


def _loss_cases() -> list[tuple]:
    hand = [
        _loss_case(2, 4, 5, 1.0, 0),
        _loss_case(1, 1, 3, 1.0, 1),              # one position
        _loss_case(3, 6, 2, 1.0, 2),              # two classes
        _loss_case(2, 5, 7, 200.0, 3),            # logits so large that exp() overflows
        _loss_case(2, 3, 9, 1.0, 4, transposed=True),
    ]
    mixed = _loss_case(2, 4, 6, 1.0, 5)[0].clone()
    mixed[0] *= 1000.0                            # rows of very different scale
    hand.append((mixed, _loss_case(2, 4, 6, 1.0, 5)[1]))
    random = seeded_cases(lambda rng: _loss_case(int(rng.integers(1, 5)), int(rng.integers(1, 17)),
                                                 int(rng.integers(2, 80)),
                                                 float(rng.choice([0.5, 3.0, 50.0])),
                                                 int(rng.integers(1 << 30))), n=20, seed=7)
    return hand + random


def _diagnose_loss(got, expected, logits, tokens) -> str | None:
    if not isinstance(got, torch.Tensor) and not isinstance(got, (float, int)):
        return None
    value = torch.as_tensor(got, dtype=torch.float64)
    if value.numel() != 1:
        return (f"returned {tuple(value.shape)} values; average the per-position losses "
                "into one number")
    value = float(value)
    if not math.isfinite(value):
        return ("the result is inf or nan: exp() of large logits overflows. Subtract each "
                "row's maximum logit before exponentiating (log-softmax)")
    flat = logits.flatten(0, 1)
    unshifted = F.cross_entropy(flat, tokens[:, :-1].flatten()).item()
    exp = float(expected)
    n = flat.size(0)
    if tokens.size(1) > 2 and math.isclose(value, unshifted, rel_tol=1e-4) \
            and not math.isclose(exp, unshifted, rel_tol=1e-4):
        return ("you scored each position against its own input token; the target is the "
                "NEXT token, tokens[:, 1:]")
    if n > 1 and math.isclose(value, exp * n, rel_tol=1e-4):
        return "that is the sum over positions; the loss is the mean"
    if math.isclose(value, exp / math.log(2), rel_tol=1e-4):
        return "that is in bits (log base 2); the loss uses the natural log"
    if math.isclose(value, exp / logits.size(-1), rel_tol=1e-4):
        return "you divided by the vocabulary size too; average over positions only"
    if math.isclose(value, -exp, rel_tol=1e-4):
        return "the sign is flipped: the loss is MINUS the log-probability of the target"
    return None


_FROM_THE_DEFINITION = ("write it from the definition: subtract each row's maximum, "
                        "log of the sum of exp, gather the target's log-probability, mean")
# The exercise rules these out (the library's loss, or the stable log-softmax it asks for).
_LOSS_SHORTCUTS = {F.cross_entropy: _FROM_THE_DEFINITION, F.log_softmax: _FROM_THE_DEFINITION,
                   torch.log_softmax: _FROM_THE_DEFINITION,
                   torch.Tensor.log_softmax: _FROM_THE_DEFINITION,
                   torch.special.log_softmax: _FROM_THE_DEFINITION}


@grader
def next_token_loss(fn):
    """Exercise 1: mean cross-entropy of logits [B, T, V] against tokens[:, 1:], computed
    without F.cross_entropy or log_softmax."""
    cases = _loss_cases()
    compare_with_reference(
        fn, reference_next_token_loss, cases,
        lambda got, exp, what: expect_close(got, exp, what, atol=1e-4, rtol=1e-4),
        name="next_token_loss", diagnose=_diagnose_loss)
    # after the comparison, so that a wrong answer gets its numeric hint first
    forbid_calls(fn, cases[0], _LOSS_SHORTCUTS)
    return "That is the number every training curve in this course plots."


# ------------------------------------------------------------ exercise 2: loss at step 0


@grader
def loss_at_init(fn):
    """Exercise 2: the loss of a model that spreads probability evenly over V tokens."""
    for V in (76, 2, 1, 65, 256, 50257, 7):
        got = expect_number(attempt(fn, V), f"loss_at_init({V})")
        expected = math.log(V)
        if abs(got - expected) <= 1e-6 * max(1.0, expected):
            continue
        what = f"loss_at_init({V}) = {got:.4g}"
        if V > 1 and math.isclose(got, math.log2(V), rel_tol=1e-6):
            raise Hint(f"{what}: that is log base 2 (bits); cross-entropy in PyTorch uses "
                       "the natural log, math.log")
        if V > 1 and math.isclose(got, math.log10(V), rel_tol=1e-6):
            raise Hint(f"{what}: that is log base 10; use the natural log")
        if math.isclose(got, -expected, rel_tol=1e-6) and V > 1:
            raise Hint(f"{what}: negative — the loss is MINUS the log of the probability")
        if math.isclose(got, 1 / V, rel_tol=1e-6):
            raise Hint(f"{what}: that is the probability of each token, not the loss "
                       "-log(probability)")
        rounded = {round(expected, k) for k in range(7)} | {float(f"{expected:.{k}g}")
                                                             for k in range(1, 8)}
        if any(math.isclose(got, r, rel_tol=1e-12, abs_tol=1e-15) for r in rounded):
            raise Hint(f"loss_at_init({V}) = {got!r} looks rounded (off by "
                       f"{abs(got - expected):.2g}): keep every decimal, return the value "
                       "unrounded (within a millionth is accepted)")
        raise Hint(f"{what} is {'too big' if got > expected else 'too small'}: each token "
                   f"gets probability 1/V; the loss is -log of the target's probability")
    return "ln(V): a fresh model's loss should start there; far above means a bug at init."


# ------------------------------------------------------------ exercise 3: the schedule


def _schedule_cases() -> list[tuple]:
    hand = [(s, 1.0, 10, 100, 0.1) for s in (0, 1, 9, 10, 11, 55, 99, 100, 101, 500)]
    hand += [(0, 3e-4, 1, 20, 0.0), (3, 1e-3, 0, 10, 1e-4), (7, 6e-4, 4, 8, 6e-5)]
    random = seeded_cases(lambda rng: (int(rng.integers(0, 1200)), float(rng.choice([1e-3, 6e-4,
                          3e-3])), int(rng.integers(1, 200)), int(rng.integers(200, 1000)),
                          float(rng.choice([0.0, 1e-5, 1e-4]))), n=40, seed=3)
    return hand + random


def _diagnose_schedule(got, expected, step, max_lr, warmup, total, min_lr) -> str | None:
    if not isinstance(got, (int, float, np.floating)):
        return None
    got = float(got)
    if step < warmup:
        if math.isclose(got, max_lr * step / warmup, rel_tol=1e-6):
            return ("warm-up is one step behind: update 0 would use lr 0 (a wasted step). "
                    "Use (step + 1) / warmup_steps")
        return "during warm-up the rate rises linearly to max_lr at step warmup_steps - 1"
    if step >= total:
        return "after total_steps the rate stays at min_lr"
    progress = (step - warmup) / max(1, total - warmup)
    if math.isclose(got, 0.5 * (1 + math.cos(math.pi * progress)) * max_lr, rel_tol=1e-6):
        return "the cosine should decay to min_lr, not to 0: min_lr + 0.5(1+cos)(max_lr - min_lr)"
    if math.isclose(got, min_lr + 0.5 * (1 + math.cos(math.pi * step / total)) * (max_lr - min_lr),
                    rel_tol=1e-6):
        return "the cosine must start at the end of warm-up: progress = (step - warmup) / (total - warmup)"
    if math.isclose(got, max_lr - progress * (max_lr - min_lr), rel_tol=1e-6):
        return "that is a linear decay; the schedule is a cosine"
    return None


@grader
def lr_schedule(fn):
    """Exercise 3: warm-up then cosine decay, `lr_at(step, max_lr, warmup, total, min_lr)`."""
    compare_with_reference(
        fn, reference_lr_at, _schedule_cases(),
        lambda got, exp, what: expect_close(expect_number(got, what), exp, what, atol=1e-12,
                                            rtol=1e-6),
        name="lr_at", diagnose=_diagnose_schedule)
    return "Warm-up protects the first steps; the cosine lands softly on min_lr."


# ------------------------------------------------------------- exercise 4: one AdamW step


def _adam_case(rng: np.random.Generator, n: int | None = None, step: int | None = None):
    n = n or int(rng.integers(1, 7))
    t = lambda scale: torch.tensor(rng.normal(size=n) * scale, dtype=torch.float64)
    v = torch.tensor(rng.random(n) * 0.1, dtype=torch.float64)
    return (t(1.0), t(float(rng.choice([1e-3, 1.0, 100.0]))), t(0.1), v,
            step or int(rng.integers(1, 50)), float(rng.choice([1e-3, 1e-2])),
            (0.9, float(rng.choice([0.95, 0.999]))), 1e-8, float(rng.choice([0.0, 0.1, 0.5])))


def _adam_cases() -> list[tuple]:
    rng = np.random.default_rng(11)
    p = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    g = torch.tensor([0.1, 40.0, -1e-3, 0.0], dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.float64)
    hand = [
        (p, g, zeros, zeros, 1, 1e-2, (0.9, 0.999), 1e-8, 0.1),       # the first step
        (p, g, zeros + 0.05, zeros + 0.01, 2, 1e-2, (0.9, 0.999), 1e-8, 0.1),
        (p, g, zeros + 0.05, zeros + 0.01, 1000, 1e-3, (0.9, 0.95), 1e-8, 0.5),
        (p, zeros, zeros, zeros, 1, 1e-1, (0.9, 0.999), 1e-8, 0.5),   # only the decay acts
        _adam_case(rng, n=3, step=3),
    ]
    return hand + seeded_cases(_adam_case, n=20, seed=12)


def _compare_adam(got, expected, what):
    if not isinstance(got, tuple) or len(got) != 3:
        raise Hint(f"{what}: return a tuple (new_param, new_m, new_v)")
    for name, g, e in zip(("param", "m", "v"), got, expected, strict=True):
        expect_close(g, e, f"{what}: new {name}", atol=float("inf"), rtol=0)   # type and shape
        g, e = torch.as_tensor(g, dtype=torch.float64).detach(), e.double()
        off = ~torch.isclose(g, e, atol=1e-10, rtol=1e-7)
        if off.any():
            i = int(off.flatten().nonzero()[0])
            a, b = g.flatten()[i].item(), e.flatten()[i].item()
            digits = next(d for d in range(4, 18) if f"{a:.{d}g}" != f"{b:.{d}g}")
            raise Hint(f"{what}: new {name}[{i}] is {a:.{digits}g}, expected {b:.{digits}g} "
                       f"(off by {abs(a - b):.2g}, relative {abs(a - b) / (abs(b) or 1):.1g})")


def _diagnose_adam(got, expected, p, g, m, v, step, lr, betas, eps, wd) -> str | None:
    if not isinstance(got, tuple) or len(got) != 3:
        return None
    new_p = torch.as_tensor(got[0], dtype=torch.float64)
    b1, b2 = betas
    m1 = b1 * m + (1 - b1) * g
    v1 = b2 * v + (1 - b2) * g * g

    def close(candidate):
        return new_p.shape == candidate.shape and torch.allclose(new_p, candidate, atol=1e-10,
                                                                 rtol=1e-7)

    decayed = p * (1 - lr * wd)
    m_hat, v_hat = m1 / (1 - b1 ** step), v1 / (1 - b2 ** step)
    if wd > 0 and close((p - lr * m_hat / (v_hat.sqrt() + eps)) * (1 - lr * wd)):
        return ("the weight decay comes after the Adam step; shrink the weight first, "
                "param * (1 - lr * weight_decay), then subtract lr * m_hat / (sqrt(v_hat) + eps), "
                "as torch.optim.AdamW does")
    if close(decayed - lr * m_hat / (v_hat + eps).sqrt()):
        return "eps is inside the square root; it goes outside: m_hat / (sqrt(v_hat) + eps)"
    if close(decayed - lr * m_hat / (v_hat + eps)):
        return "the square root is missing: divide by sqrt(v_hat) + eps"
    if step < 200 and close(decayed - lr * m1 / (v1.sqrt() + eps)):
        return "no bias correction: divide m by (1 - beta1**step) and v by (1 - beta2**step)"
    if close(decayed - lr * (m1 / (1 - b1 ** (step + 1))) / ((v1 / (1 - b2 ** (step + 1))).sqrt()
                                                            + eps)):
        return "bias correction uses step + 1; `step` already counts from 1"
    if step > 1 and close(decayed - lr * (m1 / (1 - b1 ** (step - 1)))
                          / ((v1 / (1 - b2 ** (step - 1))).sqrt() + eps)):
        return "bias correction uses step - 1; the first update has step = 1"
    if wd > 0:
        g2 = g + wd * p
        m2, v2 = b1 * m + (1 - b1) * g2, b2 * v + (1 - b2) * g2 * g2
        l2 = p - lr * (m2 / (1 - b1 ** step)) / ((v2 / (1 - b2 ** step)).sqrt() + eps)
        if close(l2):
            return ("weight decay was added to the gradient (L2, plain Adam). AdamW decouples "
                    "it: shrink the weight by lr * weight_decay * param, outside the Adam ratio")
        if close(p - lr * (m1 / (1 - b1 ** step)) / ((v1 / (1 - b2 ** step)).sqrt() + eps)):
            return "weight decay is missing: shrink the weight by lr * weight_decay * param"
    return None


@grader
def adamw_step(fn):
    """Exercise 4: one AdamW update, returning (new_param, new_m, new_v)."""
    compare_with_reference(fn, reference_adamw_step, _adam_cases(), _compare_adam,
                           name="adamw_step", diagnose=_diagnose_adam)
    return "Same numbers as torch.optim.AdamW; the trainer uses the fused version of this."
