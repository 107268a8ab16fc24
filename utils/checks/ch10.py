"""Graders for chapter 10 (fine-tuning): `from utils.checks import ch10 as check`.

Weights follow `nn.Linear`: a layer's weight is [out_features, in_features] and it computes
x Wᵀ + b. A LoRA adapter of rank r has A [r, in] and B [out, r]. Each grader compares the
learner's function with the library's (`utils.lora`, `utils.instructions`,
`utils.preferences`) on hand-picked inputs aimed at known mistakes and on seeded random ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils import instructions, lora, preferences
from utils.checks.grading import (
    Hint,
    compare_with_reference,
    expect_close,
    expect_number,
    expect_tensor,
    grader,
    seeded_cases,
    torch_calls,
)


def _close(a: torch.Tensor, b, atol: float = 1e-4) -> bool:
    return (isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4))


def _adapter(rng, n_in: int, n_out: int, rank: int) -> tuple[torch.Tensor, ...]:
    """A trained-looking layer: W and b like nn.Linear's, A random, B small but NOT zero (a
    zero B would hide every mistake in the adapter's half of the computation)."""
    bound = n_in ** -0.5
    W = torch.from_numpy(rng.uniform(-bound, bound, (n_out, n_in))).float()
    b = torch.from_numpy(rng.uniform(-bound, bound, n_out)).float()
    A = torch.from_numpy(rng.uniform(-bound, bound, (rank, n_in))).float()
    B = torch.from_numpy(rng.normal(0, 0.2, (n_out, rank))).float()
    return W, b, A, B


# ---- exercise 1: the LoRA forward pass ------------------------------------------------------


def reference_lora_forward(x, weight, bias, A, B, alpha, rank):
    return lora.lora_forward(x, weight, bias, A, B, alpha / rank)


def _diagnose_forward(got, expected, x, W, b, A, B, alpha, rank) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None
    got = got.detach().float()
    base = x @ W.T + b
    delta = x @ A.T @ B.T
    twice = "the bias was added twice; it belongs to the frozen layer only, the adapter has none"
    named = [
        (base + delta, "the adapter's output was not scaled: multiply it by alpha / rank"),
        (base + alpha * rank * delta, "the scaling is alpha / rank, not alpha · rank"),
        (base + rank / alpha * delta, "the scaling is alpha / rank, not rank / alpha"),
        (base + alpha * delta, "the scaling is alpha / rank: divide by the rank too"),
        (base + b + alpha / rank * delta, twice),
        (base + alpha / rank * (delta + b), twice),
        (x @ W.T + alpha / rank * delta, "the bias is missing: the frozen layer computes x Wᵀ + b"),
        (alpha / rank * delta + b, "the frozen layer's x Wᵀ is missing: LoRA adds its update "
                                   "to the base layer's output, it does not replace it"),
    ]
    if W.size(0) == W.size(1):
        named.append((base + alpha / rank * (x @ (B @ A)),
                      "B·A is transposed (or A and B swapped): the update's weight is B A "
                      "[out, in], and a layer multiplies by its transpose, so x goes through "
                      "A first (in → r), then B (r → out): x Aᵀ Bᵀ"))
    for candidate, hint in named:
        if _close(got, candidate):
            return hint
    return None


# Operations that only look at a tensor again (a view, a copy, another dtype): `weight.T` or
# `weight.clone()` has the weight's shape without forming anything new.
_VIEWS_AND_COPIES = {"__get__", "t", "transpose", "permute", "mT", "adjoint", "swapaxes",
                     "swapdims", "movedim", "contiguous", "clone", "detach", "to", "float",
                     "double", "type_as", "view", "view_as", "reshape", "reshape_as", "cpu"}


