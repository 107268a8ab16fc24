"""Chapter 10 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import torch
import torch.nn.functional as F

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
    verdict,
)
from utils import instructions, lora
from utils.checks import ch10 as check
from utils.model import GPT, GPTConfig

# ---- exercise 1: the LoRA forward pass -------------------------------------------------------


def lora_forward(x, weight, bias, A, B, alpha, rank):
    return x @ weight.T + bias + (alpha / rank) * (x @ A.T @ B.T)


def test_lora_forward_accepts_solutions():
    assert_accepts(check.lora_forward, lora_forward)
    assert_accepts(check.lora_forward, lambda x, W, b, A, B, alpha, rank:
                   lora.lora_forward(x, W, b, A, B, alpha / rank))
    assert_accepts(check.lora_forward, lambda x, W, b, A, B, alpha, rank:   # scaled A first
                   F.linear(x, W, b) + F.linear(x @ (alpha / rank * A).T, B))
    assert_not_attempted(check.lora_forward, stub)


def test_lora_forward_rejects_forming_the_update_matrix():
    """Right numbers, but the exercise rules out forming B A, however it is spelled."""
    formed = {
        "x @ (W + B A).T": lambda x, W, b, A, B, alpha, rank: x @ (W + alpha / rank * B @ A).T + b,
        "F.linear(x, W + B A)": lambda x, W, b, A, B, alpha, rank:
            F.linear(x, W + alpha / rank * B @ A, b),
        "addmm": lambda x, W, b, A, B, alpha, rank:
            F.linear(x, torch.addmm(W, B, A, alpha=alpha / rank), b),
        "(B A)ᵀ = Aᵀ Bᵀ": lambda x, W, b, A, B, alpha, rank:
            x @ W.T + b + alpha / rank * (x @ (A.T @ B.T)),
        "einsum": lambda x, W, b, A, B, alpha, rank:
            F.linear(x, W, b) + alpha / rank * x @ torch.einsum("or,ri->oi", B, A).T,
    }
    for spelling, answer in formed.items():
        hint = assert_rejects(check.lora_forward, answer)
        assert "rules out" in hint and "A first" in hint, spelling


def test_lora_forward_rejects_a_list():
    as_list = lambda *a: lora_forward(*a).tolist()  # noqa: E731
    assert "expected a torch tensor, got list" in assert_rejects(check.lora_forward, as_list)


def test_lora_forward_rejects_classic_mistakes():
    no_scaling = lambda x, W, b, A, B, alpha, rank: x @ W.T + b + x @ A.T @ B.T  # noqa: E731
    assert "not scaled" in assert_rejects(check.lora_forward, no_scaling)

    alpha_times_r = lambda x, W, b, A, B, alpha, rank: (  # noqa: E731
        x @ W.T + b + alpha * rank * (x @ A.T @ B.T))
    assert "not alpha · rank" in assert_rejects(check.lora_forward, alpha_times_r)

    transposed = lambda x, W, b, A, B, alpha, rank: (  # noqa: E731
        x @ W.T + b + alpha / rank * (x @ (B @ A)))
    assert "transposed" in assert_rejects(check.lora_forward, transposed)

    bias_twice = lambda x, W, b, A, B, alpha, rank: (  # noqa: E731
        x @ W.T + b + alpha / rank * (x @ A.T @ B.T + b))
    assert "bias was added twice" in assert_rejects(check.lora_forward, bias_twice)

    swapped = lambda x, W, b, A, B, alpha, rank: (  # noqa: E731
        x @ W.T + b + alpha / rank * (x @ B @ A))
    assert "swapped" in assert_rejects(check.lora_forward, swapped)

    no_bias = lambda x, W, b, A, B, alpha, rank: x @ W.T + alpha / rank * (x @ A.T @ B.T)  # noqa: E731
    assert "bias is missing" in assert_rejects(check.lora_forward, no_bias)

    adapter_only = lambda x, W, b, A, B, alpha, rank: b + alpha / rank * (x @ A.T @ B.T)  # noqa: E731
    assert "missing" in assert_rejects(check.lora_forward, adapter_only)

    def in_place(x, W, b, A, B, alpha, rank):
        W += alpha / rank * B @ A                                         # merges into the base
        return x @ W.T + b
    assert "changed its input" in assert_rejects(check.lora_forward, in_place)


# ---- exercise 2: merge ------------------------------------------------------------------------


def merge(weight, A, B, alpha, rank):
    return weight + (alpha / rank) * (B @ A)


def test_merge_accepts_solutions():
    assert_accepts(check.merge, merge)
    assert_accepts(check.merge, lambda W, A, B, alpha, rank: torch.addmm(W, B, A, alpha=alpha / rank))
    assert_not_attempted(check.merge, stub)


def test_merge_rejects_a_list():
    as_list = lambda *a: merge(*a).tolist()  # noqa: E731
    assert "expected a torch tensor, got list" in assert_rejects(check.merge, as_list)


def test_merge_rejects_classic_mistakes():
    transposed = lambda W, A, B, alpha, rank: W + alpha / rank * (A.T @ B.T)  # noqa: E731
    assert "transposed" in assert_rejects(check.merge, transposed)

    no_scaling = lambda W, A, B, alpha, rank: W + B @ A  # noqa: E731
    assert "not scaled" in assert_rejects(check.merge, no_scaling)

    def returns_original(W, A, B, alpha, rank):
        merged = W.clone()
        merged += alpha / rank * (B @ A)
        return W                                                          # the wrong name
    assert "unchanged" in assert_rejects(check.merge, returns_original)

    subtracted = lambda W, A, B, alpha, rank: W - alpha / rank * (B @ A)  # noqa: E731
    assert "subtracted" in assert_rejects(check.merge, subtracted)

    alpha_times_r = lambda W, A, B, alpha, rank: W + alpha * rank * (B @ A)  # noqa: E731
    assert "alpha · rank" in assert_rejects(check.merge, alpha_times_r)

    def in_place(W, A, B, alpha, rank):
        W += alpha / rank * (B @ A)
        return W
    assert "changed its input" in assert_rejects(check.merge, in_place)


# ---- exercise 3: counting trainable parameters -----------------------------------------------


def count_lora_parameters(shapes, rank):
    return sum(rank * (n_in + n_out) for n_out, n_in in shapes)


def test_count_accepts_solutions():
    assert_accepts(check.count_lora_parameters, count_lora_parameters)
    assert_accepts(check.count_lora_parameters, lambda shapes, rank: float(
        sum(rank * sum(shape) for shape in shapes)))
    assert_not_attempted(check.count_lora_parameters, stub)


def test_count_uses_the_learners_function_on_the_exercises_layouts():
    """The exercise's "then use it" happens in the verdict, with the learner's own function."""
    accepted, text = verdict(check.count_lora_parameters, count_lora_parameters)
    assert accepted, text
    ours = 6 * (lora.lora_parameter_count(128, 384, 8) + lora.lora_parameter_count(128, 128, 8))
    seven_b = 4 * 32 * lora.lora_parameter_count(4096, 4096, 16)
    assert f"{ours:,}" in text and f"{seven_b:,}" in text


def test_count_rejects_a_list():
    per_layer = lambda shapes, r: [r * (o + i) for o, i in shapes]  # noqa: E731
    assert "should be a number, got list" in assert_rejects(check.count_lora_parameters, per_layer)


def test_count_reference_matches_the_library_on_a_real_model():
    """The grader's formula is what apply_lora really adds to a GPT."""
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=24)
    model = lora.apply_lora(GPT(config), rank=4, alpha=8, targets=("qkv", "proj"))
    shapes = [tuple(layer.base.weight.shape) for layer in lora.lora_layers(model).values()]
    assert check.reference_count(shapes, 4) == lora.count_trainable(model)[0] > 0


