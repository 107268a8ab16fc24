"""The tuning loops: instruction tuning (SFT) and preference tuning (DPO) (chapter 11).

Chapter 10 wrote both steps out cell by cell; here they are two functions that train a model
in place and return the loss of every step, so chapter 11 can tune the BPE model with one
call each and `data/build_tuned_models.py` can ship the results:

    losses = instruction_tune(model, chat, load_chat_tasks("train"), steps=400)
    losses = preference_tune(model, chat, load_chat_preferences("train"), steps=150)
    preference_accuracy(model, chat, load_chat_preferences("test"))

Both are deterministic for a seed: the batches come from a seeded generator, the model has no
dropout, and each call seeds torch's global generator too (for anything in the model that
draws from it). Both leave the model in eval mode, ready to answer.

Preference pairs go through the same chat template as instructions: the prompt is
`format_prompt(instruction)` and each response ends with <|end|> (`encode_chat_pair`), so a
rejected answer that does not stop, or stops too soon, is scored as exactly that.
"""

from __future__ import annotations

import copy
import numbers
import random
from collections.abc import Callable, Sequence

import torch
from torch import nn

from utils.chat import Turn, encode_chat
from utils.instructions import IGNORE_INDEX, collate, encode_example, instruction_batches, masked_lm_loss
from utils.preferences import Preference, dpo_loss, preference_logprobs


