"""Graders for chapter 08 (generation): `from utils.checks import ch08 as check`.

Logits and probabilities are tensors [..., vocab]: one row per position or per sequence; every
function works on the last dimension and must not change its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.checks.grading import (
    Hint,
    compare_with_reference,
    expect_close,
    expect_tensor,
    grader,
    seeded_cases,
)
from utils.generation import next_token_probs
from utils.generation import top_k_filter as reference_top_k
from utils.generation import top_p_filter as reference_top_p


def _label(fn, exercise: str) -> str:
    """Hints name the learner's own function (`my_top_k_filter`), falling back to the exercise."""
    name = getattr(fn, "__name__", "")
    return name if name.isidentifier() else exercise


def _first_difference(got_kept: torch.Tensor, should_kept: torch.Tensor) -> str:
    """'token 3 is kept but should not be; token 1 should be kept but is not' (first row that differs)."""
    rows = (got_kept != should_kept).reshape(-1, got_kept.size(-1))
    row = int(rows.any(-1).nonzero()[0])
    got_row = got_kept.reshape(-1, got_kept.size(-1))[row]
    should_row = should_kept.reshape(-1, should_kept.size(-1))[row]
    extra = (got_row & ~should_row).nonzero().flatten().tolist()
    missing = (should_row & ~got_row).nonzero().flatten().tolist()
    where = f" (row {row})" if got_kept.dim() > 1 else ""
    parts = ([f"token {extra[0]} is kept but should not be"] if extra else []) + (
        [f"token {missing[0]} should be kept but is not"] if missing else [])
    return "; ".join(parts) + where


def _logits_cases(make_extra, seed: int) -> list[tuple]:
    """Random logits [B, V] or [V]: scaled like a real model's, sometimes rounded to force ties."""
    def make(rng):
        V = int(rng.integers(2, 80))
        shape = (V,) if rng.random() < 0.3 else (int(rng.integers(1, 4)), V)
        x = torch.from_numpy(rng.normal(0, float(rng.uniform(0.5, 6)), size=shape)).float()
        if rng.random() < 0.4:
            x = x.round()                                   # many equal logits
        return (x, *make_extra(rng, V))
    return seeded_cases(make, 30, seed=seed)


# ---- exercise 1: top-k -----------------------------------------------------------------------


def _compare_filtered(got, expected: torch.Tensor, what: str) -> None:
    got = expect_tensor(got, expected.shape, what).float()
    kept, should = torch.isfinite(got), torch.isfinite(expected)
    if torch.equal(kept.sum(-1), should.sum(-1)) and not torch.equal(kept, should):
        raise Hint(f"{what}: the right number of tokens is kept, but not the right ones: "
                   f"{_first_difference(kept, should)}; keep the *largest* logits of each row")
    if not torch.equal(kept, should):
        raise Hint(f"{what}: kept {kept.sum(-1).tolist()} tokens, expected "
                   f"{should.sum(-1).tolist()} (removed logits must be -inf)")
    if not torch.equal(got[kept], expected[should]):
        raise Hint(f"{what}: the logits you kept were changed; return them unchanged")


def _diagnose_top_k(got, expected, logits, k) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None
    got = got.detach().float()
    if torch.allclose(got.sum(-1), torch.ones(()), atol=1e-4) and (got >= 0).all():
        return "this looks like probabilities; return the filtered *logits* (softmax comes later)"
    if ((got == 0) & ~torch.isfinite(expected)).any() and torch.isfinite(got).all():
        return ("removed tokens got logit 0, which still has probability e^0 > 0 after the "
                "softmax: set them to -inf")
    n_got = torch.isfinite(got).sum(-1)
    if (n_got == 0).any():
        return ("a row kept no token at all: take the k-th largest logit of each row "
                "(along dim=-1), not of the whole tensor")
    if torch.equal(got, expected.sort(-1, descending=True).values):
        return ("the logits come back sorted; put each kept logit back at its token's position "
                "(index = token id)")
    n_want = torch.isfinite(expected).sum(-1)
    k_eff = min(k, logits.size(-1))
    if (n_got == k_eff).all() and (n_want > k_eff).any():
        return ("exactly k tokens kept, but some tokens are tied with the k-th largest logit: "
                "keep every token whose logit is >= the k-th largest value")
    if (n_got == n_want - 1).any() or (n_got == n_want + 1).any():
        return "one token too many or too few: off by one in k (the k-th largest is kept)"
    return None