def _refuse_weight_sized_update(fn, args) -> None:
    """The exercise rules out forming B A (or W + B A): on this non-square case, any computed
    tensor of shape [out, in] or [in, out] can only be that matrix (or its transpose), since x
    has more dimensions and its flattened rows number neither in nor out."""
    x, weight = args[0], args[1]
    n_out, n_in = weight.shape
    for func, shapes in torch_calls(fn, *args):
        name = getattr(func, "__name__", "")
        formed = next((s for s in shapes if s in {(n_out, n_in), (n_in, n_out)}), None)
        if name not in _VIEWS_AND_COPIES and formed:
            raise Hint(f"the answer is right, but on x {tuple(x.shape)}, weight {tuple(weight.shape)} "
                       f"it builds a {formed[0]} × {formed[1]} matrix (`{name}`): that is B A, its "
                       "transpose, or W + B A, which this exercise rules out. In a real layer "
                       "that matrix is as big as the weight (d_out · d_in numbers, "
                       "d_out · d_in · r multiplications to build) and "
                       "training would rebuild it at every step; send x through the two thin "
                       "matrices instead, A first (in → r), then B (r → out): (x Aᵀ) Bᵀ, "
                       "r · (in + out) multiplications per row")


@grader
def lora_forward(fn):
    """Exercise 1: lora_forward(x, weight, bias, A, B, alpha, rank) -> x Wᵀ + b + (alpha/r) x Aᵀ Bᵀ."""
    def case(rng, n_in, n_out, rank, alpha, lead=(2, 3)):
        x = torch.from_numpy(rng.normal(0, 1, (*lead, n_in))).float()
        return (x, *_adapter(rng, n_in, n_out, rank), alpha, rank)

    rng = np.random.default_rng(100)
    cases = [
        case(rng, 6, 6, 2, 8),              # square: a transposed or swapped B·A still runs
        case(rng, 8, 8, 4, 16, lead=(5,)),
        case(rng, 4, 10, 2, 4),             # in != out: the shapes must work out
        case(rng, 12, 5, 1, 1),             # rank 1, scaling 1
        case(rng, 7, 7, 8, 4),              # alpha < rank: scaling 0.5
        case(rng, 16, 48, 4, 32, lead=(1, 1)),
    ]
    x, W, b, A, _, alpha, rank = case(rng, 6, 9, 3, 6)
    cases.append((x, W, b, A, torch.zeros(9, 3), alpha, rank))     # B = 0: exactly the base layer
    x, W, b, A, B, alpha, rank = case(rng, 5, 7, 2, 4, lead=(5, 3))
    cases.append((x.transpose(0, 1), W, b, A, B, alpha, rank))     # x not contiguous: no .view()

    def make(r):
        n_in, n_out, rank = int(r.integers(1, 40)), int(r.integers(1, 40)), int(r.integers(1, 9))
        lead = tuple(int(n) for n in r.integers(1, 5, size=int(r.integers(1, 3))))
        alpha = float(r.choice([1, 2, 4, 8, 16, 32]))
        return case(r, n_in, n_out, rank, alpha, lead)
    cases += seeded_cases(make, 25, seed=101)

    def compare(got, expected, what):
        got = expect_tensor(got, expected.shape, what).float()
        expect_close(got, expected, what, atol=1e-4, rtol=1e-4)

    compare_with_reference(fn, reference_lora_forward, cases, compare, "lora_forward",
                           diagnose=_diagnose_forward)
    _refuse_weight_sized_update(fn, case(rng, 12, 20, 3, 6, lead=(3, 5)))
    return ("The frozen layer and a rank-r detour, scaled by alpha/r: two thin products, and "
            "B A is never formed.")


# ---- exercise 2: merging an adapter into the weight ------------------------------------------


def reference_merge(weight, A, B, alpha, rank):
    return lora.merged_weight(weight, A, B, alpha / rank)