def _check_loop(steps: int, batch_size: int, lr: float, examples: Sequence, what: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not examples:
        raise ValueError(f"{what}: need at least one to train on")


def instruction_tune(model: nn.Module, tokenizer, examples: Sequence, steps: int,
                     batch_size: int = 16, lr: float = 3e-4, seed: int = 0,
                     device: torch.device | str = "cpu",
                     callback: Callable[[int, float], None] | None = None,
                     weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                     final_lr: float | None = None, max_history: int = 0) -> list[float]:
    """Supervised fine-tuning on (instruction, response) examples; returns the loss per step.

    `model` must already know the special tokens (`add_special_tokens`) and `tokenizer` is its
    ChatTokenizer. Each step takes `batch_size` examples from `instruction_batches` (shuffled
    with `seed`, every example once per epoch), computes the loss on response tokens only
    (`masked_lm_loss`) and takes one AdamW step at `lr`, or, with `final_lr`, at an lr that
    falls in a straight line from `lr` at the first step to `final_lr` at the last (small
    last steps settle the weights instead of leaving them wherever the last large step threw
    them); gradients are clipped to a global norm of `grad_clip` (None: not clipped).
    `callback(step, loss)`, if given, is called after every step (step counts from 1), e.g.
    to draw a live loss curve. `max_history` > 0 puts up to that many other exchanges in
    front of each example (`conversation_batches`), so the model also learns to answer in the
    middle of a chat.
    """
    _check_loop(steps, batch_size, lr, examples, "examples")
    if final_lr is not None and (isinstance(final_lr, bool) or not isinstance(final_lr, numbers.Real)
                                 or not 0 <= final_lr <= lr):
        raise ValueError(f"final_lr must be a number in [0, lr={lr}], or None; got {final_lr!r}")
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    batches = (conversation_batches(tokenizer, examples, batch_size, steps, max_history,
                                    model.config.block_size, seed, device) if max_history
               else instruction_batches(tokenizer, examples, batch_size, steps, seed, device))
    for step, (x, y) in enumerate(batches, 1):
        if final_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr + (final_lr - lr) * (step - 1) / max(steps - 1, 1)
        logits, _ = model(x)
        loss = masked_lm_loss(logits, y)
        _update(model, optimizer, loss, grad_clip)
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return losses


def _update(model: nn.Module, optimizer, loss: torch.Tensor, grad_clip: float | None) -> None:
    """One optimizer step on `loss`, with the global gradient norm clipped to `grad_clip`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def conversation_batches(tokenizer, examples: Sequence, batch_size: int, steps: int,
                         max_history: int, block_size: int, seed: int = 0,
                         device: torch.device | str = "cpu"):
    """Yield `steps` batches (x, y) of short conversations for multi-turn instruction tuning.

    Each row is one example (the examples are shuffled and taken once per epoch, as in
    `instruction_batches`) with 0 to `max_history` other examples, drawn at random, as earlier
    exchanges in front of it. A model tuned on single exchanges has only ever seen its
    question right after the first <|instruction|>, and chapter 11 measures how badly it
    answers after a history. The conversation is laid out by `utils.chat.encode_chat`, and
    its mask puts the loss on every reply and its <|end|>, none of the user turns. While a
    conversation is longer than block_size + 1 tokens its oldest exchange is dropped. Rows
    are right-padded, as in `collate`: x = ids[:-1], y = ids[1:] where learned, else
    IGNORE_INDEX.
    """
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 0:
        raise ValueError(f"max_history must be a whole number >= 0, got {max_history!r}")
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        chosen, order = order[:batch_size], order[batch_size:]
        rows = []
        for i in chosen:
            history = rng.sample(range(len(examples)), min(rng.randint(0, max_history), len(examples)))
            turns = [Turn(role, text) for j in [*history, i]
                     for role, text in (("user", examples[j].instruction),
                                        ("assistant", examples[j].response))]
            ids, mask = encode_chat(tokenizer, turns)
            while len(ids) > block_size + 1 and len(turns) > 2:
                turns = turns[2:]
                ids, mask = encode_chat(tokenizer, turns)
            if len(ids) > block_size + 1:
                raise ValueError(f"examples[{i}] alone has {len(ids)} tokens, more than "
                                 f"block_size + 1 = {block_size + 1}; shorten it")
            rows.append((torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)))
        width = max(len(ids) for ids, _ in rows) - 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, mask) in enumerate(rows):
            x[row, :len(ids) - 1] = ids[:-1]
            y[row, :len(ids) - 1] = ids[1:].masked_fill(~mask[1:], IGNORE_INDEX)
        yield x.to(device), y.to(device)


# --------------------------------------------------------------------------------- preferences

def encode_chat_pair(tokenizer, instruction: str, response: str) -> tuple[list[int], int]:
    """(ids, prompt length) of one response in the chat template: the prompt is
    <|instruction|> instruction <|response|>, the response ends with <|end|>."""
    return encode_example(tokenizer, instruction, response)


def collate_chat_preferences(tokenizer, pairs: Sequence[Preference],
                             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Like `utils.preferences.collate_preferences`, in the chat template: x, y [2B, L] with
    every chosen response in rows 0..B-1 and every rejected one in rows B..2B-1, prompts
    masked, so `preference_logprobs` scores both halves in one forward pass."""
    if not pairs:
        raise ValueError("pairs: need at least one preference pair")
    examples = ([encode_chat_pair(tokenizer, p.prompt, p.chosen) for p in pairs]
                + [encode_chat_pair(tokenizer, p.prompt, p.rejected) for p in pairs])
    return collate(examples, device=device)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with no parameter requiring gradients: a DPO reference."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _pair_batches(n: int, batch_size: int, steps: int, seed: int):
    """Lists of `batch_size` indices into n pairs, shuffled with `seed`, once per epoch."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        yield chosen


def preference_tune(model: nn.Module, tokenizer, pairs: Sequence[Preference], steps: int,
                    batch_size: int = 8, lr: float = 1e-5, beta: float = 0.1, seed: int = 0,
                    device: torch.device | str = "cpu", reference: nn.Module | None = None,
                    callback: Callable[[int, float], None] | None = None,
                    grad_clip: float | None = 1.0, nll_weight: float = 0.0) -> list[float]:
    """Direct preference optimisation on chat-template pairs; returns the DPO loss per step.

    `reference` is the frozen model the implicit rewards are measured against; None makes one
    inside, a `frozen_copy` of `model` as it is before the first step (the usual choice: the
    instruction-tuned model). It is never updated. Each step scores `batch_size` pairs
    (shuffled with `seed`) under both models and takes one AdamW step on `dpo_loss`. DPO
    needs a much smaller lr than SFT: its loss keeps pushing the two log-probabilities apart,
    and a large step moves the model far from the reference that keeps its answers fluent.

    DPO only asks the chosen response to gain on the rejected one, so it can lower both, and
    the model's own greedy answers with them. `nll_weight` > 0 adds that many times the SFT
    loss on the chosen responses (their mean negative log-likelihood per token), which holds
    the chosen answers up while the margin grows (the loss RPO uses, Pang et al. 2024). The
    returned losses are the DPO part alone, comparable between runs with and without it.
    """
    _check_loop(steps, batch_size, lr, pairs, "pairs")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if isinstance(nll_weight, bool) or not isinstance(nll_weight, numbers.Real) or nll_weight < 0:
        raise ValueError(f"nll_weight must be a number >= 0, got {nll_weight!r}")
    torch.manual_seed(seed)
    model.to(device)
    reference = frozen_copy(model) if reference is None else reference.to(device).eval()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step, indices in enumerate(_pair_batches(len(pairs), batch_size, steps, seed), 1):
        x, y = collate_chat_preferences(tokenizer, [pairs[i] for i in indices], device)
        with torch.no_grad():
            ref_chosen, ref_rejected = preference_logprobs(reference, x, y)
        chosen, rejected = preference_logprobs(model, x, y)
        loss, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
        total = loss
        if nll_weight:
            chosen_tokens = (y[: len(indices)] != IGNORE_INDEX).sum()
            total = loss - nll_weight * chosen.sum() / chosen_tokens
        _update(model, optimizer, total, grad_clip)
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return losses


def mistake_pairs(model: nn.Module, tokenizer, examples: Sequence) -> list[Preference]:
    """Preference pairs made of the model's own mistakes: for every example the model answers
    wrongly (greedy, as `evaluate_instructions` scores it), chosen = the right answer and
    rejected = the model's answer (rule "own mistake"; an answer cut off before its <|end|>
    is kept as far as it got).

    Rule-made wrong answers are often ones the tuned model already avoids; its own mistakes
    are, by construction, answers it prefers, so they are where preference tuning can change
    something. Real pipelines do the same at scale: sample from the model, then rank.
    """
    from utils.instructions import UNFINISHED, evaluate_instructions

    was_training = model.training
    model.eval()
    try:
        _, answers = evaluate_instructions(model, tokenizer, examples)
    finally:
        model.train(was_training)
    pairs = []
    for e, got in zip(examples, answers, strict=True):
        rejected = got.removesuffix(UNFINISHED)
        if got != e.response and rejected != e.response:
            pairs.append(Preference(e.instruction, e.response, rejected, "own mistake", e.split))
    return pairs


@torch.no_grad()
def pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[Preference], batch_size: int = 64,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(chosen | prompt), log p(rejected | prompt)), each [len(pairs)], in eval mode;
    each response's log-probability includes its <|end|>."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    try:
        for start in range(0, len(pairs), batch_size):
            x, y = collate_chat_preferences(tokenizer, pairs[start:start + batch_size], device)
            c, r = preference_logprobs(model, x, y)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_accuracy(model: nn.Module, tokenizer, pairs: Sequence[Preference],
                        reference: nn.Module | None = None) -> float:
    """Fraction of pairs on which the model prefers the chosen response.

    Without a reference, "prefers" means log p(chosen | prompt) > log p(rejected | prompt)
    under `model` alone: which answer it would rather give, the measure of the model itself.
    With a `reference`, it means DPO's implicit reward margin is positive:

        (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)) > 0,

    i.e. tuning moved the chosen response up relative to the rejected one (beta > 0 scales the
    margin but not its sign). This is the "reward accuracy" DPO trainers log; a model equal
    to its reference scores 0 on it (every margin is 0, and 0 is not > 0).
    """
    if not pairs:
        raise ValueError("pairs: need at least one preference pair")
    chosen, rejected = pair_logprobs(model, tokenizer, pairs)
    if reference is not None:
        ref_chosen, ref_rejected = pair_logprobs(reference, tokenizer, pairs)
        chosen, rejected = chosen - ref_chosen, rejected - ref_rejected
    return (chosen > rejected).float().mean().item()
