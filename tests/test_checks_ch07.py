"""Chapter 07 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import math

import torch
import torch.nn.functional as F

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.activation_memory import activation_bytes_per_layer
from utils.checks import ch07 as check
from utils.losses import next_token_loss
from utils.muon import newton_schulz
from utils.optim import adamw_step, clip_grad_norm, lr_at

# ---- exercise 1: the next-token loss ----------------------------------------------------


def solution_loss(logits, tokens):
    targets = tokens[:, 1:]
    logits = logits - logits.max(dim=-1, keepdim=True).values
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return -logp.gather(-1, targets.unsqueeze(-1)).mean()


def test_loss_accepts_solution_and_library():
    assert_accepts(check.next_token_loss, solution_loss)
    assert_accepts(check.next_token_loss, next_token_loss)


def test_loss_rejects_the_shortcuts_the_exercise_rules_out():
    # right numbers, but the exercise asks for the loss from its definition
    def library(logits, tokens):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))

    def module(logits, tokens):
        return torch.nn.CrossEntropyLoss()(logits.reshape(-1, logits.size(-1)),
                                           tokens[:, 1:].reshape(-1))

    def log_softmax_method(logits, tokens):
        return -logits.log_softmax(-1).gather(-1, tokens[:, 1:].unsqueeze(-1)).mean()

    def functional_log_softmax(logits, tokens):
        return -F.log_softmax(logits, -1).gather(-1, tokens[:, 1:].unsqueeze(-1)).mean()
    for answer, name in ((library, "F.cross_entropy"), (module, "F.cross_entropy"),
                         (log_softmax_method, "log_softmax"),
                         (functional_log_softmax, "F.log_softmax")):
        hint = assert_rejects(check.next_token_loss, answer)
        assert name in hint and "rules out" in hint, hint


def test_loss_grader_tries_more_than_its_first_case():
    def naive(logits, tokens):   # right on small logits, nan once exp() overflows
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return -p.gather(-1, tokens[:, 1:].unsqueeze(-1)).log().mean()
    assert_rejects(check.next_token_loss, right_on_first_call_only(solution_loss, naive))


def test_loss_rejects_unstable_softmax():
    def naive(logits, tokens):
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return -p.gather(-1, tokens[:, 1:].unsqueeze(-1)).log().mean()
    assert "overflow" in assert_rejects(check.next_token_loss, naive)


def test_loss_rejects_missing_shift():
    def unshifted(logits, tokens):
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, :-1].flatten())
    assert "NEXT token" in assert_rejects(check.next_token_loss, unshifted)


def test_loss_rejects_sum_and_wrong_averages():
    def summed(logits, tokens):
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
    assert "sum" in assert_rejects(check.next_token_loss, summed)

    def over_vocab_too(logits, tokens):
        logp = F.log_softmax(logits, -1)
        return -logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).sum() / logp.numel()
    assert "vocabulary" in assert_rejects(check.next_token_loss, over_vocab_too)

    def per_position(logits, tokens):
        return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    assert "one number" in assert_rejects(check.next_token_loss, per_position)


def test_loss_rejects_bits_and_wrong_sign():
    def bits(logits, tokens):
        return next_token_loss(logits, tokens) / math.log(2)
    assert "bits" in assert_rejects(check.next_token_loss, bits)

    def positive_logp(logits, tokens):
        return -next_token_loss(logits, tokens)
    assert "sign" in assert_rejects(check.next_token_loss, positive_logp)


def test_loss_rejects_shape_bug_that_only_works_for_batch_one():
    def view_bug(logits, tokens):  # .view on the non-contiguous logits the grader passes fails
        return F.cross_entropy(logits.view(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
    assert_rejects(check.next_token_loss, view_bug)


def test_loss_not_attempted():
    assert_not_attempted(check.next_token_loss, stub)


# ---- exercise 2: the loss at initialisation ---------------------------------------------


def test_loss_at_init_accepts_ln_v():
    assert_accepts(check.loss_at_init, math.log)
    assert_accepts(check.loss_at_init, lambda V: F.cross_entropy(
        torch.zeros(1, V), torch.zeros(1, dtype=torch.long)).item())


def test_loss_at_init_rejects_other_logs_probabilities_and_signs():
    assert "log base 2" in assert_rejects(check.loss_at_init, math.log2)
    assert "log base 10" in assert_rejects(check.loss_at_init, math.log10)
    assert "probability" in assert_rejects(check.loss_at_init, lambda V: 1 / V)
    assert "MINUS" in assert_rejects(check.loss_at_init, lambda V: -math.log(V))
    assert_rejects(check.loss_at_init, lambda V: math.log(V + 1))   # counts a token too many
    assert "number" in assert_rejects(check.loss_at_init, lambda V: f"{math.log(V):.3f}")


def test_loss_at_init_says_keep_more_decimals_for_a_rounded_answer():
    hint = assert_rejects(check.loss_at_init, lambda V: round(math.log(V), 4))
    assert "unrounded" in hint and "too small" not in hint, hint
    hint = assert_rejects(check.loss_at_init, lambda V: round(math.log(V), 2))
    assert "unrounded" in hint, hint


def test_loss_at_init_grader_tries_more_than_its_first_case():
    assert_rejects(check.loss_at_init, right_on_first_call_only(math.log, math.log2))


def test_loss_at_init_not_attempted():
    assert_not_attempted(check.loss_at_init, stub)


# ---- exercise 3: the schedule -----------------------------------------------------------


def solution_schedule(step, max_lr, warmup_steps, total_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def test_schedule_accepts_solution_and_library():
    assert_accepts(check.lr_schedule, solution_schedule)
    assert_accepts(check.lr_schedule, lr_at)


def test_schedule_rejects_warmup_off_by_one():
    def late(step, max_lr, warmup_steps, total_steps, min_lr):
        if step < warmup_steps:
            return max_lr * step / warmup_steps
        return solution_schedule(step, max_lr, warmup_steps, total_steps, min_lr)
    assert "(step + 1)" in assert_rejects(check.lr_schedule, late)


def test_schedule_rejects_decay_to_zero_and_cosine_from_step_zero():
    def to_zero(step, max_lr, warmup_steps, total_steps, min_lr):
        return solution_schedule(step, max_lr, warmup_steps, total_steps, 0.0) if \
            step < total_steps else min_lr
    assert "min_lr" in assert_rejects(check.lr_schedule, to_zero)

    def from_zero(step, max_lr, warmup_steps, total_steps, min_lr):
        if step < warmup_steps:
            return max_lr * (step + 1) / warmup_steps
        if step >= total_steps:
            return min_lr
        return min_lr + 0.5 * (1 + math.cos(math.pi * step / total_steps)) * (max_lr - min_lr)
    assert "end of warm-up" in assert_rejects(check.lr_schedule, from_zero)


def test_schedule_rejects_no_floor_after_total_and_linear_decay():
    def cosine_goes_back_up(step, max_lr, warmup_steps, total_steps, min_lr):
        if step < warmup_steps:
            return max_lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    assert "stays at min_lr" in assert_rejects(check.lr_schedule, cosine_goes_back_up)

    def linear(step, max_lr, warmup_steps, total_steps, min_lr):
        if step < warmup_steps:
            return max_lr * (step + 1) / warmup_steps
        if step >= total_steps:
            return min_lr
        return max_lr - (step - warmup_steps) / (total_steps - warmup_steps) * (max_lr - min_lr)
    assert "linear" in assert_rejects(check.lr_schedule, linear)


def test_schedule_grader_tries_more_than_its_first_case():
    def warmup_only(step, max_lr, warmup_steps, total_steps, min_lr):   # forgot the decay
        return max_lr * min(step + 1, warmup_steps) / warmup_steps
    assert_rejects(check.lr_schedule, right_on_first_call_only(solution_schedule, warmup_only))


def test_schedule_not_attempted():
    assert_not_attempted(check.lr_schedule, stub)


# ---- exercise 4: one AdamW step ---------------------------------------------------------


def solution_adamw(param, grad, m, v, step, lr, betas, eps, weight_decay):
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    param = param - lr * weight_decay * param
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v


def test_adamw_accepts_solution_and_library():
    assert_accepts(check.adamw_step, solution_adamw)
    assert_accepts(check.adamw_step, adamw_step)


def test_adamw_rejects_missing_bias_correction():
    def no_correction(param, grad, m, v, step, lr, betas, eps, weight_decay):
        b1, b2 = betas
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
        return param * (1 - lr * weight_decay) - lr * m / (v.sqrt() + eps), m, v
    assert "bias correction" in assert_rejects(check.adamw_step, no_correction)


def test_adamw_rejects_l2_instead_of_decoupled_decay():
    def l2(param, grad, m, v, step, lr, betas, eps, weight_decay):
        return solution_adamw(param, grad + weight_decay * param, m, v, step, lr, betas, eps, 0.0)
    assert "L2" in assert_rejects(check.adamw_step, l2)


def test_adamw_rejects_step_off_by_one_and_missing_decay():
    def step_plus_one(param, grad, m, v, step, lr, betas, eps, weight_decay):
        return solution_adamw(param, grad, m, v, step + 1, lr, betas, eps, weight_decay)
    assert "step + 1" in assert_rejects(check.adamw_step, step_plus_one)

    def no_decay(param, grad, m, v, step, lr, betas, eps, weight_decay):
        return solution_adamw(param, grad, m, v, step, lr, betas, eps, 0.0)
    assert "decay is missing" in assert_rejects(check.adamw_step, no_decay)


def test_adamw_rejects_eps_inside_sqrt_in_place_updates_and_wrong_return():
    def eps_inside(param, grad, m, v, step, lr, betas, eps, weight_decay):
        b1, b2 = betas
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        return param * (1 - lr * weight_decay) - lr * m_hat / (v_hat + eps).sqrt(), m, v
    assert "inside the square root" in assert_rejects(check.adamw_step, eps_inside)

    def in_place(param, grad, m, v, step, lr, betas, eps, weight_decay):
        new_p, new_m, new_v = solution_adamw(param, grad, m, v, step, lr, betas, eps, weight_decay)
        m.copy_(new_m)
        return new_p, new_m, new_v
    assert "changed its input" in assert_rejects(check.adamw_step, in_place)

    def only_param(param, grad, m, v, step, lr, betas, eps, weight_decay):
        return solution_adamw(param, grad, m, v, step, lr, betas, eps, weight_decay)[0]
    assert "tuple" in assert_rejects(check.adamw_step, only_param)


def test_adamw_rejects_decay_after_the_step_by_name():
    def decay_after(param, grad, m, v, step, lr, betas, eps, weight_decay):
        new_p, m, v = solution_adamw(param, grad, m, v, step, lr, betas, eps, 0.0)
        return new_p * (1 - lr * weight_decay), m, v
    hint = assert_rejects(check.adamw_step, decay_after)
    assert "decay comes after the Adam step" in hint, hint


def test_adamw_hint_never_prints_two_identical_numbers():
    # a slip the grader has no name for: the hint must still show the numbers differing
    def tiny_slip(param, grad, m, v, step, lr, betas, eps, weight_decay):
        new_p, m, v = solution_adamw(param, grad, m, v, step, lr, betas, eps, weight_decay)
        return new_p * (1 + 1e-6), m, v
    hint = assert_rejects(check.adamw_step, tiny_slip)
    shown = hint.split("new param[")[1].split(" is ")[1].split(" (off by")[0]
    got, expected = shown.split(", expected ")
    assert got != expected, hint


def test_adamw_grader_tries_more_than_its_first_case():
    def l2(param, grad, m, v, step, lr, betas, eps, weight_decay):
        return solution_adamw(param, grad + weight_decay * param, m, v, step, lr, betas, eps, 0.0)
    assert_rejects(check.adamw_step, right_on_first_call_only(solution_adamw, l2))


def test_adamw_not_attempted():
    assert_not_attempted(check.adamw_step, stub)


# ---- exercise 5: clip the global gradient norm ------------------------------------------


def solution_clip(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


def clip_variant(parameters, max_norm, *, per_tensor=False, returned="before", scale_up=False,
                 norm_of=lambda g: (g ** 2).sum(), root=True, only_first=False, eps=1e-6):
    """The solution with one slip, chosen by keyword."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = sum(norm_of(g) for g in grads)
    total = total.sqrt() if root else total
    for i, g in enumerate(grads):
        if only_first and i > 0:
            break
        norm = g.norm() if per_tensor else total
        if norm > max_norm or scale_up:
            g.mul_(max_norm / (norm + eps))
    return min(total, torch.tensor(max_norm)) if returned == "after" else total


