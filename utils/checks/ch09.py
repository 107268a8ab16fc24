"""Graders for chapter 09 (efficiency): `from utils.checks import ch09 as check`.

Keys and values are [B, h, T, d] tensors (batch, K/V heads, tokens, head size), as in
`utils.attention.KVCache`; partial softmax results follow `utils.tiled_attention`:
m and l are [..., T, 1], o is [..., T, d].
"""

from __future__ import annotations

import math

import torch

from utils.attention import KVCache
from utils.checks.grading import (
    Hint,
    attempt,
    compare_with_reference,
    expect_number,
    expect_tensor,
    expect_value,
    grader,
    require_value,
    seeded_cases,
)
from utils.kv_memory import GIB, kv_cache_bytes
from utils.tiled_attention import online_softmax_merge as reference_merge


def _parts(got, n: int, names: str, what: str) -> tuple:
    if not isinstance(got, (tuple, list)) or len(got) != n:
        kind = type(got).__name__ + (f" of length {len(got)}" if isinstance(got, (tuple, list))
                                     else "")
        raise Hint(f"{what}: return the tuple ({names}), got a {kind}")
    return tuple(got)


# ---- exercise 1: one KV-cache update step ----------------------------------------------------


def reference_update(cache_k, cache_v, k, v):
    """The library's semantics: `KVCache.update` on a one-layer cache holding (cache_k, cache_v)."""
    cache = KVCache(n_layer=1)
    cache.keys[0], cache.values[0] = cache_k, cache_v
    return cache.update(0, k, v)


