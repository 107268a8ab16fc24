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
from utils.checks import ch07 as check
from utils.losses import next_token_loss
from utils.optim import adamw_step, lr_at

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
