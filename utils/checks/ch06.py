"""Graders for chapter 06 (masking): `from utils.checks import ch06 as check`.

Masks are boolean with True = "may attend", rows = queries, columns = keys (utils/masks.py).
"""

from __future__ import annotations

import math

import torch

from utils.checks.grading import Hint, attempt, compare_with_reference, grader, seeded_cases
from utils.masks import causal_mask as reference_causal
from utils.masks import masked_softmax as reference_softmax
from utils.masks import padding_mask as reference_padding
from utils.masks import sliding_window_mask as reference_window


def _as_bool_mask(got, what: str, shape: tuple[int, ...], exact: bool = False) -> torch.Tensor:
    """The learner's mask as a boolean tensor of `shape` (broadcast to it unless `exact`);
    numbers or the wrong shape -> Hint."""
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: expected a torch tensor, got {type(got).__name__}")
    if got.dtype != torch.bool:
        if got.is_floating_point() and torch.isinf(got).any():
            raise Hint(f"{what}: this is an additive mask (0 / -inf); return a boolean mask, "
                       "True where attending is allowed")
        raise Hint(f"{what}: expected a boolean mask (dtype torch.bool), got {got.dtype}. "
                   "Comparisons such as `j <= i` give booleans; or call `.bool()`")
    if exact and tuple(got.shape) != tuple(shape):
        raise Hint(f"{what}: expected shape {shape}, got {tuple(got.shape)}")
    try:
        return torch.broadcast_to(got, shape)
    except RuntimeError:
        raise Hint(f"{what}: expected shape {shape} (or one that broadcasts to it), "
                   f"got {tuple(got.shape)}") from None


def _first_difference(got: torch.Tensor, expected: torch.Tensor) -> str:
    where = (got != expected).nonzero()[0].tolist()
    return (f"entry {tuple(where)} is {bool(got[tuple(where)])} but should be "
            f"{bool(expected[tuple(where)])}")


# ---- exercise 1: the causal mask -------------------------------------------------------------


def _diagnose_causal(got: torch.Tensor, T: int) -> str | None:
    if T == 0:
        return None
    ones = torch.ones(T, T, dtype=torch.bool)
    if torch.equal(got, ~ones.tril()):
        return "True and False are swapped: True must mean 'may attend' (the past and present)"
    if torch.equal(got, ones.triu()):
        return ("this lets each query see the future (upper triangle) instead of the past: "
                "row = query, column = key, and key j is allowed when j <= i")
    if torch.equal(got, ones.tril(-1)):
        return ("the diagonal is masked: a token may attend to itself (otherwise the first "
                "query sees nothing at all). Use tril() without a negative diagonal")
    if T > 1 and torch.equal(got, ones.tril(1)):
        return "off by one: each query can see one future token. Use the diagonal j <= i"
    if torch.equal(got, ones):
        return "nothing is masked: query i must not see keys j > i"
    return None


@grader
def causal_mask(fn):
    """Exercise 1: causal_mask(T) -> boolean [T, T], True where key j <= query i."""
    for T in [4, 3, 7, 16, 2, 1, 0]:  # T = 1 last: there, several mistakes look alike
        what = f"causal_mask({T})"
        got = _as_bool_mask(attempt(fn, T), what, (T, T), exact=True)
        expected = reference_causal(T)
        if not torch.equal(got, expected):
            mistake = _diagnose_causal(got, T)
            raise Hint(f"{what}: {mistake or _first_difference(got, expected)}")
    return "Each query sees itself and everything before it, never after."


# ---- exercise 2: the padding mask ------------------------------------------------------------


def _diagnose_padding(got: torch.Tensor, lengths: list[int], T: int) -> str | None:
    B = len(lengths)
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]        # [B, T]
    full = torch.tensor([n == T for n in lengths])                           # no padding at all
    if full.any() and torch.equal(got, (real & ~full[:, None])[:, None, :].expand(B, T, T)):
        return ("a sequence without padding (length == T) has every key masked: a slice from "
                "the end such as `[-(T - n):]` is `[-0:]`, that is `[0:]`, the whole row, when "
                "T - n = 0. Slice from the start instead: `[n:]` is the padding")
    if torch.equal(got, ~real[:, None, :].expand(B, T, T)):
        return "True and False are swapped: True must mean 'a real token, may attend'"
    if torch.equal(got, real[:, :, None].expand(B, T, T)):
        return ("the mask is on the wrong axis: it hides padded *queries* (rows). Padding "
                "must be hidden as a *key* (columns), so mask[b, i, j] depends on j")
    if torch.equal(got, (torch.arange(T)[None, :] <= torch.tensor(lengths)[:, None])[:, None, :]
                   .expand(B, T, T)):
        return "off by one: a sequence of length n has real tokens at positions 0 .. n-1"
    if torch.equal(got, (real[:, None, :] & real[:, :, None])) and not torch.equal(
            got, real[:, None, :].expand(B, T, T)):
        return ("you also masked the padded queries (rows): their rows then see nothing. Mask "
                "only the keys (columns); the padded queries' outputs are ignored anyway")
    return None