def test_clip_accepts_solution_and_library():
    assert_accepts(check.clip_grad_norm, solution_clip)
    assert_accepts(check.clip_grad_norm, clip_grad_norm)
    assert_accepts(check.clip_grad_norm, clip_variant)

    def new_grad_tensors(parameters, max_norm):      # p.grad = ... instead of in place: fine
        parameters = list(parameters)
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in parameters if p.grad is not None))
        for p in parameters:
            if p.grad is not None:
                p.grad = p.grad * torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        return norm.item()
    assert_accepts(check.clip_grad_norm, new_grad_tensors)


def test_clip_rejects_per_tensor_clipping():
    hint = assert_rejects(check.clip_grad_norm, lambda p, m: clip_variant(p, m, per_tensor=True))
    assert "its own norm" in hint, hint


def test_clip_rejects_a_missing_or_wrong_norm():
    def no_return(parameters, max_norm):
        solution_clip(parameters, max_norm)
    assert "forget a `return`" in assert_rejects(check.clip_grad_norm, no_return)
    hint = assert_rejects(check.clip_grad_norm, lambda p, m: clip_variant(p, m, returned="after"))
    assert "after clipping" in hint, hint
    hint = assert_rejects(check.clip_grad_norm, lambda p, m: clip_variant(p, m, root=False))
    assert "square root" in hint, hint
    hint = assert_rejects(check.clip_grad_norm,
                          lambda p, m: clip_variant(p, m, norm_of=lambda g: g.abs().sum(),
                                                    root=False))
    assert "L1" in hint, hint


