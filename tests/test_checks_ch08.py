"""Chapter 08 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils import generation
from utils.checks import ch08 as check

# ---- exercise 1: top-k -----------------------------------------------------------------------


def top_k(logits, k):
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def test_top_k_accepts_solutions():
    assert_accepts(check.top_k_filter, top_k)
    assert_accepts(check.top_k_filter, generation.top_k_filter)
    assert_not_attempted(check.top_k_filter, stub)


def test_top_k_rejects_classic_mistakes():
    def exactly_k(logits, k):          # ties at the boundary dropped
        k = min(k, logits.size(-1))
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, torch.topk(logits, k, dim=-1).indices, True)
        return logits.masked_fill(~keep, float("-inf"))
    assert "tied" in assert_rejects(check.top_k_filter, exactly_k)

    def off_by_one(logits, k):         # keeps k + 1
        k = min(k + 1, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    assert "off by one" in assert_rejects(check.top_k_filter, off_by_one)

    def strict(logits, k):             # `<=` drops the k-th itself
        kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
        return logits.masked_fill(logits <= kth, float("-inf"))
    assert "off by one" in assert_rejects(check.top_k_filter, strict)

    def zeros(logits, k):
        kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, 0.0)
    assert "-inf" in assert_rejects(check.top_k_filter, zeros)

    def sorted_order(logits, k):
        values = torch.sort(logits, dim=-1, descending=True).values
        kth = values[..., min(k, logits.size(-1)) - 1:min(k, logits.size(-1))]
        return values.masked_fill(values < kth, float("-inf"))
    assert "sorted" in assert_rejects(check.top_k_filter, sorted_order)

    def probabilities(logits, k):
        return torch.softmax(top_k(logits, k), -1)
    assert "probabilities" in assert_rejects(check.top_k_filter, probabilities)

    def in_place(logits, k):
        kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
        return logits.masked_fill_(logits < kth, float("-inf"))
    assert "changed its input" in assert_rejects(check.top_k_filter, in_place)

    def smallest(logits, k):           # topk(largest=False): as many tokens, the wrong ones
        k = min(k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
        return logits.masked_fill(logits > kth, float("-inf"))
    assert "not the right ones" in assert_rejects(check.top_k_filter, smallest)

    def global_threshold(logits, k):   # one k-th largest for the whole batch
        kth = torch.topk(logits.flatten(), min(k, logits.numel())).values[-1]
        return logits.masked_fill(logits < kth, float("-inf"))
    assert "each row" in assert_rejects(check.top_k_filter, global_threshold)

    as_list = lambda logits, k: top_k(logits, k).tolist()  # noqa: E731
    assert "expected a torch tensor, got list" in assert_rejects(check.top_k_filter, as_list)


def test_top_k_checks_more_than_its_first_case():
    def keeps_all(logits, k):
        return logits.clone()
    assert_rejects(check.top_k_filter, right_on_first_call_only(top_k, keeps_all))


def test_top_k_hint_names_the_learners_function():
    def my_top_k_filter(logits, k):
        return logits.clone()
    assert "my_top_k_filter(" in assert_rejects(check.top_k_filter, my_top_k_filter)


# ---- exercise 2: top-p -----------------------------------------------------------------------


def top_p(probs, p):
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep_sorted = before < p
    keep_sorted[..., 0] = True
    keep = keep_sorted.scatter(-1, order, keep_sorted)
    out = probs * keep
    return out / out.sum(-1, keepdim=True)


def _nucleus(probs, p, keep_rule, renormalise=True, unsort=True, force_top=True):
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep_sorted = keep_rule(sorted_probs.cumsum(-1), sorted_probs, p)
    if force_top:
        keep_sorted[..., 0] = True
    if not unsort:
        out = sorted_probs * keep_sorted
    else:
        out = probs * keep_sorted.scatter(-1, order, keep_sorted)
    return out / out.sum(-1, keepdim=True) if renormalise else out


def test_top_p_accepts_solutions():
    assert_accepts(check.top_p_filter, top_p)
    assert_accepts(check.top_p_filter, lambda probs, p: torch.softmax(
        generation.top_p_filter(probs.log(), p), -1))
    assert_not_attempted(check.top_p_filter, stub)


def test_top_p_rejects_classic_mistakes():
    right = lambda cum, sp, p: cum - sp < p  # noqa: E731
    one_too_few = lambda probs, p: _nucleus(probs, p, lambda cum, sp, p: cum < p)  # noqa: E731
    assert "too few" in assert_rejects(check.top_p_filter, one_too_few)
    one_too_many = lambda probs, p: _nucleus(probs, p, lambda cum, sp, p: cum - sp <= p)  # noqa: E731
    assert "too many" in assert_rejects(check.top_p_filter, one_too_many)
    no_renorm = lambda probs, p: _nucleus(probs, p, right, renormalise=False)  # noqa: E731
    assert "renormalise" in assert_rejects(check.top_p_filter, no_renorm)
    still_sorted = lambda probs, p: _nucleus(probs, p, right, unsort=False)  # noqa: E731
    assert "sorted" in assert_rejects(check.top_p_filter, still_sorted)
    drops_all = lambda probs, p: _nucleus(probs, p, lambda cum, sp, p: cum < p,  # noqa: E731
                                          renormalise=False, force_top=False)
    assert_rejects(check.top_p_filter, drops_all)


def test_top_p_running_total_before_sorting_is_diagnosed():
    def never_sorted(probs, p):        # cumsum over the tokens in id order
        keep = probs.cumsum(-1) - probs < p
        keep[..., 0] = True
        kept = probs * keep
        return kept / kept.sum(-1, keepdim=True)

    def summed_first(probs, p):        # cumsum first, then sorted: totals belong to other tokens
        before = probs.cumsum(-1) - probs
        order = torch.sort(probs, dim=-1, descending=True).indices
        keep_sorted = before < p
        keep_sorted[..., 0] = True
        kept = probs * keep_sorted.scatter(-1, order, keep_sorted)
        return kept / kept.sum(-1, keepdim=True)

    for answer in (never_sorted, summed_first):
        hint = assert_rejects(check.top_p_filter, answer)
        assert "token-id order" in hint and "sort the probabilities" in hint, hint
        assert "expected [" not in hint        # not "kept [2] tokens, expected [2]"


def test_top_p_same_number_of_tokens_but_the_wrong_ones_is_said_so():
    def least_likely(probs, p):        # sorted ascending: the right count, the wrong tokens
        sorted_probs, order = torch.sort(probs, dim=-1, descending=False)
        n_keep = ((torch.sort(probs, dim=-1, descending=True).values.cumsum(-1)
                   - torch.sort(probs, dim=-1, descending=True).values) < p).sum(-1, keepdim=True)
        keep_sorted = torch.arange(probs.size(-1)).expand_as(probs) < n_keep
        kept = probs * keep_sorted.scatter(-1, order, keep_sorted)
        return kept / kept.sum(-1, keepdim=True)
    hint = assert_rejects(check.top_p_filter, least_likely)
    assert "the right number of tokens is kept, but not the right ones" in hint, hint


def test_top_p_rejects_a_list():
    as_list = lambda probs, p: top_p(probs, p).tolist()  # noqa: E731
    assert "expected a torch tensor, got list" in assert_rejects(check.top_p_filter, as_list)


def test_top_p_checks_more_than_its_first_case():
    def keeps_all(probs, p):
        return probs.clone()
    assert_rejects(check.top_p_filter, right_on_first_call_only(top_p, keeps_all))


# ---- exercise 3: temperature -----------------------------------------------------------------


def temperature_probs(logits, temperature):
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return torch.softmax(logits / temperature, dim=-1)


def test_temperature_accepts_solutions():
    assert_accepts(check.temperature_probs, temperature_probs)
    assert_accepts(check.temperature_probs, lambda z, t: generation.next_token_probs(z, t))
    assert_not_attempted(check.temperature_probs, stub)


def test_temperature_rejects_classic_mistakes():
    def greedy_or(rule):
        return lambda z, t: temperature_probs(z, 0) if t == 0 else rule(z, t)
    after = greedy_or(lambda z, t: torch.softmax(z, -1) / t)
    assert "after the softmax" in assert_rejects(check.temperature_probs, after)
    times = greedy_or(lambda z, t: torch.softmax(z * t, -1))
    assert "multiplied" in assert_rejects(check.temperature_probs, times)
    power = greedy_or(lambda z, t: torch.softmax(z, -1) ** (1 / t))
    assert "sum to 1" in assert_rejects(check.temperature_probs, power)
    wrong_dim = greedy_or(lambda z, t: torch.softmax(z / t, 0))
    assert "dimension" in assert_rejects(check.temperature_probs, wrong_dim)
    no_greedy = lambda z, t: torch.softmax(z / t, -1)  # noqa: E731
    assert "greedy" in assert_rejects(check.temperature_probs, no_greedy)
    naive_exp = greedy_or(lambda z, t: (z / t).exp() / (z / t).exp().sum(-1, keepdim=True))
    assert "NaN or inf" in assert_rejects(check.temperature_probs, naive_exp)
    ignored = greedy_or(lambda z, t: torch.softmax(z, -1))
    assert "ignored" in assert_rejects(check.temperature_probs, ignored)


def test_temperature_accepts_other_correct_softmaxes():
    def per_row_max(z, t):             # a hand-written, stable softmax
        if t == 0:
            return temperature_probs(z, 0)
        e = (z / t - (z / t).max(-1, keepdim=True).values).exp()
        return e / e.sum(-1, keepdim=True)
    assert_accepts(check.temperature_probs, per_row_max)
    assert_accepts(check.temperature_probs, lambda z, t: temperature_probs(z, 0) if t == 0
                   else torch.log_softmax(z.double() / t, -1).exp().float())


def test_temperature_rejects_a_global_maximum():
    def global_max(z, t):              # exact on one row; rows far below the top one give 0 / 0
        if t == 0:
            return temperature_probs(z, 0)
        e = (z / t - (z / t).max()).exp()
        return e / e.sum(-1, keepdim=True)
    assert "each row's own maximum" in assert_rejects(check.temperature_probs, global_max)


def test_temperature_rejects_greedy_below_a_cut_off():
    for cut_off in (0.02, 0.1, 0.2):
        def greedy_below(z, t, cut_off=cut_off):
            return temperature_probs(z, 0) if t < cut_off else torch.softmax(z / t, -1)
        assert "small, not 0" in assert_rejects(check.temperature_probs, greedy_below)


def test_temperature_rejects_a_list():
    as_list = lambda z, t: temperature_probs(z, t).tolist()  # noqa: E731
    assert "expected a torch tensor, got list" in assert_rejects(check.temperature_probs, as_list)


def test_temperature_checks_more_than_its_first_case():
    ignored = lambda z, t: torch.softmax(z, -1)  # noqa: E731  (right at the first case's t = 1)
    assert_rejects(check.temperature_probs, right_on_first_call_only(temperature_probs, ignored))