def _diagnose_merge(got, expected, W, A, B, alpha, rank) -> str | None:
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None
    got = got.detach().float()
    s = alpha / rank
    named = [
        (W, "the weight came back unchanged: return W + (alpha/rank) · B A (if you added it "
            "to a copy, return the copy)"),
        (W + B @ A, "the update was not scaled: multiply B A by alpha / rank"),
        (W + alpha * rank * (B @ A), "the scaling is alpha / rank, not alpha · rank"),
        (W - s * (B @ A), "the update was subtracted; merging adds it, as the forward pass does"),
        (s * (B @ A), "only the update was returned; add it to the frozen weight W"),
    ]
    if W.size(0) == W.size(1):
        named.append((W + s * (B @ A).T, "the update is transposed: B A is already "
                                         "[out, in], the shape of W (Aᵀ Bᵀ would be [in, out])"))
    for candidate, hint in named:
        if _close(got, candidate):
            return hint
    return None


@grader
def merge(fn):
    """Exercise 2: merge(weight, A, B, alpha, rank) -> a new weight W + (alpha/r) B A."""
    rng = np.random.default_rng(200)

    def case(r, n_in, n_out, rank, alpha):
        W, _, A, B = _adapter(r, n_in, n_out, rank)
        return (W, A, B, alpha, rank)

    cases = [case(rng, 6, 6, 2, 8),         # square: a transposed update still has W's shape
             case(rng, 5, 9, 3, 6),         # in != out
             case(rng, 9, 5, 1, 1),         # rank 1, scaling 1
             case(rng, 8, 8, 8, 2)]         # scaling 0.25

    def make(r):
        n_in, n_out, rank = int(r.integers(1, 40)), int(r.integers(1, 40)), int(r.integers(1, 9))
        return case(r, n_in, n_out, rank, float(r.choice([1, 2, 4, 8, 16])))
    cases += seeded_cases(make, 20, seed=201)

    def compare(got, expected, what):
        got = expect_tensor(got, expected.shape, what).float()
        expect_close(got, expected, what, atol=1e-5, rtol=1e-4)

    compare_with_reference(fn, reference_merge, cases, compare, "merge",
                           diagnose=_diagnose_merge)
    return "One matrix again: the merged model runs at the base model's speed, with no adapter."


# ---- exercise 3: counting LoRA's trainable parameters ----------------------------------------


def reference_count(shapes, rank):
    return sum(lora.lora_parameter_count(n_in, n_out, rank) for n_out, n_in in shapes)


def _diagnose_count(got, expected, shapes, rank) -> str | None:
    try:
        got = float(got)
    except (TypeError, ValueError):
        return None
    r = rank
    named = [
        (sum(r * o * i for o, i in shapes), "r · in · out is the size of a rank-r *tensor*; "
                                            "A is [r, in] and B is [out, r]: r · (in + out)"),
        (sum(r * i for o, i in shapes), "that counts A only; B [out, r] is trained too"),
        (sum(o * r for o, i in shapes), "that counts B only; A [r, in] is trained too"),
        (sum(r * (o + i) + o * i for o, i in shapes), "the frozen weights were counted; only "
                                                      "A and B are trained"),
        (sum(r * (o + i) + o for o, i in shapes), "the bias is part of the frozen layer, "
                                                  "not of the adapter"),
        (sum(r * r for _ in shapes), "A and B are not r × r: A is [r, in], B is [out, r]"),
        (r * (shapes[0][0] + shapes[0][1]) if shapes else None,
         "only the first layer was counted; add every adapted layer"),
    ]
    for candidate, hint in named:
        if candidate is not None and candidate != expected and got == candidate:
            return hint
    return None