def test_clip_rejects_scaling_up_and_scaling_only_the_first():
    hint = assert_rejects(check.clip_grad_norm, lambda p, m: clip_variant(p, m, scale_up=True))
    assert "scaled UP" in hint, hint
    hint = assert_rejects(check.clip_grad_norm, lambda p, m: clip_variant(p, m, only_first=True))
    assert "only the first" in hint, hint
    hint = assert_rejects(check.clip_grad_norm, lambda p, m: clip_variant(p, m, eps=0.0))
    assert "1e-6" in hint, hint


def test_clip_rejects_a_crash_on_a_frozen_parameter():
    def every_grad(parameters, max_norm):
        parameters = list(parameters)
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in parameters))
        for p in parameters:
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm
    hint = assert_rejects(check.clip_grad_norm, every_grad)
    assert "skip it" in hint, hint


def test_clip_rejects_walking_a_generator_twice_and_clipping_the_weights():
    def twice(parameters, max_norm):
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in parameters if p.grad is not None))
        for p in parameters:          # a generator is empty by now
            if p.grad is not None:
                p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm
    assert "generator" in assert_rejects(check.clip_grad_norm, twice)

    def weights(parameters, max_norm):
        parameters = list(parameters)
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in parameters if p.grad is not None))
        with torch.no_grad():
            for p in parameters:
                p.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm
    assert "parameters themselves" in assert_rejects(check.clip_grad_norm, weights)