def test_count_rejects_classic_mistakes():
    product = lambda shapes, r: sum(r * o * i for o, i in shapes)  # noqa: E731
    assert "r · in · out" in assert_rejects(check.count_lora_parameters, product)

    only_a = lambda shapes, r: sum(r * i for o, i in shapes)  # noqa: E731
    assert "A only" in assert_rejects(check.count_lora_parameters, only_a)

    with_base = lambda shapes, r: sum(r * (o + i) + o * i for o, i in shapes)  # noqa: E731
    assert "frozen" in assert_rejects(check.count_lora_parameters, with_base)

    first_only = lambda shapes, r: r * sum(shapes[0]) if shapes else 0  # noqa: E731
    assert "first layer" in assert_rejects(check.count_lora_parameters, first_only)

    square = lambda shapes, r: sum(r * r for _ in shapes)  # noqa: E731
    assert "r × r" in assert_rejects(check.count_lora_parameters, square)

    as_text = lambda shapes, r: f"{count_lora_parameters(shapes, r):,}"  # noqa: E731
    assert "number" in assert_rejects(check.count_lora_parameters, as_text)


# ---- exercise 4: the loss on response tokens -------------------------------------------------


def response_loss(logits, ids, prompt_lengths, lengths):
    targets = ids[:, 1:].clone()                                          # position t -> ids[t+1]
    position = torch.arange(1, ids.size(1))                               # index of each target
    for row, (p, n) in enumerate(zip(prompt_lengths, lengths, strict=True)):
        targets[row, (position < p) | (position >= n)] = -100
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-100)