@grader
def padding_mask(fn):
    """Exercise 2: padding_mask(lengths, T) -> boolean [B, T, T] (or [B, 1, T]), True where key
    j is a real token of sequence b (right padding: real tokens first)."""
    def make(rng):
        B, T = int(rng.integers(1, 6)), int(rng.integers(1, 12))
        return (rng.integers(0, T + 1, size=B).tolist(), T)
    cases = [([3, 1], 4), ([2, 2], 2), ([4, 2, 1], 5), ([1], 1), ([0, 3], 3), ([5, 2], 8)]
    cases += seeded_cases(make, 20, seed=6)
    for lengths, T in cases:
        what = f"padding_mask({lengths}, {T})"
        B = len(lengths)
        got = _as_bool_mask(attempt(fn, list(lengths), T), what, (B, T, T))
        expected = reference_padding(lengths, T).expand(B, T, T)
        if not torch.equal(got, expected):
            mistake = _diagnose_padding(got, lengths, T)
            raise Hint(f"{what}: {mistake or _first_difference(got, expected)}")
    return "Padded keys are invisible to every query; real tokens see all real tokens."


# ---- exercise 3: applying a mask to scores ---------------------------------------------------


def _compare_weights(got, expected, what: str) -> None:
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: expected a torch tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise Hint(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    if torch.isnan(got).any():
        empty_rows = expected.sum(-1) == 0                  # rows with no allowed key
        if torch.isnan(got[~empty_rows]).any():
            raise Hint(f"{what}: the result contains NaN in rows that do have allowed keys. "
                       "exp() of a score above ~88 overflows float32 to inf (inf/inf = NaN) "
                       "unless the row's largest allowed score is subtracted first, as "
                       "torch.softmax does; and 0 * -inf is NaN, so fill masked scores with "
                       "masked_fill rather than multiplying the mask by -inf")
        raise Hint(f"{what}: the result contains NaN. A row whose every key is masked is "
                   "softmax(-inf, ..., -inf) = 0/0; give such rows all-zero weights")
    if not torch.allclose(got.double(), expected.double(), atol=1e-5):
        worst = (got.double() - expected.double()).abs().max().item()
        raise Hint(f"{what}: weights differ from the expected ones by up to {worst:.3g}")


def _diagnose_softmax(got, expected, scores, mask) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or torch.isnan(got).any():
        return None
    mask = mask.expand_as(scores)                         # the mask may broadcast
    has_key = mask.any(-1)
    if torch.allclose(got, torch.softmax(scores, -1), atol=1e-5):
        return "the mask was not applied: masked keys still get weight"
    inverted = reference_softmax(scores, ~mask)
    if torch.allclose(got, inverted, atol=1e-5):
        return "the mask is inverted: True means 'may attend', so fill -inf where it is False"
    # (a zero row is checked before 'after the softmax', which can give one too)
    if (got.sum(-1)[has_key] < 1e-6).any():
        return ("a row that has allowed keys came out all zeros. If you subtract a maximum "
                "before exp(), take it over the allowed keys only: a masked score can be far "
                "larger and make every exp() underflow to 0. (0 * -inf is NaN, too: turning "
                "NaN into zeros hides a mask multiplied by -inf)")
    if torch.allclose(got, torch.softmax(scores, -1) * mask, atol=1e-5):
        return ("the mask was applied after the softmax: the remaining weights no longer sum "
                "to 1. Set masked scores to -inf *before* the softmax")
    if torch.allclose(got, torch.softmax(scores * mask, -1), atol=1e-5):
        return ("multiplying the scores by the mask sets them to 0, not -inf, and exp(0) = 1 "
                "still gives masked keys weight. Use masked_fill with -inf")
    if (~has_key).any() and torch.allclose(got[has_key], expected[has_key], atol=1e-5):
        return ("rows whose every key is masked must get all-zero weights (they attend to "
                "nothing); a large negative number instead of -inf gives them uniform weights")
    if torch.allclose(got, torch.softmax(scores.masked_fill(~mask, -math.inf), -2).nan_to_num(0),
                      atol=1e-5):
        return "the softmax runs over the wrong axis: normalise over keys (dim=-1)"
    if (got.abs() * ~mask).max() > 1e-5:
        return ("masked keys get weight. A finite penalty (adding -10000, say) leaks when a "
                "masked score is larger than the penalty; masked_fill the masked scores with "
                "-inf, which no score outweighs")
    return None


@grader
def masked_softmax(fn):
    """Exercise 3: masked_softmax(scores, mask) -> weights: -inf where the mask is False, a
    softmax over keys, and all-zero rows where no key is allowed (no NaN)."""
    def make(rng):
        B, T, S = int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 7))
        scores = torch.from_numpy(rng.normal(0, 3, size=(B, T, S))).float()
        mask = torch.from_numpy(rng.random((B, T, S)) < 0.6)
        mask[:, :, 0] |= torch.from_numpy(rng.random((B, T)) < 0.7)   # most rows keep a key
        return (scores, mask)
    g = torch.Generator().manual_seed(0)
    square = torch.randn(4, 4, generator=g)
    empty_row = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    cases = [(square, reference_causal(4)),
             (torch.randn(3, 3, generator=g), empty_row),
             (torch.randn(2, 5, 5, generator=g) * 20, reference_causal(5).expand(2, 5, 5).clone()),
             # the largest score masked: a max taken over all keys leaves 0/0 for the rest
             (torch.tensor([[1000.0, -1000.0, 0.0]]), torch.tensor([[False, True, True]])),
             # large *allowed* scores: exp(100) overflows float32 unless the max is subtracted
             (torch.tensor([[100.0, 99.0, -5.0, 3.0], [-2.0, 95.0, 90.0, 0.0]]),
              torch.tensor([[True, True, False, True], [False, True, True, True]])),
             # a masked score larger than a finite penalty such as -1e4
             (torch.tensor([[10003.0, 1.0, 0.0], [3.0, -1.0, 5e4]]),
              torch.tensor([[False, True, True], [True, True, False]]))]
    # masks that broadcast, as the chapter uses them: one [T, S] causal mask for
    # [B, h, T, S] scores; padding masks [B, 1, S] and [B, 1, 1, S] (with a length-0 row)
    broadcast = [(torch.randn(2, 3, 4, 4, generator=g) * 3, reference_causal(4)),
                 (torch.randn(3, 5, 5, generator=g) * 3, reference_padding([5, 2, 0], 5)),
                 (torch.randn(2, 2, 3, 4, generator=g) * 3, reference_padding([1, 3], 4)[:, None])]
    for group in (cases, broadcast, seeded_cases(make, 20, seed=6)):
        try:
            compare_with_reference(fn, reference_softmax, group, _compare_weights,
                                   "masked_softmax", diagnose=_diagnose_softmax)
        except Hint as hint:
            if group is broadcast and "raised" in str(hint):
                raise Hint(f"{hint} — the mask need not have the scores' shape, only one that "
                           "broadcasts to it (here a [T, S] or [B, 1, S] mask for larger "
                           "scores): masked_fill and torch.where broadcast, boolean indexing "
                           "such as scores[~mask] does not") from None
            raise
    return "Mask first, softmax second, and an empty row attends to nothing."