@grader
def top_k_filter(fn):
    """Exercise 1: my_top_k_filter(logits, k) -> logits with all but the k largest set to -inf."""
    cases = [
        (torch.tensor([1.0, 3.0, 2.0, 0.0]), 2),
        (torch.tensor([[0.5, -1.0, 4.0, 2.0, 2.0, 1.0]]), 1),
        (torch.tensor([[0.5, -1.0, 4.0, 2.0, 2.0, 1.0]]), 2),           # tie at the boundary
        (torch.tensor([[2.0, 2.0, 2.0], [1.0, 0.0, -1.0]]), 1),
        (torch.tensor([[3.0, 1.0, 2.0], [-5.0, 7.0, 0.0]]), 3),         # k = vocab: keep all
        (torch.tensor([0.1, 0.2, 0.3]), 10),                              # k > vocab
        (torch.tensor([-3.0, -1.0, -2.0, -7.0]), 3),                     # all negative
    ]
    cases += _logits_cases(lambda rng, V: (int(rng.integers(1, V + 3)),), seed=8)
    compare_with_reference(fn, reference_top_k, cases, _compare_filtered,
                           _label(fn, "top_k_filter"), diagnose=_diagnose_top_k)
    return "Only the k most likely tokens (and their ties) can be sampled now."


# ---- exercise 2: top-p -----------------------------------------------------------------------


