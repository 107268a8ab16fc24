"""Chapter 09 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.checks import ch09 as check
from utils.kv_memory import GIB, kv_cache_bytes
from utils.tiled_attention import online_softmax_merge

# ---- exercise 1: one KV-cache update step ----------------------------------------------------


def kv_cache_update(cache_k, cache_v, k, v):
    if cache_k is None:
        return k, v
    return torch.cat([cache_k, k], dim=-2), torch.cat([cache_v, v], dim=-2)


def test_kv_update_accepts_solutions():
    assert_accepts(check.kv_cache_update, kv_cache_update)
    assert_accepts(check.kv_cache_update, check.reference_update)

    def with_clone(cache_k, cache_v, k, v):         # copying the first step is fine too
        if cache_k is None:
            return k.clone(), v.clone()
        return torch.cat((cache_k, k), 2), torch.cat((cache_v, v), 2)
    assert_accepts(check.kv_cache_update, with_clone)
    assert_not_attempted(check.kv_cache_update, stub)


def _cat(dim, new_first=False):
    def update(cache_k, cache_v, k, v):
        if cache_k is None:
            return k, v
        pair_k, pair_v = ([k, cache_k], [v, cache_v]) if new_first else ([cache_k, k], [cache_v, v])
        return torch.cat(pair_k, dim=dim), torch.cat(pair_v, dim=dim)
    return update


def test_kv_update_rejects_classic_mistakes():
    assert "dim 2" in assert_rejects(check.kv_cache_update, _cat(1))
    assert "dim 2" in assert_rejects(check.kv_cache_update, _cat(-1))
    assert "before the old" in assert_rejects(check.kv_cache_update, _cat(2, new_first=True))

    def ignores_none(cache_k, cache_v, k, v):
        return torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
    assert "first step" in assert_rejects(check.kv_cache_update, ignores_none)

    def only_new(cache_k, cache_v, k, v):
        return k, v
    assert "only the new token" in assert_rejects(check.kv_cache_update, only_new)

    def swapped(cache_k, cache_v, k, v):
        k_all, v_all = kv_cache_update(cache_k, cache_v, k, v)
        return v_all, k_all
    assert "swapped" in assert_rejects(check.kv_cache_update, swapped)

    def loses_batch(cache_k, cache_v, k, v):          # written for batch 1 only
        k_all, v_all = kv_cache_update(cache_k, cache_v, k, v)
        return k_all[0], v_all[0]
    assert_rejects(check.kv_cache_update, loses_batch)

    def keys_twice(cache_k, cache_v, k, v):
        k_all, _ = kv_cache_update(cache_k, cache_v, k, v)
        return k_all, k_all
    assert "values" in assert_rejects(check.kv_cache_update, keys_twice)

    def in_place(cache_k, cache_v, k, v):             # "updates" the new token in place
        if cache_k is None:
            return k, v
        k.mul_(1.0).add_(0.5)
        return torch.cat([cache_k, k], 2), torch.cat([cache_v, v], 2)
    assert "changed its input" in assert_rejects(check.kv_cache_update, in_place)

    def returns_list(cache_k, cache_v, k, v):
        return [kv_cache_update(cache_k, cache_v, k, v)[0]]
    assert "tuple" in assert_rejects(check.kv_cache_update, returns_list)

    def python_lists(cache_k, cache_v, k, v):          # lists of numbers, not tensors
        return tuple(t.tolist() for t in kv_cache_update(cache_k, cache_v, k, v))
    assert "tensor" in assert_rejects(check.kv_cache_update, python_lists)


def test_kv_update_grader_needs_more_than_its_first_case():
    # The grader also replays a prefill and decode steps (batch 2, 2 heads of 4) after its
    # cases, so an answer right only on the first call would be caught there alone. This one
    # is right on the first case AND on that replay, and wrong elsewhere (3 heads, batch 1...):
    # only the grader's other cases can reject it.
    def right_on_first_case_and_replay(cache_k, cache_v, k, v):
        if cache_k is None or (tuple(k.shape[:2]) == (2, 2) and k.size(-1) == 4):
            return kv_cache_update(cache_k, cache_v, k, v)
        return _cat(2, new_first=True)(cache_k, cache_v, k, v)
    assert "before the old" in assert_rejects(check.kv_cache_update,
                                              right_on_first_case_and_replay)


# ---- exercise 2: the online-softmax merge ----------------------------------------------------


def merge(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    a1, a2 = torch.exp(m1 - m_safe), torch.exp(m2 - m_safe)
    return m, a1 * l1 + a2 * l2, a1 * o1 + a2 * o2


def test_merge_accepts_solutions():
    assert_accepts(check.online_softmax_merge, merge)
    assert_accepts(check.online_softmax_merge, online_softmax_merge)
    assert_not_attempted(check.online_softmax_merge, stub)


def _merge_variant(max_fn=torch.maximum, scale_l1=True, scale_l2=True, scale_o=True,
                   normalise=False, safe=True):
    def wrong(m1, l1, o1, m2, l2, o2):
        m = max_fn(m1, m2)
        m_ref = torch.where(torch.isinf(m), torch.zeros_like(m), m) if safe else m
        a1, a2 = torch.exp(m1 - m_ref), torch.exp(m2 - m_ref)
        total = (a1 if scale_l1 else 1) * l1 + (a2 if scale_l2 else 1) * l2
        o = a1 * o1 + a2 * o2 if scale_o else o1 + o2
        return m, total, o / total if normalise else o
    return wrong


def test_merge_rejects_classic_mistakes():
    old_sum_not_rescaled = _merge_variant(scale_l1=False)
    assert "not rescaled" in assert_rejects(check.online_softmax_merge, old_sum_not_rescaled)
    neither_sum_rescaled = _merge_variant(scale_l1=False, scale_l2=False)
    assert "not rescaled" in assert_rejects(check.online_softmax_merge, neither_sum_rescaled)
    minimum = _merge_variant(max_fn=torch.minimum)
    assert "smaller maximum" in assert_rejects(check.online_softmax_merge, minimum)
    early = _merge_variant(normalise=True)
    assert "already divided" in assert_rejects(check.online_softmax_merge, early)
    nan_rows = _merge_variant(safe=False)
    assert "NaN" in assert_rejects(check.online_softmax_merge, nan_rows)
    o_not_rescaled = _merge_variant(scale_o=False)
    assert "o needs" in assert_rejects(check.online_softmax_merge, o_not_rescaled)

    def plain_sums(m1, l1, o1, m2, l2, o2):             # as if both used the same maximum
        return torch.maximum(m1, m2), l1 + l2, o1 + o2
    assert_rejects(check.online_softmax_merge, plain_sums)

    def returns_output(m1, l1, o1, m2, l2, o2):          # the finished attention, not (m, l, o)
        m, total, o = merge(m1, l1, o1, m2, l2, o2)
        return o / total
    assert "tuple" in assert_rejects(check.online_softmax_merge, returns_output)

    def python_lists(m1, l1, o1, m2, l2, o2):
        return tuple(t.tolist() for t in merge(m1, l1, o1, m2, l2, o2))
    assert "tensor" in assert_rejects(check.online_softmax_merge, python_lists)

    def squeezed(m1, l1, o1, m2, l2, o2):                # m and l as [..., T], not [..., T, 1]
        m, total, o = merge(m1, l1, o1, m2, l2, o2)
        return m.squeeze(-1), total.squeeze(-1), o
    assert_rejects(check.online_softmax_merge, squeezed)


def test_merge_grader_needs_more_than_its_first_case():
    assert_rejects(check.online_softmax_merge,
                   right_on_first_call_only(merge, _merge_variant(scale_l1=False)))


# ---- exercise 3: the KV-memory formula ------------------------------------------------------


def kv_cache_gib(n_layer, n_head, n_kv_head, d_head, seq_len, batch, bytes_per_value):
    return 2 * n_layer * n_kv_head * d_head * seq_len * batch * bytes_per_value / 2**30


def test_kv_gib_accepts_solutions():
    assert_accepts(check.kv_cache_gib, kv_cache_gib)
    assert_accepts(check.kv_cache_gib, lambda L, h, kv, d, T, B, b: kv_cache_bytes(
        L, kv, d, T, B, b) / GIB)
    assert_not_attempted(check.kv_cache_gib, stub)


def test_kv_gib_rejects_classic_mistakes():
    def no_two(L, h, kv, d, T, B, b):
        return L * kv * d * T * B * b / 2**30
    assert "a key AND a value" in assert_rejects(check.kv_cache_gib, no_two)

    def query_heads(L, h, kv, d, T, B, b):
        return 2 * L * h * d * T * B * b / 2**30
    assert "n_kv_head" in assert_rejects(check.kv_cache_gib, query_heads)

    def bits(L, h, kv, d, T, B, b):
        return 2 * L * kv * d * T * B * b * 8 / 2**30
    assert "bits" in assert_rejects(check.kv_cache_gib, bits)

    def gigabytes(L, h, kv, d, T, B, b):
        return 2 * L * kv * d * T * B * b / 1e9
    assert "1e9" in assert_rejects(check.kv_cache_gib, gigabytes)

    def no_batch(L, h, kv, d, T, B, b):
        return 2 * L * kv * d * T * b / 2**30
    assert "batch" in assert_rejects(check.kv_cache_gib, no_batch)

    def one_layer(L, h, kv, d, T, B, b):
        return 2 * kv * d * T * B * b / 2**30
    assert "one layer" in assert_rejects(check.kv_cache_gib, one_layer)

    def d_model_per_kv_head(L, h, kv, d, T, B, b):  # d_head taken as (h*d) / kv
        return 2 * L * kv * (h * d // kv) * T * B * b / 2**30
    assert_rejects(check.kv_cache_gib, d_model_per_kv_head)

    def rounded(L, h, kv, d, T, B, b):
        return round(kv_cache_gib(L, h, kv, d, T, B, b), 2)
    assert_rejects(check.kv_cache_gib, rounded)

    def as_text(L, h, kv, d, T, B, b):
        return f"{kv_cache_gib(L, h, kv, d, T, B, b):.3f} GiB"
    assert "number" in assert_rejects(check.kv_cache_gib, as_text)


def test_kv_gib_grader_needs_more_than_its_first_case():
    # Llama 3 8B (the first case) has batch 1 and 2 bytes per value: ignoring the batch and
    # hard-coding bf16 is right there and wrong on the other cases
    def batch_one_bf16(L, h, kv, d, T, B, b):
        return 2 * L * kv * d * T * 2 / 2**30
    assert_rejects(check.kv_cache_gib, right_on_first_call_only(kv_cache_gib, batch_one_bf16))


# ---- exercise 4: Llama 3.1 70B at 128K -------------------------------------------------------
# (a value exercise: one number checked once, so there is no list of cases to thin)


def test_llama_value():
    answer = 2 * 80 * 8 * 128 * 131072 * 2 / 2**30           # computed by hand: 40 GiB
    assert answer == 40
    assert_accepts(check.llama_70b_cache, answer)
    assert_accepts(check.llama_70b_cache, 40.02)
    assert_not_attempted(check.llama_70b_cache, None)
    assert "GB" in assert_rejects(check.llama_70b_cache, answer * 2**30 / 1e9)
    assert "64 K/V heads" in assert_rejects(check.llama_70b_cache, answer * 8)
    assert "key and a value" in assert_rejects(check.llama_70b_cache, answer / 2)
    assert "2 bytes" in assert_rejects(check.llama_70b_cache, answer * 2)
    assert "too big" in assert_rejects(check.llama_70b_cache, 45)
    assert "number" in assert_rejects(check.llama_70b_cache, "40 GiB")
    assert_rejects(check.llama_70b_cache, answer * 2**30)                 # bytes