# ---- exercise 4: the sliding-window mask -----------------------------------------------------


@grader
def sliding_window_mask(fn):
    """Exercise 4: sliding_window_mask(T, window) -> boolean [T, T]: query i sees keys
    i - window + 1 ... i (itself and the window - 1 before it)."""
    cases = [(5, 2), (6, 3), (4, 1), (4, 4), (3, 10), (8, 5), (1, 1), (12, 4)]
    cases += seeded_cases(lambda rng: (int(rng.integers(1, 16)), int(rng.integers(1, 18))),
                          12, seed=6)
    for T, window in cases:
        what = f"sliding_window_mask({T}, window={window})"
        got = _as_bool_mask(attempt(fn, T, window), what, (T, T), exact=True)
        expected = reference_window(T, window)
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            mistake = "True and False are swapped: True must mean 'may attend'"
        elif torch.equal(got, reference_window(T, window + 1)):
            mistake = ("off by one: each query sees window + 1 keys. `window` counts the "
                       "query itself, so keys i - window + 1 ... i")
        elif window > 1 and torch.equal(got, reference_window(T, window - 1)):
            mistake = "off by one: each query sees only window - 1 keys; it should see `window`"
        elif torch.equal(got, reference_window(T, window, causal=False)) or (
                got & ~reference_causal(T)).any():
            mistake = "future keys are visible: the window must also be causal (j <= i)"
        elif torch.equal(got, reference_causal(T)):
            mistake = "this is the plain causal mask: keys more than window - 1 back must be hidden"
        else:
            mistake = _first_difference(got, expected)
        raise Hint(f"{what}: {mistake}")
    return "A causal window: memory and compute per query no longer grow with the sequence."