def reference_top_p_probs(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The library's nucleus filter, applied to probabilities and renormalised."""
    kept = torch.isfinite(reference_top_p(probs.log(), p))
    out = probs * kept
    return out / out.sum(-1, keepdim=True)


def _compare_probs(got, expected: torch.Tensor, what: str) -> None:
    got = expect_tensor(got, expected.shape, what).float()
    kept, should = got > 0, expected > 0
    if torch.equal(kept.sum(-1), should.sum(-1)) and not torch.equal(kept, should):
        raise Hint(f"{what}: the right number of tokens is kept, but not the right ones: "
                   f"{_first_difference(kept, should)}. The nucleus is made of the *most likely* "
                   "tokens: sort by probability (descending) before taking the running total")
    if not torch.equal(kept, should):
        raise Hint(f"{what}: kept {kept.sum(-1).tolist()} tokens, expected "
                   f"{should.sum(-1).tolist()}")
    expect_close(got, expected, what, atol=1e-5, rtol=1e-4)


def _nuclei_of_unsorted_totals(probs: torch.Tensor, p: float) -> list[torch.Tensor]:
    """The classic slip, the running total taken over the tokens in id order (before or
    without sorting), in its two spellings: the decisions kept in id order, or read as if
    they were in sorted order and scattered back."""
    keep = probs.cumsum(-1) - probs < p
    keep[..., 0] = True
    order = torch.sort(probs, dim=-1, descending=True).indices
    return [keep, keep.scatter(-1, order, keep)]


def _nucleus_by_rule(probs: torch.Tensor, p: float, rule) -> torch.Tensor:
    """Which tokens a sorted running-total rule keeps, back in token order."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep = rule(sorted_probs.cumsum(-1), sorted_probs)
    keep[..., 0] = True
    return keep.scatter(-1, order, keep)


def _diagnose_top_p(got, expected, probs, p) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None
    got = got.detach().float()
    kept = got > 0
    n_got, n_want = kept.sum(-1), (expected > 0).sum(-1)
    if (n_got == 0).any():
        return ("a row lost every token; the most likely token must always be kept, even "
                "when it alone is more than p")
    if torch.allclose(got, expected.sort(-1, descending=True).values, atol=1e-5):
        return "the result is in sorted order; scatter it back to the tokens' own positions"
    if torch.equal(kept, expected > 0) and not torch.allclose(
            got.sum(-1), torch.ones(()), atol=1e-4):
        return ("the right tokens are kept but the probabilities no longer sum to 1: "
                "renormalise (divide by the kept total)")
    # The named slips, each recomputed exactly, before any guess from counts alone.
    too_few = ("one token too few: keep tokens until the running total *reaches* p — the "
               "token that crosses p belongs to the nucleus")
    too_many = ("one token too many: stop as soon as the running total reaches p (a token is "
                "needed only while the total *before* it is still below p)")
    if torch.equal(kept, _nucleus_by_rule(probs, p, lambda total, sp: total < p)):
        return too_few
    if torch.equal(kept, _nucleus_by_rule(probs, p, lambda total, sp: total - sp <= p)):
        return too_many
    if any(torch.equal(kept, nucleus) for nucleus in _nuclei_of_unsorted_totals(probs, p)):
        return ("the running total was taken in token-id order; sort the probabilities "
                "(descending) first, accumulate in that order, then put the decisions back "
                "at the tokens' own positions")
    if (n_got < n_want).any():
        return too_few
    if (n_got > n_want).any():
        return too_many
    return None


@grader
def top_p_filter(fn):
    """Exercise 2: my_top_p_filter(probs, p) -> renormalised probabilities of the nucleus."""
    cases = [
        (torch.tensor([0.1, 0.5, 0.25, 0.15]), 0.6),
        # a running total in token-id order keeps tokens 0-2 here, or 2-4 if then scattered
        # as if sorted; the nucleus is tokens 2 and 4
        (torch.tensor([0.05, 0.10, 0.45, 0.15, 0.25]), 0.5),
        (torch.tensor([0.1, 0.5, 0.25, 0.15]), 0.5),       # 0.5 alone is exactly enough
        (torch.tensor([0.1, 0.5, 0.25, 0.15]), 0.2),       # the top token alone exceeds p
        (torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]]), 0.8),
        (torch.tensor([[0.3, 0.3, 0.4]]), 1.0),             # p = 1: keep everything
        (torch.tensor([0.04, 0.01, 0.6, 0.3, 0.05]), 0.92),
    ]

    def make(rng):
        V = int(rng.integers(2, 80))
        shape = (V,) if rng.random() < 0.3 else (int(rng.integers(1, 4)), V)
        logits = torch.from_numpy(rng.normal(0, float(rng.uniform(0.5, 4)), size=shape))
        return (torch.softmax(logits, -1).float(), float(rng.uniform(0.05, 0.99)))
    cases += seeded_cases(make, 30, seed=9)
    compare_with_reference(fn, reference_top_p_probs, cases, _compare_probs,
                           _label(fn, "top_p_filter"), diagnose=_diagnose_top_p)
    return "The nucleus grows when the model is unsure and shrinks when it is confident."


# ---- exercise 3: temperature -----------------------------------------------------------------


def reference_temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return next_token_probs(logits, temperature=temperature)


def _softmax_with_global_max(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The classic slip: exp(z - max) with the maximum of the whole tensor, not of each row.
    Right on one row; a row whose logits sit far below another row's underflows to 0 / 0."""
    scaled = logits.float() / temperature
    e = (scaled - scaled.max()).exp()
    return e / e.sum(-1, keepdim=True)


def _diagnose_temperature(got, expected, logits, temperature) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None
    if temperature == 0:
        return ("temperature 0 means greedy decoding: probability 1 for the largest logit "
                "and 0 for every other token (dividing by 0 gives inf and NaN)")
    got = got.detach().float()
    greedy = F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    if torch.equal(got, greedy):
        return (f"this is greedy decoding, but temperature {temperature:g} is small, not 0: "
                "only temperature == 0 puts all the mass on one token; close logits still "
                "share it at any positive temperature")
    if torch.allclose(got, _softmax_with_global_max(logits, temperature), atol=1e-5,
                      equal_nan=True):
        return ("the maximum subtracted before exp() is that of the whole tensor; subtract "
                "each row's own maximum (max(dim=-1, keepdim=True)), or use torch.softmax: "
                "a row far below another one underflows to 0 / 0 = NaN otherwise")
    plain = torch.softmax(logits.float(), -1)
    if torch.allclose(got, plain / temperature, atol=1e-5):
        return ("temperature was applied after the softmax; divide the *logits* by the "
                "temperature, then take the softmax")
    if torch.allclose(got, torch.softmax(logits.float() * temperature, -1), atol=1e-5):
        return "the logits were multiplied by the temperature; divide them by it"
    if torch.allclose(got, plain ** (1 / temperature), atol=1e-5):
        return "these do not sum to 1: normalise (a softmax does that for you)"
    if logits.dim() >= 2 and torch.allclose(
            got, torch.softmax(logits.float() / temperature, 0), atol=1e-5):
        return "the softmax runs over the wrong dimension; use the last one (dim=-1)"
    if torch.allclose(got, plain, atol=1e-5):
        return "the temperature was ignored"
    return None


def _rows_of_different_scale(temperature: float, rows: list[list[float]]) -> tuple:
    return (torch.tensor(rows), temperature)


def _temperature_case(rng) -> tuple:
    """Batches [B, V] or [B, T, V] whose rows sit at very different levels, at temperatures
    down to 0.01; scaled so that |logits / T| stays below 250 (float32 keeps every correct
    way of writing the softmax within the tolerance there)."""
    V = int(rng.integers(2, 80))
    shape = [V] if rng.random() < 0.2 else [int(rng.integers(2, 4)), V]
    if rng.random() < 0.3:
        shape.insert(1, int(rng.integers(2, 4)))
    logits = rng.normal(0, float(rng.uniform(0.5, 6)), size=shape)
    logits = logits + rng.uniform(-60, 60, size=shape[:-1] + [1])     # each row its own level
    temperature = float(rng.choice([0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 0.8, 1.0, 1.5, 3.0]))
    if temperature > 0:
        logits = logits * min(1.0, 250 * temperature / float(abs(logits).max()))
    return (torch.from_numpy(logits).float(), temperature)


@grader
def temperature_probs(fn):
    """Exercise 3: temperature_probs(logits, temperature) -> softmax(logits / T); T=0 greedy."""
    cases = [
        (torch.tensor([2.0, 1.0, 0.0]), 1.0),
        (torch.tensor([2.0, 1.0, 0.0]), 0.5),
        (torch.tensor([2.0, 1.0, 0.0]), 2.0),
        (torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]]), 0.7),
        (torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]]), 0.0),        # greedy
        (torch.tensor([[50.0, 49.0, -10.0]]), 0.05),                      # must not overflow
        (torch.tensor([0.3, -0.2, 0.1, 0.0]), 0.0),
        # Small temperatures, rows of very different levels, close logits in every row: a
        # global instead of a per-row maximum gives NaN, and "greedy below some cut-off" is
        # far off (the top two tokens share the mass at every positive temperature).
        _rows_of_different_scale(0.01, [[0.02, 0.015, 0.0], [2.0, 1.99, 1.95],
                                        [-1.0, -1.005, -1.1]]),
        _rows_of_different_scale(0.05, [[0.3, 0.29, 0.25, -0.1], [12.0, 11.9, 11.5, 3.0],
                                        [-8.0, -8.05, -9.0, -20.0]]),
        _rows_of_different_scale(0.1, [[0.5, 0.45, 0.2], [25.0, 24.9, 24.0],
                                       [-15.0, -15.1, -17.0]]),
        _rows_of_different_scale(0.2, [[1.0, 0.9, 0.5], [40.0, 39.8, 39.0],
                                       [-20.0, -20.3, -22.0]]),
        (torch.tensor([[[3.0, 2.9, 1.0], [-30.0, -30.1, -31.0]],          # [B, T, V]
                       [[0.0, 0.05, -0.2], [20.0, 19.7, 19.8]]]), 0.1),
    ]
    cases += seeded_cases(_temperature_case, 30, seed=10)

    def compare(got, expected, what):
        got = expect_tensor(got, expected.shape, what).float()
        if not torch.isfinite(got).all():
            raise Hint(f"{what}: the result contains NaN or inf (temperature 0 means greedy; "
                       "a tiny temperature must not overflow: the softmax subtracts the max)")
        expect_close(got, expected, what, atol=1e-5, rtol=1e-4)

    compare_with_reference(fn, reference_temperature_probs, cases, compare,
                           _label(fn, "temperature_probs"), diagnose=_diagnose_temperature)
    return ("Low temperatures pile the probability on the favourite, high ones spread it out; "
            "0 is the limit: greedy decoding.")