def _new_kv(B: int, h: int, T: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [B, h, T, d] made as the model makes them: a fused projection of [B, T, h*d]
    vectors, viewed as heads and transposed (so they are not contiguous)."""
    g = torch.Generator().manual_seed(seed)
    fused = torch.randn(B, T, 2 * h * d, generator=g)
    k, v = fused.split(h * d, dim=-1)
    return (k.view(B, T, h, d).transpose(1, 2), v.view(B, T, h, d).transpose(1, 2))


def _update_case(B, h, T_cached, T_new, d, seed):
    cache_k, cache_v = (None, None) if T_cached == 0 else (
        t.contiguous() for t in _new_kv(B, h, T_cached, d, seed))
    return (cache_k, cache_v, *_new_kv(B, h, T_new, d, seed + 1000))


def _compare_update(got, expected, what: str) -> None:
    gk, gv = _parts(got, 2, "keys, values", what)
    for name, g, e in (("keys", gk, expected[0]), ("values", gv, expected[1])):
        g = expect_tensor(g, e.shape, f"{what} {name}")
        if not torch.equal(g, e):
            raise Hint(f"{what}: the {name} have the right shape but not the right entries")


def _diagnose_update(got, expected, cache_k, cache_v, k, v) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return None
    gk, gv = got
    if not isinstance(gk, torch.Tensor) or not isinstance(gv, torch.Tensor):
        return None
    gk, gv = gk.detach(), gv.detach()
    if cache_k is not None:
        if gk.shape == k.shape and torch.equal(gk, k):
            return ("only the new token came back: the cache must hold the old tokens *and* "
                    "the new one")
        for dim, name in ((1, "dim=1 (the heads)"), (-1, "dim=-1 (the features of a head)"),
                          (0, "dim=0 (the batch)")):
            try:
                wrong_axis = torch.cat([cache_k, k], dim=dim)
            except RuntimeError:          # sizes differ along another axis: not this mistake
                continue
            if gk.shape == wrong_axis.shape and torch.equal(gk, wrong_axis):
                return (f"concatenated along {name}; tokens are dim 2 (-2) of [B, h, T, d], "
                        "so the cache grows along dim=-2")
        if gk.shape == expected[0].shape and torch.equal(gk, torch.cat([k, cache_k], dim=-2)):
            return ("the new token is placed before the old ones; the cache keeps tokens in "
                    "order, so append it after: torch.cat([cache_k, k], dim=-2)")
    if gk.shape == expected[1].shape and torch.equal(gk, expected[1]) and torch.equal(
            gv, expected[0]):
        return "keys and values are swapped: return (keys, values)"
    if gk.dim() == expected[0].dim() - 1:
        return "a dimension is missing: keep all four [B, h, T, d], the batch included"
    return None


def _explain_update_error(hint: Hint) -> Hint:
    text = str(hint)
    if "NoneType" in text:
        return Hint(f"{text} — at the first step there is no cache yet (cache_k and cache_v are "
                    "None): return the new k, v as they are")
    if "Sizes of tensors must match" in text:
        return Hint(f"{text} — the tensors were concatenated along a dimension where their "
                    "sizes differ: tokens are dim 2 (-2) of [B, h, T, d]")
    return hint


@grader
def kv_cache_update(fn):
    """Exercise 1: kv_cache_update(cache_k, cache_v, k, v) -> (keys, values) of all tokens."""
    sizes = [  # (B, h, cached tokens, new tokens, d)
        (1, 2, 0, 5, 4),        # first step: no cache yet (prefill of a 5-token prompt)
        (2, 3, 4, 1, 4),        # a decode step
        (1, 1, 1, 1, 1),        # T = 1: concatenating on the wrong axis runs silently here
        (2, 4, 1, 1, 3),
        (3, 2, 2, 1, 2),        # h = T = d, batch > 1
        (1, 4, 3, 1, 4),
        (2, 2, 0, 1, 8),        # first step with a one-token prompt
    ]
    sizes += seeded_cases(lambda rng: (int(rng.integers(1, 4)), int(rng.choice([1, 2, 4, 8])),
                                       int(rng.choice([0, 1, 7, 31, 64])),
                                       1 if rng.random() < 0.8 else int(rng.integers(2, 6)),
                                       int(rng.choice([2, 8, 16, 32]))), n=20, seed=91)
    cases = [_update_case(*size, seed=i) for i, size in enumerate(sizes)]
    try:
        compare_with_reference(fn, reference_update, cases, _compare_update, "kv_cache_update",
                               diagnose=_diagnose_update)
        # and as the model uses it: a prefill, then decode steps fed back into the function
        prompt_k, prompt_v = _new_kv(2, 2, 6, 4, seed=7)
        got, want = (None, None), (None, None)
        for step in range(4):
            k, v = (prompt_k, prompt_v) if step == 0 else _new_kv(2, 2, 1, 4, seed=70 + step)
            got = attempt(fn, *got, k, v)
            want = reference_update(*want, k, v)
            _compare_update(got, want, f"after a 6-token prefill and {step} decode steps, "
                                       "the cache")
    except Hint as hint:
        raise _explain_update_error(hint) from None
    return ("Each step adds one token's keys and values per layer; nothing already cached is "
            "ever recomputed.")


# ---- exercise 2: the online-softmax merge ----------------------------------------------------


def _part(scores: torch.Tensor, v: torch.Tensor):
    """(m, l, o) of one block of keys; a row whose scores are all -inf is empty: (-inf, 0, 0)."""
    m = scores.amax(-1, keepdim=True)
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    p = torch.exp(scores - m_safe)
    return m, p.sum(-1, keepdim=True), p @ v


def _merge_case(shape, S1, S2, d, scale1, scale2, seed, causal_empty=False, all_empty=False):
    """Two partial results for the same queries over disjoint key blocks of sizes S1, S2."""
    g = torch.Generator().manual_seed(seed)
    *lead, T = shape
    s1 = torch.randn(*lead, T, S1, generator=g, dtype=torch.float64) * scale1
    s2 = torch.randn(*lead, T, S2, generator=g, dtype=torch.float64) * scale2 + 2 * scale2
    v1 = torch.randn(*lead, S1, d, generator=g, dtype=torch.float64)
    v2 = torch.randn(*lead, S2, d, generator=g, dtype=torch.float64)
    if causal_empty:        # the first rows saw no key of the second block (causal mask)
        s2[..., : T // 2 + 1, :] = float("-inf")
    if all_empty:           # and the first row saw no key at all
        s1[..., 0, :] = float("-inf")
        s2[..., 0, :] = float("-inf")
    return (*_part(s1, v1), *_part(s2, v2))


def _compare_merge(got, expected, what: str) -> None:
    parts = _parts(got, 3, "m, l, o", what)
    for name, g, e in zip("mlo", parts, expected, strict=True):
        g = expect_tensor(g, e.shape, f"{what} {name}").double()
        if torch.isnan(g).any():
            rows = torch.isnan(g).flatten(0, -2).any(-1).nonzero().flatten().tolist()
            raise Hint(f"{what}: {name} has NaN in rows {rows[:5]} — rows where a part saw no "
                       "key have m = -inf, and exp(-inf - (-inf)) is NaN: when both maxima are "
                       "-inf, subtract 0 instead")
        same = (torch.equal(torch.isneginf(g), torch.isneginf(e))
                and torch.allclose(g.nan_to_num(neginf=0.0), e.nan_to_num(neginf=0.0),
                                   rtol=1e-5, atol=1e-8))
        if not same:
            worst = (g.nan_to_num(neginf=0.0) - e.nan_to_num(neginf=0.0)).abs().max().item()
            raise Hint(f"{what}: {name} is wrong (largest difference {worst:.3g})")


def _diagnose_merge(got, expected, m1, l1, o1, m2, l2, o2) -> str | None:
    try:
        gm, gl, go = (t.detach().double() for t in got)
    except (TypeError, ValueError, AttributeError):
        return None
    m, total, o = expected
    close = lambda a, b: (a.shape == b.shape and bool(torch.isfinite(a).all())  # noqa: E731
                          and torch.allclose(a, b.nan_to_num(neginf=0.0), rtol=1e-5, atol=1e-8))
    finite = torch.isfinite(m).all()
    if finite and close(gm, torch.minimum(m1, m2)):
        return ("m is the smaller maximum: the merged m is max(m1, m2), so that every "
                "exponent exp(s - m) stays <= 1")
    if close(gl, total) and close(go, o / total):
        return ("o is already divided by l: keep o unnormalised (a sum of exp(s - m) · v); "
                "the division by l happens once, after the last block")
    if gm.shape == m.shape and close(gm, m) and finite:
        scale2 = torch.exp(m2 - m)
        if close(gl, l1 + scale2 * l2) or close(gl, l1 + l2):
            return ("l1 was not rescaled: it was summed relative to m1, so it must be "
                    "multiplied by exp(m1 - m) before adding (the same for l2 with m2)")
        if close(go, o) and not close(gl, total):
            return ("o is rescaled but l is not: l needs exactly the same factors "
                    "exp(m1 - m) and exp(m2 - m) as o")
        if close(gl, total) and not close(go, o):
            return "l is right but o is not: o needs the same factors exp(m1 - m), exp(m2 - m)"
    return None


@grader
def online_softmax_merge(fn):
    """Exercise 2: merge(m1, l1, o1, m2, l2, o2) -> (m, l, o) over both blocks of keys."""
    cases = [
        _merge_case((1, 3), 2, 3, 2, 1.0, 1.0, seed=1),
        _merge_case((2, 4), 4, 4, 3, 0.1, 5.0, seed=2),     # the second block dominates
        _merge_case((1, 2, 5), 3, 1, 4, 8.0, 0.2, seed=3),  # rows where each block wins
        _merge_case((2, 2, 4), 4, 4, 2, 1.0, 1.0, seed=4, causal_empty=True),
        _merge_case((1, 1, 4), 2, 2, 3, 1.0, 1.0, seed=5, causal_empty=True, all_empty=True),
        _merge_case((1, 6), 5, 5, 4, 300.0, 300.0, seed=6),   # exp(score) alone would overflow
    ]
    cases += seeded_cases(lambda rng: _merge_case(
        (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 17))),
        int(rng.integers(1, 33)), int(rng.integers(1, 33)), int(rng.choice([1, 8, 16, 32])),
        float(rng.choice([0.1, 1.0, 4.0, 30.0])), float(rng.choice([0.1, 1.0, 4.0, 30.0])),
        seed=int(rng.integers(1 << 30)), causal_empty=bool(rng.random() < 0.3)), n=20, seed=92)
    compare_with_reference(fn, reference_merge, cases, _compare_merge, "merge",
                           diagnose=_diagnose_merge)
    return ("Partial softmaxes combine exactly, in any order: the heart of FlashAttention and "
            "ring attention.")


# ---- exercise 3: the KV-memory formula ------------------------------------------------------


def reference_kv_cache_gib(n_layer, n_head, n_kv_head, d_head, seq_len, batch, bytes_per_value):
    return kv_cache_bytes(n_layer, n_kv_head, d_head, seq_len, batch, bytes_per_value) / GIB


def _diagnose_gib(got, expected, n_layer, n_head, n_kv_head, d_head, seq_len, batch,
                  bytes_per_value) -> str | None:
    try:
        got = float(got)
    except (TypeError, ValueError):
        return None
    if not expected or not math.isfinite(got):
        return None
    ratio = got / expected
    known = [
        (0.5, "half the answer: the cache holds a key AND a value per head, a factor 2"),
        (n_head / n_kv_head, "n_head was used where the cache has n_kv_head heads: query "
                             "heads that share a K/V head share its cache"),
        (8, "8 times too big: that counts bits; a value takes bytes_per_value bytes"),
        (GIB / 1e9, "divided by 1e9: that gives GB; a GiB is 2**30 = 1,073,741,824 bytes"),
        (GIB, "this is the number of bytes: divide by 2**30 for GiB"),
        (1024, "divided by 2**20 (MiB); a GiB is 2**30 bytes"),
        (1 / batch, "the batch was ignored: every sequence in the batch has its own cache"),
        (1 / bytes_per_value, "bytes_per_value was ignored"),
        (1 / n_layer, "only one layer counted: every layer keeps its own K and V"),
    ]
    for factor, message in known:
        if factor != 1 and math.isclose(ratio, factor, rel_tol=1e-6):
            return message
    return None


@grader
def kv_cache_gib(fn):
    """Exercise 3: kv_cache_gib(n_layer, n_head, n_kv_head, d_head, seq_len, batch,
    bytes_per_value) -> the KV cache in GiB."""
    cases = [
        (32, 32, 8, 128, 8192, 1, 2),        # Llama 3 8B at 8K in bf16: exactly 1 GiB
        (12, 12, 12, 64, 1024, 1, 2),        # GPT-2 small: MHA
        (32, 32, 1, 128, 4096, 4, 2),        # MQA, a batch of 4
        (80, 64, 8, 128, 131072, 1, 1),      # fp8
        (6, 4, 4, 32, 128, 1, 4),            # our model in fp32
        (4, 8, 2, 16, 0, 3, 2),              # nothing cached yet
        (61, 16, 16, 128, 1000, 2, 0.5),     # a 4-bit cache
    ]

    def make(rng):
        n_head = int(rng.choice([4, 8, 12, 16, 32, 64, 128]))
        n_kv = int(rng.choice([d for d in (1, 2, 4, 8, n_head) if n_head % d == 0]))
        return (int(rng.integers(1, 130)), n_head, n_kv, int(rng.choice([32, 64, 128, 256])),
                int(rng.integers(1, 200_000)), int(rng.integers(1, 65)),
                float(rng.choice([4, 2, 1, 0.5])))

    cases += seeded_cases(make, n=25, seed=93)

    def compare(got, expected, what):
        number = expect_number(got, what)
        if not math.isclose(number, expected, rel_tol=1e-6, abs_tol=1e-12):
            direction = "too big" if number > expected else "too small"
            raise Hint(f"{what} = {number:.6g} is {direction}")

    compare_with_reference(fn, reference_kv_cache_gib, cases, compare, "kv_cache_gib",
                           diagnose=_diagnose_gib)
    return "2 x layers x K/V heads x d_head x tokens x batch x bytes: the cache is that simple."


# ---- exercise 4: a value ---------------------------------------------------------------------

LLAMA_70B_GIB = kv_cache_bytes(80, 8, 128, 131072, 1, 2) / GIB


@grader
def llama_70b_cache(answer):
    """Exercise 4: Llama 3.1 70B's KV cache for one 128K-token sequence in bf16, in GiB."""
    value = expect_number(require_value(answer, "llama_70b_gib"), "llama_70b_gib")
    hints = [(LLAMA_70B_GIB * GIB / 1e9, "that is in GB (divided by 1e9); a GiB is 2**30 bytes"),
             (LLAMA_70B_GIB * 8, "that is what 64 K/V heads would need: Llama 3.1 70B has "
                                 "8 K/V heads shared by its 64 query heads"),
             (LLAMA_70B_GIB / 2, "half of it: count a key and a value"),
             (LLAMA_70B_GIB * 2, "twice too big: bf16 takes 2 bytes per value, not 4")]
    for wrong, message in hints:
        if math.isclose(value, wrong, rel_tol=0.01):
            raise Hint(f"`llama_70b_gib` = {value:g}: {message}")
    expect_value(value, LLAMA_70B_GIB, "llama_70b_gib", tol=0.05)
    return ("For one sequence the cache is already a third of the 132 GiB of bf16 weights; a "
            "batch of four at full context outgrows them.")