def test_clip_rejects_torchs_clip_helpers():
    def torch_clip(parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)

    def torch_parts(parameters, max_norm):
        parameters = list(parameters)
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
        return norm
    for answer in (torch_clip, torch_parts):
        hint = assert_rejects(check.clip_grad_norm, answer)
        assert "rules out" in hint and "clip_grad_norm_" in hint, hint


def test_clip_grader_tries_more_than_its_first_case():
    wrong = right_on_first_call_only(solution_clip, lambda p, m: clip_variant(p, m, per_tensor=True))
    assert_rejects(check.clip_grad_norm, wrong)


def test_clip_not_attempted():
    assert_not_attempted(check.clip_grad_norm, stub)


# ---- exercise 6: Newton-Schulz ------------------------------------------------------------


def solution_ns(G, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def ns_variant(G, steps=5, *, normalise=lambda X: X / X.norm().clamp(min=1e-7),
               coefficients=(3.4445, -4.7750, 2.0315), flip=lambda G: G.size(0) > G.size(1),
               back=True, iterations=None, gram_left=True):
    a, b, c = coefficients
    X = G.float()
    transposed = flip(G)
    X = X.T if transposed else X
    X = normalise(X)
    for _ in range(steps if iterations is None else iterations):
        A = X @ X.T if gram_left else X.T @ X
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed and back else X


def test_ns_accepts_solution_library_and_the_right_hand_form():
    assert_accepts(check.newton_schulz, solution_ns)
    assert_accepts(check.newton_schulz, lambda G, steps: newton_schulz(G, steps,
                                                                       dtype=torch.float32))
    assert_accepts(check.newton_schulz, ns_variant)

    def eps_added(G, steps):          # norm + eps instead of clamp: the same numbers
        return ns_variant(G, steps, normalise=lambda X: X / (X.norm() + 1e-7))
    assert_accepts(check.newton_schulz, eps_added)


def test_ns_rejects_wrong_normalisations():
    for normalise in (lambda X: X, lambda X: X / X.abs().max()):      # none, largest entry
        hint = assert_rejects(check.newton_schulz, lambda G, s, n=normalise: ns_variant(
            G, s, normalise=n))
        assert "Frobenius" in hint and "largest entry" in hint, hint
    spectral = lambda G, s: ns_variant(G, s, normalise=lambda X: X / torch.linalg.matrix_norm(
        X, ord=2))
    assert "spectral" in assert_rejects(check.newton_schulz, spectral)
    no_eps = lambda G, s: ns_variant(G, s, normalise=lambda X: X / X.norm())
    assert "clamp" in assert_rejects(check.newton_schulz, no_eps)

    def in_place(G, steps):
        X = G if G.size(0) <= G.size(1) else G.T
        X /= X.norm().clamp(min=1e-7)          # divides G itself
        return ns_variant(G.clone(), steps, normalise=lambda X: X)
    assert "changed its input" in assert_rejects(check.newton_schulz, in_place)


def test_ns_rejects_wrong_transposes():
    hint = assert_rejects(check.newton_schulz, lambda G, s: ns_variant(G, s, back=False))
    assert "back at the end" in hint, hint
    for flip in (lambda G: G.size(0) < G.size(1), lambda G: False):   # wide, or never
        hint = assert_rejects(check.newton_schulz, lambda G, s, flip=flip: ns_variant(
            G, s, flip=flip))
        assert "TALL" in hint and "32 x 32" in hint, hint


def test_ns_rejects_coefficient_order_one_iteration_and_the_wrong_side():
    hint = assert_rejects(check.newton_schulz, lambda G, s: ns_variant(
        G, s, coefficients=(2.0315, -4.7750, 3.4445)))
    assert "wrong order" in hint, hint
    hint = assert_rejects(check.newton_schulz, lambda G, s: ns_variant(
        G, s, coefficients=(3.4445, 2.0315, -4.7750)))
    assert "b = -4.7750" in hint, hint          # it blows up: the hint names the coefficients
    hint = assert_rejects(check.newton_schulz, lambda G, s: ns_variant(G, s, iterations=1))
    assert "one iteration" in hint, hint
    hint = assert_rejects(check.newton_schulz, lambda G, s: ns_variant(G, s, gram_left=False))
    assert "on the left" in hint or "wrong side" in hint, hint


def test_ns_rejects_bfloat16():
    # the library's default dtype: right for Muon on a GPU, not the float32 the exercise asks
    hint = assert_rejects(check.newton_schulz, lambda G, s: newton_schulz(G, s))
    assert "float32" in hint, hint


def test_ns_rejects_an_svd():
    def svd(G, steps):
        U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
        return U @ Vh                                   # exact U Vᵀ: not what is asked either
    assert_rejects(check.newton_schulz, svd)

    def svd_norm(G, steps):                             # right numbers, but an SVD inside
        return ns_variant(G, steps) + 0 * torch.linalg.svdvals(G.float()).sum()
    hint = assert_rejects(check.newton_schulz, svd_norm)
    assert "rules out" in hint and "svd" in hint, hint


def test_ns_grader_tries_more_than_its_first_case():
    # right on square matrices, where there is nothing to transpose back
    wrong = right_on_first_call_only(solution_ns, lambda G, s: ns_variant(G, s, back=False))
    assert_rejects(check.newton_schulz, wrong)

    def square_only(G, steps):
        return solution_ns(G, steps) if G.size(0) == G.size(1) else ns_variant(G, steps,
                                                                                back=False)
    assert_rejects(check.newton_schulz, square_only)


def test_ns_not_attempted():
    assert_not_attempted(check.newton_schulz, stub)


# ---- exercise 7: one block's activation memory --------------------------------------------


def solution_activation(batch, seq_len, n_embd, n_head, bytes_per_value):
    N, d = batch * seq_len, n_embd
    values = N * (d + 2 + d + 3 * d + d        # norm1 in, mean & 1/std, qkv in, q k v, attn out
                  + d + 2 + d + 4 * d + 4 * d)  # norm2 in, its stats, up in, hidden twice
    return values * bytes_per_value + N * n_head * 4   # + the float32 logsumexp per head


def activation_variant(batch, seq_len, n_embd, n_head, b, *, weights=0, hidden=2, qkv=3,
                       lse_heads=True, lse_bytes=4, value_bytes=None, proj_again=0, stats=2,
                       linear_inputs=1):
    N, d = batch * seq_len, n_embd
    b = b if value_bytes is None else value_bytes
    values = N * (2 * d + 2 * stats + 2 * linear_inputs * d + qkv * d + d + hidden * 4 * d
                  + proj_again * d)
    lse = N * (n_head if lse_heads else 1) * lse_bytes
    return values * b + lse + weights * batch * n_head * seq_len * seq_len * b


def test_activation_accepts_solution_and_library():
    assert_accepts(check.activation_bytes, solution_activation)
    assert_accepts(check.activation_bytes, activation_bytes_per_layer)
    assert_accepts(check.activation_bytes, activation_variant)
    assert_accepts(check.activation_bytes, lambda *a: float(solution_activation(*a)))


def test_activation_rejects_counting_the_attention_weights():
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, weights=1))
    assert "never stores them" in hint, hint