def _mask_loss(logits, ids, prompt_lengths, lengths, first=0, pad=False, shift=1, reduce="mean"):
    targets = ids[:, shift:].clone()
    position = torch.arange(shift, ids.size(1))
    for row, (p, n) in enumerate(zip(prompt_lengths, lengths, strict=True)):
        drop = position < p + first
        if not pad:
            drop |= position >= n
        targets[row, drop] = -100
    T = ids.size(1) - shift
    nll = F.cross_entropy(logits[:, :T].reshape(-1, logits.size(-1)), targets.reshape(-1),
                          ignore_index=-100, reduction="none").view(len(lengths), T)
    kept = targets != -100
    if reduce == "sum":
        return nll.sum()
    if reduce == "per_row":
        return torch.stack([nll[b][kept[b]].mean() for b in range(len(lengths))]).mean()
    return nll.sum() / kept.sum()


def test_response_loss_accepts_solutions():
    assert_accepts(check.response_loss, response_loss)
    assert_accepts(check.response_loss, _mask_loss)
    assert_not_attempted(check.response_loss, stub)


def test_response_loss_rejects_a_number_or_a_list():
    as_float = lambda *a: response_loss(*a).item()  # noqa: E731
    assert "no gradient" in assert_rejects(check.response_loss, as_float)
    as_list = lambda *a: [response_loss(*a).item()]  # noqa: E731
    assert "not a list" in assert_rejects(check.response_loss, as_list)


def test_response_loss_rejects_classic_mistakes():
    with_prompt = lambda *a: _mask_loss(*a, first=-10**6)  # noqa: E731
    assert "prompt tokens were averaged in" in assert_rejects(check.response_loss, with_prompt)

    summed = lambda *a: _mask_loss(*a, reduce="sum")  # noqa: E731
    assert "sum" in assert_rejects(check.response_loss, summed)

    unshifted = lambda *a: _mask_loss(*a, shift=0)  # noqa: E731
    assert "not shifted" in assert_rejects(check.response_loss, unshifted)

    skips_first = lambda *a: _mask_loss(*a, first=1)  # noqa: E731
    assert "off by one" in assert_rejects(check.response_loss, skips_first)

    with_padding = lambda *a: _mask_loss(*a, pad=True)  # noqa: E731
    assert "padding" in assert_rejects(check.response_loss, with_padding)

    per_row = lambda *a: _mask_loss(*a, reduce="per_row")  # noqa: E731
    assert "every token weighs the same" in assert_rejects(check.response_loss, per_row)

    def padding_by_id(logits, ids, prompt_lengths, lengths):              # ignores `lengths`
        targets = ids[:, 1:].clone()
        position = torch.arange(1, ids.size(1))
        for row, p in enumerate(prompt_lengths):
            targets[row, position < p] = -100
        targets[targets == 0] = -100
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    assert "real" in assert_rejects(check.response_loss, padding_by_id)

    def per_token(logits, ids, prompt_lengths, lengths):                  # forgot to reduce
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert "one number" in assert_rejects(check.response_loss, per_token)


def test_response_loss_reference_uses_the_library_collation():
    """The grader's reference agrees with collate + masked_lm_loss on a batch built by hand."""
    examples = [([5, 6, 7, 8, 9], 2), ([1, 2, 3], 1)]
    x, y = instructions.collate(examples, pad_id=0)
    logits = torch.randn(2, 5, 12)
    ids = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 0, 0]])
    expected = instructions.masked_lm_loss(logits[:, :-1], y)
    assert torch.allclose(check.reference_response_loss(logits, ids, [2, 1], [5, 3]), expected)
    assert torch.allclose(response_loss(logits, ids, [2, 1], [5, 3]), expected)