@grader
def count_lora_parameters(fn):
    """Exercise 3: count_lora_parameters(shapes, rank) -> trainable numbers of rank-r adapters
    on layers whose weights have the given [out_features, in_features] shapes."""
    ours = [(384, 128), (128, 128)] * 6                          # qkv and proj of our 6 blocks
    cases = [
        ([(10, 3)], 1),
        ([(100, 60), (384, 128)], 8),
        (ours, 4),
        ([(4096, 4096)] * 4 * 32, 16),                             # q, k, v, o of a 7B model
        ([(1024, 8192), (8192, 8192)] * 80, 8),                    # a 70B-like layout
        ([(5, 5)], 3),
        ([], 8),                                                   # no layers: nothing trains
    ]

    def make(r):
        n = int(r.integers(1, 7))
        shapes = [(int(r.integers(1, 5000)), int(r.integers(1, 5000))) for _ in range(n)]
        return (shapes, int(r.integers(1, 65)))
    cases += seeded_cases(make, 20, seed=301)

    def compare(got, expected, what):
        number = expect_number(got, what)
        if number != expected:
            direction = "too big" if number > expected else "too small"
            raise Hint(f"{what} = {number:g} is {direction}")

    compare_with_reference(fn, reference_count, cases, compare, "count_lora_parameters",
                           diagnose=_diagnose_count)
    # the exercise's two layouts, counted with the learner's own (now checked) function
    ours_r8, llama_r16 = fn(ours, 8), fn([(4096, 4096)] * 4 * 32, 16)
    return (f"r · (in + out) per layer: linear in the width, where the layer is quadratic. With "
            f"your function: our qkv and proj at rank 8 train {ours_r8:,.0f} numbers "
            f"({ours_r8 / 1_216_000:.1%} of our 1,216,000 parameters); a 7B model's four "
            f"4096 × 4096 attention matrices in 32 blocks at rank 16 train {llama_r16:,.0f} "
            f"({llama_r16 / 6.74e9:.2%} of its 6.74 billion).")


def _expect_loss_tensor(got, what: str) -> None:
    """A loss must stay a tensor: a Python number (`.item()`, `float(...)`) or a list has no
    gradient, so `loss.backward()` could not train anything with it."""
    if not isinstance(got, torch.Tensor):
        raise Hint(f"{what}: return a 0-d torch tensor, not a {type(got).__name__}; a Python "
                   "number or list has no gradient, so loss.backward() could not train with it "
                   "(drop the .item() / float() / .tolist())")


# ---- exercise 4: the loss on response tokens only --------------------------------------------


def reference_response_loss(logits, ids, prompt_lengths, lengths):
    """The library's collation (targets = next tokens, prompt and padding ignored), then the
    library's masked loss."""
    examples = [(row[:n].tolist(), p)
                for row, p, n in zip(ids, prompt_lengths, lengths, strict=True)]
    _, y = instructions.collate(examples, pad_id=0)
    width = ids.size(1) - 1
    y = F.pad(y, (0, width - y.size(1)), value=instructions.IGNORE_INDEX)
    return instructions.masked_lm_loss(logits[:, :-1], y)


def _variant_loss(logits, ids, prompt_lengths, lengths, first_offset=0, pad=False, shift=1,
                  reduce="mean", by_pad_id=False):
    """A loss with one of the classic slips: which targets count, how they are averaged."""
    V = logits.size(-1)
    losses, keeps = [], []
    for b, (p, n) in enumerate(zip(prompt_lengths, lengths, strict=True)):
        T = ids.size(1)
        pos = torch.arange(T - shift)                  # position t predicts ids[t + shift]
        target_pos = pos + shift
        keep = (target_pos >= p + first_offset) & ((target_pos < n) | pad)
        if by_pad_id:                                  # padding found by its id, not by length
            keep = (target_pos >= p + first_offset) & (ids[b, shift:] != 0)
        nll = F.cross_entropy(logits[b, : T - shift].reshape(-1, V).float(),
                              ids[b, shift:].reshape(-1), reduction="none")
        losses.append(nll[keep])
        keeps.append(keep)
    flat = torch.cat(losses)
    if reduce == "sum":
        return flat.sum()
    if reduce == "per_row":
        return torch.stack([row.mean() for row in losses if len(row)]).mean()
    return flat.mean()


