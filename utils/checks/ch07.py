"""Graders for chapter 07 (training): `from utils.checks import ch07 as check`."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from utils.activation_memory import activation_bytes_per_layer as reference_activation_bytes
from utils.activation_memory import block_terms
from utils.checks.grading import (
    Hint,
    attempt,
    compare_with_reference,
    expect_close,
    expect_number,
    expect_tensor,
    forbid_calls,
    grader,
    seeded_cases,
    torch_calls,
)
from utils.losses import next_token_loss as reference_next_token_loss
from utils.muon import NS_COEFFICIENTS
from utils.muon import newton_schulz as reference_newton_schulz
from utils.optim import adamw_step as reference_adamw_step
from utils.optim import clip_grad_norm as reference_clip_grad_norm
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


# ------------------------------------------------- exercise 5: clip the global gradient norm


def _clip_case(grads: list, max_norm: float, generator: bool = False) -> tuple:
    """(gradients, max_norm, generator): the description of one case; `_clip_params` builds
    fresh parameters from it for each call, so every answer starts from the same state."""
    grads = [None if g is None else torch.as_tensor(g, dtype=torch.float32) for g in grads]
    return grads, max_norm, generator


def _clip_params(case: tuple) -> list[torch.nn.Parameter]:
    params = []
    for g in case[0]:
        shape = (3,) if g is None else g.shape
        p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, math.prod(shape)).reshape(shape))
        p.grad = None if g is None else g.clone()
        params.append(p)
    return params


def _random_clip_case(rng: np.random.Generator) -> tuple:
    grads = []
    for _ in range(int(rng.integers(1, 7))):
        shape = tuple(int(s) for s in rng.integers(1, 9, size=int(rng.integers(1, 4))))
        scale = float(rng.choice([1e-3, 1.0, 30.0]))
        grads.append(None if rng.random() < 0.2 else rng.normal(size=shape) * scale)
    if all(g is None for g in grads):
        grads[0] = rng.normal(size=(4,))
    total = math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))
    return _clip_case(grads, total * float(rng.choice([0.1, 0.5, 0.9, 1.5, 4.0])),
                      bool(rng.integers(2)))


def _clip_cases() -> list[tuple]:
    hand = [
        _clip_case([[3.0, 4.0]], 1.0),                                    # norm 5 -> [0.6, 0.8]
        _clip_case([[3.0, 4.0], [[0.0, 12.0], [0.0, 0.0]]], 5.0),        # global 13, not each
        _clip_case([[0.3], [0.4]], 1.0),                                  # below: leave alone
        _clip_case([[1.0, 2.0], None, [[2.0], [4.0]]], 2.0),             # a frozen parameter
        _clip_case([[6.0, 0.0], [0.0, 8.0], [[0.0]]], 1.0, generator=True),   # model.parameters()
        _clip_case([[3e-7, 4e-7]], 1e-7),                                 # tiny: the 1e-6 counts
        _clip_case([[0.0, 0.0], [[0.0]]], 1.0),                           # zero gradients
        _clip_case([[1e3, -2e3], [1e-3, 2e-3, -3e-3]], 10.0),             # very different scales
    ]
    return hand + seeded_cases(_random_clip_case, n=15, seed=18)


def _clip_mistake(case, got_norm, got_grads, params_changed: bool) -> str | None:
    """Recompute the classic slips of clipping and name the one the answer matches."""
    grads, max_norm, generator = case
    present = [g for g in grads if g is not None]
    total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in present))
    if params_changed:
        return "it changed the parameters themselves; clipping changes only their .grad"
    if len(present) > 1 and math.isclose(got_norm, max(float(g.norm()) for g in present),
                                         rel_tol=1e-4) and not math.isclose(got_norm, total):
        return "that is the largest norm of one tensor; the norm is over all gradients at once"
    if total > 0 and abs(total - 1) > 1e-3 and math.isclose(got_norm, total ** 2,
                                                            rel_tol=1e-4):
        return "that is the sum of squares: take its square root"
    if math.isclose(got_norm, sum(float(g.abs().sum()) for g in present), rel_tol=1e-4) \
            and not math.isclose(got_norm, total, rel_tol=1e-4):
        return "that is the sum of absolute values (the L1 norm); clipping uses the L2 norm"
    if total > max_norm and math.isclose(got_norm, max_norm, rel_tol=1e-3):
        return "that is the norm after clipping; return the norm the gradients had before"
    if not math.isclose(got_norm, total, rel_tol=1e-4, abs_tol=1e-9):
        return None
    scale = max_norm / (total + 1e-6)

    def matches(expected: list) -> bool:
        return all(torch.allclose(g, e, rtol=1e-4, atol=1e-10) for g, e in
                   zip(got_grads, expected, strict=True) if e is not None)

    each = [None if g is None else g * min(1.0, max_norm / (float(g.norm()) + 1e-6))
            for g in grads]
    if len(present) > 1 and matches(each):
        return ("each tensor was clipped by its own norm; scale all of them by one factor, "
                "from the norm of all the gradients together")
    if scale > 1 and matches([None if g is None else g * scale for g in grads]):
        return ("the norm was already below max_norm and the gradients were scaled UP; "
                "clipping only ever shrinks them (min(1, max_norm / norm))")
    if total > 0 and scale < 1 and matches([None if g is None else g * max_norm / total
                                            for g in grads]):
        return "divide by (norm + 1e-6), as torch does, so that a zero norm cannot divide by 0"
    if scale < 1 and matches(grads):
        if generator:
            return ("the gradients were not scaled: `parameters` here is a generator, like "
                    "model.parameters(), and can be walked only once; make it a list first")
        return "the gradients were not scaled: multiply each p.grad in place (p.grad.mul_(...))"
    first = next(i for i, g in enumerate(grads) if g is not None)
    if scale < 1 and len(present) > 1 and matches(
            [g * scale if i == first else g for i, g in enumerate(grads)]):
        return "only the first gradient was scaled; scale every one of them"
    return None


_CLIP_HELPERS = ("torch.nn.utils' clip_grad_norm_, get_total_norm and clip_grads_with_norm_ "
                 "do the exercise for you: add up the squares and scale the gradients yourself")


@grader
def clip_grad_norm(fn):
    """Exercise 5: scale every gradient by one factor so that their global L2 norm is at most
    `max_norm`, in place; return the norm before clipping."""
    for case in _clip_cases():
        grads, max_norm, generator = case
        reference, mine = _clip_params(case), _clip_params(case)
        expected = float(reference_clip_grad_norm(reference, max_norm))
        before = [p.detach().clone() for p in mine]
        shown = ", ".join("None" if g is None else f"{list(g.shape)}" for g in grads)
        what = (f"gradients of shapes [{shown}] ({'a generator' if generator else 'a list'} "
                f"of parameters), max_norm={max_norm:.3g}")
        try:
            got = attempt(fn, (p for p in mine) if generator else mine, max_norm)
        except Hint as hint:
            if None in grads and "NoneType" in str(hint):
                raise Hint(f"{what}: {hint}. A parameter that took no part in the loss has "
                           "p.grad None: skip it") from None
            raise
        got_norm = expect_number(got, f"the norm returned for {what}")
        changed = any(not torch.equal(p.detach(), b) for p, b in zip(mine, before, strict=True))
        got_grads = [p.grad for p in mine]
        norm_ok = math.isclose(got_norm, expected, rel_tol=1e-4, abs_tol=1e-9)
        grads_ok = all((g is None) == (r.grad is None) and (g is None or torch.allclose(
            g, r.grad, rtol=1e-4, atol=1e-10)) for g, r in zip(got_grads, reference, strict=True))
        if norm_ok and grads_ok and not changed:
            continue
        mistake = _clip_mistake(case, got_norm, got_grads, changed)
        if mistake:
            raise Hint(f"{what}: {mistake}")
        if not norm_ok:
            raise Hint(f"{what}: returned norm {got_norm:.6g}, expected {expected:.6g}: the "
                       "square root of the sum of every squared entry of every gradient")
        raise Hint(f"{what}: the returned norm is right but the gradients afterwards are not: "
                   "multiply every gradient by max_norm / (norm + 1e-6) when norm > max_norm")
    forbid_calls(fn, (_clip_params(_clip_cases()[1]), 5.0),
                 dict.fromkeys((torch._foreach_norm, torch._foreach_mul_), _CLIP_HELPERS))
    return "The trainer calls the same function after every backward pass."


# ------------------------------------------------- exercise 6: Newton-Schulz orthogonalisation


def _ns_matrix(rows: int, cols: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * scale


def _ns_cases() -> list[tuple]:
    low_rank = _ns_matrix(12, 2, 1.0, 6) @ _ns_matrix(2, 12, 1.0, 7)   # a typical gradient
    hand = [
        (_ns_matrix(6, 6, 1.0, 0), 5),        # square and not symmetric
        (_ns_matrix(4, 16, 1.0, 1), 5),       # wide
        (_ns_matrix(16, 4, 1.0, 2), 5),       # tall: transposed, and back at the end
        (_ns_matrix(1, 7, 1.0, 3), 5),        # one row
        (_ns_matrix(9, 1, 1.0, 4), 5),        # one column
        (_ns_matrix(5, 8, 300.0, 5), 5),      # large entries: only the norm keeps it in range
        (low_rank + 1e-3 * _ns_matrix(12, 12, 1.0, 8), 5),
        (_ns_matrix(7, 3, 1.0, 9), 1),        # steps is an argument
        (_ns_matrix(3, 10, 1.0, 10), 2),
        (torch.zeros(3, 4), 5),               # eps: no division by zero
    ]
    random = seeded_cases(lambda rng: (_ns_matrix(int(rng.integers(1, 40)), int(rng.integers(1, 40)),
                                                  float(rng.choice([1e-3, 1.0, 50.0])),
                                                  int(rng.integers(1 << 30))),
                                       int(rng.choice([3, 5, 5, 8]))), n=15, seed=6)
    return hand + random


def _ns_variant(G, steps, norm="fro", coefficients=NS_COEFFICIENTS, transpose="tall",
                gram="left") -> torch.Tensor:
    """newton_schulz with one slip, for naming the mistake an answer matches."""
    a, b, c = coefficients
    X = G.float()
    flip = {"tall": G.size(0) > G.size(1), "wide": G.size(0) < G.size(1), "never": False,
            "no-back": G.size(0) > G.size(1)}[transpose]
    X = X.T if flip else X
    if norm == "fro":
        X = X / X.norm().clamp(min=1e-7)
    elif norm == "spectral":
        X = X / torch.linalg.matrix_norm(X, ord=2).clamp(min=1e-7)
    elif norm == "max":
        X = X / X.abs().max().clamp(min=1e-7)
    for _ in range(steps):
        A = X @ X.T if gram == "left" else X.T @ X
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if flip and transpose != "no-back" else X


def _ns_mistake(got, expected, G, steps) -> str | None:
    if not isinstance(got, torch.Tensor) or not torch.is_floating_point(got):
        return None
    if got.dtype in (torch.bfloat16, torch.float16):
        return (f"the result is {got.dtype}: the exercise computes in float32 (G.float()); "
                "bfloat16 is for a GPU's tensor cores, and rounds at the third digit")
    got = got.detach().float()
    if G.size(0) > G.size(1) and got.shape == (G.size(1), G.size(0)):
        return "the result is transposed: a tall G is transposed first and back at the end"
    if got.shape != G.shape:
        return None
    if not torch.isfinite(got).all():
        if not G.any():
            return "a zero matrix divides by a zero norm: divide by norm.clamp(min=eps)"
        return ("the iteration blew up (inf or nan). Check three things: G divided by its "
                "Frobenius norm X.norm() first (no division, or by the largest entry, leaves "
                "singular values above 1, where the polynomial explodes); a = 3.4445 on X, "
                "b = -4.7750 on (X Xᵀ) X, c = 2.0315 on (X Xᵀ)² X; and A = X Xᵀ on the "
                "left: X <- a X + (b A + c A @ A) @ X")
    a, b, c = NS_COEFFICIENTS
    variants = {
        "no normalisation: divide G by its Frobenius norm first, so every singular value "
        "starts in [0, 1]": dict(norm=None),
        "that divides by the largest singular value (the spectral norm); the exercise divides "
        "by the Frobenius norm, X.norm(), which needs no SVD": dict(norm="spectral"),
        "that divides by the largest entry; divide by the Frobenius norm, X.norm()":
            dict(norm="max"),
        "the coefficients are in the wrong order: a = 3.4445 multiplies X, b = -4.7750 the "
        "X Xᵀ X term, c = 2.0315 the (X Xᵀ)² X term": dict(coefficients=(c, b, a)),
        "b and c are swapped: b = -4.7750 goes with A = X Xᵀ, c = 2.0315 with A @ A":
            dict(coefficients=(a, c, b)),
        "the Gram matrix is on the wrong side: with A = X Xᵀ the update is a X + (b A + c A²) X":
            dict(gram="right"),
    }
    if steps != 1:
        variants["that is one iteration; run `steps` of them"] = dict(steps=1)
    for hint, change in variants.items():
        candidate = _ns_variant(G, change.pop("steps", steps), **change)
        if torch.isfinite(candidate).all() and torch.allclose(got, candidate, rtol=1e-3,
                                                               atol=1e-4):
            return hint
    return None


def _compare_ns(got, expected, what):
    got = expect_tensor(got, tuple(expected.shape), what)
    expect_close(got.float(), expected, what, atol=1e-4, rtol=1e-3)


_NO_SVD = ("the point of Newton-Schulz is to get close to U Vᵀ from matrix products alone, "
           "which run fast on a GPU; an SVD is what it replaces")
_DECOMPOSITIONS = dict.fromkeys((torch.linalg.svd, torch.svd, torch.Tensor.svd,
                                 torch.linalg.svdvals, torch.linalg.eig, torch.linalg.eigh,
                                 torch.linalg.eigvalsh, torch.linalg.eigvals), _NO_SVD)


@grader
def newton_schulz(fn):
    """Exercise 6: `steps` quintic Newton-Schulz iterations in float32, as utils.muon's
    newton_schulz(G, steps, dtype=torch.float32)."""
    cases = _ns_cases()
    compare_with_reference(
        fn, lambda G, steps: reference_newton_schulz(G, steps, dtype=torch.float32), cases,
        _compare_ns, name="my_newton_schulz", diagnose=_ns_mistake)
    forbid_calls(fn, (_ns_matrix(6, 6, 1.0, 0), 5), _DECOMPOSITIONS)
    for rows, cols in ((32, 4), (4, 32)):       # the Gram matrix must be the small one
        for _, shapes in torch_calls(fn, _ns_matrix(rows, cols, 1.0, 11), 5):
            if (32, 32) in shapes:
                raise Hint(f"for a {rows} x {cols} G it forms a 32 x 32 Gram matrix: transpose a "
                           "TALL matrix (rows > cols) so that X Xᵀ is the small 4 x 4 one (same "
                           "result, far fewer operations)")
    return "That is Muon's whole trick: five small matrix products instead of an SVD."


# ------------------------------------------------- exercise 7: one block's activation memory


def _activation_cases() -> list[tuple]:
    # the first case tells every slip below apart (with n_head = 4 bytes, leaving out the
    # logsumexp and leaving out the norm statistics would give the same number)
    hand = [
        (2, 64, 96, 6, 2),          # bfloat16: 2 bytes a value, the logsumexp still 4
        (16, 128, 128, 4, 4),       # the shakespeare-char-fast model's batch, float32
        (1, 1, 8, 1, 4),            # one position, one head
        (8, 1024, 768, 12, 2),      # GPT-2 small's block at its full context
        (4, 256, 64, 1, 4),
        (3, 512, 48, 3, 1),         # one byte a value (fp8): the logsumexp stays float32
    ]
    def draw(rng):
        n_head = int(rng.choice([1, 2, 4, 6, 12]))
        return (int(rng.integers(1, 65)), int(rng.integers(1, 2049)),
                n_head * int(rng.integers(1, 97)), n_head, int(rng.choice([1, 2, 4])))
    random = seeded_cases(draw, n=20, seed=19)
    return hand + random


def _activation_mistake(got, expected, batch, seq_len, n_embd, n_head, bytes_per_value):
    if isinstance(got, bool) or not isinstance(got, (int, float, np.number)):
        return None
    N, d, h, b = batch * seq_len, n_embd, n_head, bytes_per_value
    # every term with one byte a value, the logsumexp's 4 bytes included
    values = sum(block_terms(batch, seq_len, n_embd, n_head, 1).values()) - 3 * N * h
    slips = [
        (expected + batch * h * seq_len * seq_len * b,
         "that counts a [T, T] matrix of attention weights per head; the fused kernel never "
         "stores them: it keeps one logsumexp per row and head and recomputes the softmax "
         "in backward"),
        (expected - 4 * N * d * b,
         "the hidden layer (4 x n_embd wide) is kept twice: GELU's input, for GELU's "
         "derivative, and GELU's output, which is down's input"),
        (expected - 2 * N * d * b,
         "2 x batch x seq_len x n_embd values short: qkv's output is 3 x n_embd wide (q, k "
         "and v of every head), and a norm's output is a tensor of its own, kept by the "
         "linear layer after it (qkv, up), besides the norm's input"),
        (expected - 3 * N * d * b,
         "q, k and v are missing: the kernel keeps qkv's output, 3 x n_embd values a row"),
        (expected - N * h * 4 + N * 4,
         "the logsumexp is one number per row AND per head: batch x seq_len x n_head"),
        (expected - N * h * 4,
         "the attention kernel also keeps its logsumexp: one float32 per row and head"),
        (expected - N * h * 4 + N * h * b,
         "the logsumexp is float32 (4 bytes) whatever the dtype of the activations"),
        (values,
         "that counts values, not bytes: multiply by bytes_per_value (and 4 for the logsumexp)"),
        (expected + N * d * b,
         "the attention output IS proj's input: one tensor, counted once"),
        (expected - 4 * N * b,
         "each LayerNorm also keeps two numbers per row, the mean and 1/std"),
    ]
    for slip, hint in slips:
        if got == slip:
            return hint
    return None


def _compare_bytes(got, expected, what):
    """A count of bytes is a whole number, right or wrong: no "keep more decimals"."""
    number = expect_number(got, what)
    if number != expected:
        direction = "too big" if number > expected else "too small"
        raise Hint(f"{what} = {number:g} is {direction}, by about "
                   f"{100 * abs(number - expected) / expected:.2g}%: a tensor is missing, "
                   "extra or the wrong size; go through the block's layers one at a time")


@grader
def activation_bytes(fn):
    """Exercise 7: bytes one block of the course's GPT keeps for backward,
    `my_activation_bytes(batch, seq_len, n_embd, n_head, bytes_per_value)`."""
    compare_with_reference(
        fn, reference_activation_bytes, _activation_cases(),
        _compare_bytes, name="my_activation_bytes", diagnose=_activation_mistake)
    return ("Half of it is the feed-forward network's hidden layer; the fused attention "
            "never stores the T x T weights. Checkpointing keeps only n_embd values a row.")