def test_activation_rejects_the_hidden_layer_once_and_qkv_one_wide():
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, hidden=1))
    assert "kept twice" in hint, hint
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, qkv=1))
    assert "3 x n_embd" in hint, hint
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, qkv=0))
    assert "q, k and v are missing" in hint, hint


def test_activation_rejects_forgetting_n_head_and_the_float32_logsumexp():
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(
        *a, lse_heads=False))
    assert "per head" in hint, hint
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, lse_bytes=0))
    assert "logsumexp" in hint, hint

    def lse_in_dtype(batch, seq_len, n_embd, n_head, b):
        return activation_variant(batch, seq_len, n_embd, n_head, b, lse_bytes=b)
    assert "float32" in assert_rejects(check.activation_bytes, lse_in_dtype)


def test_activation_rejects_values_instead_of_bytes_and_double_counts():
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(
        *a, value_bytes=1, lse_bytes=1))
    assert "values, not bytes" in hint, hint
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, proj_again=1))
    assert "counted once" in hint, hint
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(*a, stats=0))
    assert "mean and 1/std" in hint, hint
    hint = assert_rejects(check.activation_bytes, lambda *a: activation_variant(
        *a, linear_inputs=0))
    assert "a tensor of its own" in hint, hint
    assert "number" in assert_rejects(check.activation_bytes, lambda *a: str(
        solution_activation(*a)))


def test_activation_grader_tries_more_than_its_first_case():
    # right for float32 only: the logsumexp counted in the activations' dtype
    def lse_in_dtype(batch, seq_len, n_embd, n_head, b):
        return activation_variant(batch, seq_len, n_embd, n_head, b, lse_bytes=b)
    assert_rejects(check.activation_bytes, right_on_first_call_only(solution_activation,
                                                                    lse_in_dtype))


def test_activation_not_attempted():
    assert_not_attempted(check.activation_bytes, stub)