def _diagnose_response_loss(got, expected, logits, ids, prompt_lengths, lengths) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() != 1:
        return (f"return one number, the mean over the batch's response tokens (got shape "
                f"{tuple(got.shape)})")
    try:
        got = torch.as_tensor(float(got))
    except (TypeError, ValueError, RuntimeError):
        return None
    args = (logits, ids, prompt_lengths, lengths)
    named = [
        (dict(first_offset=-10**6), "the prompt tokens were averaged in too: only targets at "
                                    "positions >= the prompt length count"),
        (dict(reduce="sum"), "that is the sum; return the mean over response tokens"),
        (dict(shift=0), "the targets are not shifted: logits at position t predict ids[t + 1]"),
        (dict(first_offset=1), "off by one: the first response token (predicted from the last "
                               "prompt position) was left out"),
        (dict(first_offset=-1), "off by one: the last prompt token was counted as a response "
                                "token"),
        (dict(pad=True), "the padding after each example was counted; stop at its length"),
        (dict(by_pad_id=True), "padding was found by its id, but id 0 is also a real "
                               "character (the newline of the char tokenizer): use `lengths`"),
        (dict(reduce="per_row"), "each example was averaged separately and then the averages; "
                                 "average over all response tokens of the batch at once, so "
                                 "every token weighs the same"),
    ]
    for kwargs, hint in named:
        candidate = _variant_loss(*args, **kwargs)
        if torch.isfinite(candidate) and abs(candidate - expected) > 1e-4 and \
                abs(got - candidate) < 1e-4:
            return hint
    return None


@grader
def response_loss(fn):
    """Exercise 4: response_loss(logits, ids, prompt_lengths, lengths) -> mean cross-entropy over
    the response tokens of a right-padded batch (logits[:, t] predicts ids[:, t + 1])."""
    def case(r, prompt_lengths, lengths, V=76):
        T = max(lengths)
        ids = torch.zeros(len(lengths), T, dtype=torch.long)        # right-padded with id 0
        for b, n in enumerate(lengths):
            ids[b, :n] = torch.from_numpy(r.integers(0, V, n))     # id 0 is also a real token
        logits = torch.from_numpy(r.normal(0, float(r.uniform(1, 4)), (len(lengths), T, V)))
        return (logits.float(), ids, list(prompt_lengths), list(lengths))

    rng = np.random.default_rng(400)
    cases = [
        case(rng, [3, 5], [8, 12]),           # padding after the first example
        case(rng, [4], [9]),                  # one example, no padding
        case(rng, [1, 2], [6, 6]),            # a one-token prompt: every target is a response
        case(rng, [5, 3, 7], [6, 20, 10]),    # a one-token response; rows of very different length
        case(rng, [10, 2], [11, 30], V=8),
    ]

    def make(r):
        n_rows = int(r.integers(1, 5))
        lengths = [int(r.integers(3, 60)) for _ in range(n_rows)]
        prompts = [int(r.integers(1, n)) for n in lengths]
        return case(r, prompts, lengths, V=int(r.choice([8, 76, 79])))
    cases += seeded_cases(make, 20, seed=401)

    def compare(got, expected, what):
        _expect_loss_tensor(got, what)
        if got.numel() != 1:
            raise Hint(f"{what}: return one number (a 0-d tensor), got shape {tuple(got.shape)}")
        expect_close(got.reshape(()), expected, what, atol=1e-4, rtol=1e-4)

    compare_with_reference(fn, reference_response_loss, cases, compare, "response_loss",
                           diagnose=_diagnose_response_loss)
    return "The model is graded on its answers only; the prompt is given, not learned."


# ---- exercise 5: the DPO loss -----------------------------------------------------------------


def reference_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return preferences.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)[0]