# ---- exercise 5: the DPO loss -------------------------------------------------------------------


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def test_dpo_accepts_solutions():
    assert_accepts(check.dpo_loss, dpo_loss)
    assert_accepts(check.dpo_loss, lambda pc, pr, rc, rr, beta: F.softplus(
        -beta * ((pc - pr) - (rc - rr))).mean())
    assert_not_attempted(check.dpo_loss, stub)


def test_dpo_rejects_a_number_or_a_list():
    as_float = lambda *a: dpo_loss(*a).item()  # noqa: E731
    assert "no gradient" in assert_rejects(check.dpo_loss, as_float)
    per_pair_list = lambda pc, pr, rc, rr, beta: (  # noqa: E731
        -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))).tolist()
    assert "not a list" in assert_rejects(check.dpo_loss, per_pair_list)


def test_dpo_rejects_classic_mistakes():
    def margin(pc, pr, rc, rr):
        return (pc - rc) - (pr - rr)

    no_reference = lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean()  # noqa: E731
    assert "reference model is missing" in assert_rejects(check.dpo_loss, no_reference)

    flipped = lambda pc, pr, rc, rr, beta: -F.logsigmoid(-beta * margin(pc, pr, rc, rr)).mean()  # noqa: E731
    assert "sign is flipped" in assert_rejects(check.dpo_loss, flipped)

    no_beta = lambda pc, pr, rc, rr, beta: -F.logsigmoid(margin(pc, pr, rc, rr)).mean()  # noqa: E731
    assert "beta is missing" in assert_rejects(check.dpo_loss, no_beta)

    plain_sigmoid = lambda pc, pr, rc, rr, beta: -torch.sigmoid(beta * margin(pc, pr, rc, rr)).mean()  # noqa: E731
    assert "-sigmoid" in assert_rejects(check.dpo_loss, plain_sigmoid)

    summed = lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * margin(pc, pr, rc, rr)).sum()  # noqa: E731
    assert "sum" in assert_rejects(check.dpo_loss, summed)

    naive = lambda pc, pr, rc, rr, beta: -torch.log(torch.sigmoid(beta * margin(pc, pr, rc, rr))).mean()  # noqa: E731
    assert "logsigmoid" in assert_rejects(check.dpo_loss, naive)

    per_pair = lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * margin(pc, pr, rc, rr))  # noqa: E731
    assert "one number" in assert_rejects(check.dpo_loss, per_pair)


def test_lora_forward_rejects_flattening_with_view():
    def flattened(x, weight, bias, A, B, alpha, rank):     # .view fails on a non-contiguous x
        flat = x.view(-1, x.shape[-1])
        out = lora_forward(flat, weight, bias, A, B, alpha, rank)
        return out.view(*x.shape[:-1], -1)
    assert_rejects(check.lora_forward, flattened)


# ---- every grader: more than its first case ---------------------------------------------------
# Each wrong answer below is right on the grader's first hand-picked case and wrong on every
# later one, so a grader thinned to that first case would accept it.


def test_lora_forward_checks_more_than_its_first_case():
    no_scaling = lambda x, W, b, A, B, alpha, rank: x @ W.T + b + x @ A.T @ B.T  # noqa: E731
    assert_rejects(check.lora_forward, right_on_first_call_only(lora_forward, no_scaling))


def test_merge_checks_more_than_its_first_case():
    no_scaling = lambda W, A, B, alpha, rank: W + B @ A  # noqa: E731
    assert_rejects(check.merge, right_on_first_call_only(merge, no_scaling))


def test_count_checks_more_than_its_first_case():
    only_a = lambda shapes, r: sum(r * i for o, i in shapes)  # noqa: E731
    assert_rejects(check.count_lora_parameters,
                   right_on_first_call_only(count_lora_parameters, only_a))


def test_response_loss_checks_more_than_its_first_case():
    summed = lambda *a: _mask_loss(*a, reduce="sum")  # noqa: E731
    assert_rejects(check.response_loss, right_on_first_call_only(response_loss, summed))


def test_dpo_checks_more_than_its_first_case():
    no_beta = lambda pc, pr, rc, rr, beta: -F.logsigmoid((pc - rc) - (pr - rr)).mean()  # noqa: E731
    assert_rejects(check.dpo_loss, right_on_first_call_only(dpo_loss, no_beta))