def _diagnose_dpo(got, expected, pc, pr, rc, rr, beta) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() != 1:
        return f"return the mean over the batch, one number (got shape {tuple(got.shape)})"
    try:
        got = torch.as_tensor(float(got)).double()
    except (TypeError, ValueError, RuntimeError):
        return None
    if not torch.isfinite(got):
        return ("the loss is inf or NaN: -log(sigmoid(z)) overflows when z is very negative; "
                "use F.logsigmoid(z), which computes it stably")
    pc, pr, rc, rr = (t.double() for t in (pc, pr, rc, rr))
    margin = (pc - rc) - (pr - rr)
    named = [
        (-F.logsigmoid(beta * (pc - pr)).mean(), "the reference model is missing: the reward is "
                                                 "beta · (log π − log π_ref), not beta · log π"),
        (-F.logsigmoid(-beta * margin).mean(), "the sign is flipped: the loss must fall when the "
                                               "chosen response gains on the rejected one"),
        (-F.logsigmoid(margin).mean(), "beta is missing: both rewards are beta times a log-ratio"),
        (-torch.sigmoid(beta * margin).mean(), "that is -sigmoid; the loss is -log sigmoid "
                                               "(F.logsigmoid)"),
        ((1 - torch.sigmoid(beta * margin)).mean(), "that is 1 - sigmoid; the loss is "
                                                    "-log sigmoid (F.logsigmoid)"),
        (-F.logsigmoid(beta * margin).sum(), "that is the sum over the batch; take the mean"),
        (F.logsigmoid(beta * margin).mean(), "the minus sign is missing: the loss is "
                                             "-log sigmoid(...), which is positive"),
    ]
    for candidate, hint in named:
        if abs(candidate - expected) > 1e-5 and abs(got - candidate) < 1e-4:
            return hint
    return None


@grader
def dpo_loss(fn):
    """Exercise 5: dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) ->
    mean of -log sigmoid(beta · ((π_c - ref_c) - (π_r - ref_r)))."""
    t = torch.tensor
    cases = [
        (t([-5.0]), t([-7.0]), t([-6.0]), t([-6.0]), 0.5),
        (t([-20.0, -35.0]), t([-25.0, -30.0]), t([-22.0, -33.0]), t([-24.0, -31.0]), 0.1),
        (t([-40.0, -12.0, -80.0]), t([-41.0, -15.0, -60.0]),
         t([-40.0, -12.0, -80.0]), t([-41.0, -15.0, -60.0]), 0.1),    # policy = reference
        (t([-10.0, -60.0]), t([-50.0, -20.0]), t([-30.0, -40.0]), t([-30.0, -40.0]), 1.0),
        (t([-300.0, -5.0]), t([-5.0, -90.0]), t([-10.0, -50.0]), t([-10.0, -50.0]), 1.0),
        # ^ the policy hugely prefers the rejected answer: -log(sigmoid(z)) overflows
    ]

    def make(r):
        n = int(r.integers(1, 9))
        ref_c = torch.from_numpy(-r.uniform(5, 150, n)).float()
        ref_r = torch.from_numpy(-r.uniform(5, 150, n)).float()
        pol_c = ref_c + torch.from_numpy(r.normal(0, 4, n)).float()
        pol_r = ref_r + torch.from_numpy(r.normal(0, 4, n)).float()
        return (pol_c, pol_r, ref_c, ref_r, float(r.choice([0.05, 0.1, 0.3, 0.5, 1.0])))
    cases += seeded_cases(make, 25, seed=501)

    def compare(got, expected, what):
        _expect_loss_tensor(got, what)
        if got.numel() != 1:
            raise Hint(f"{what}: return one number, the mean over the batch (got shape "
                       f"{tuple(got.shape)})")
        expect_close(got.reshape(()), expected, what, atol=1e-5, rtol=1e-4)

    compare_with_reference(fn, reference_dpo_loss, cases, compare, "dpo_loss",
                           diagnose=_diagnose_dpo)
    return ("No reward model, no sampling: a logistic loss on how much more the policy than the "
            "reference prefers the chosen answer.")
