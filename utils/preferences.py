"""Preference tuning with DPO: raise a chosen response, lower a rejected one (chapter 10).

After instruction tuning (`utils.instructions`), each example is a prompt with a chosen and a
rejected response. Direct preference optimisation scores each response under the model being
trained and under a frozen reference model (`sequence_logprob`: log p(response | prompt)), and
`dpo_loss` raises the chosen one's log-probability relative to the reference and lowers the
rejected one's, with no reward model and no sampling. `collate_preferences` batches both halves
so that one forward pass scores them (`preference_logprobs`).

The dataset is built from the corpus by `data/build_preferences.py`; `load_preferences` reads
it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.instructions import IGNORE_INDEX, collate, read_jsonl
from utils.paths import DATA_DIR

PREFERENCES_FILE = DATA_DIR / "preferences.jsonl"


@dataclass(frozen=True)
class Preference:
    """One preference example (a line of data/preferences.jsonl)."""

    prompt: str
    chosen: str
    rejected: str
    rule: str          # why `rejected` is worse, e.g. "cut mid-word"
    split: str         # "train" or "test"


def load_preferences(split: str | None = None) -> list[Preference]:
    """The shipped preference dataset (all of it, or split="train" / "test")."""
    return read_jsonl(PREFERENCES_FILE, Preference, split)


# ------------------------------------------------------------------------------- scoring

def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of prompt + response, length of the prompt) for plain text, no special tokens."""
    prompt_ids = tokenizer.encode(prompt)
    return prompt_ids + tokenizer.encode(response), len(prompt_ids)


def sequence_logprob(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(response | prompt) for each row: the sum of the log-probabilities of the targets
    that are not IGNORE_INDEX. x, y [B, T] from `collate`; returns [B].

    Gradients flow (DPO trains through it); wrap in torch.no_grad() for a frozen model.
    """
    logits, _ = model(x)
    logp = torch.log_softmax(logits.float(), dim=-1)                          # [B, T, V]
    keep = y != IGNORE_INDEX
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)        # [B, T]
    return (picked * keep).sum(dim=-1)


def collate_preferences(tokenizer, pairs: Sequence[Preference], device: torch.device | str = "cpu",
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch holding every chosen response (rows 0..B-1), then every rejected one
    (rows B..2B-1), each after its prompt and with the prompt masked: x, y [2B, L].

    One forward pass then scores both halves (`preference_logprobs`), which is cheaper than
    two passes on a CPU."""
    examples = ([encode_pair(tokenizer, p.prompt, p.chosen) for p in pairs]
                + [encode_pair(tokenizer, p.prompt, p.rejected) for p in pairs])
    return collate(examples, device=device)


def preference_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(chosen), log p(rejected)), each [B], from a `collate_preferences` batch."""
    logp = sequence_logprob(model, x, y)
    return logp[: len(logp) // 2], logp[len(logp) // 2:]


# ------------------------------------------------------------------------------------------ DPO

def dpo_loss(policy_chosen_logp: torch.Tensor, policy_rejected_logp: torch.Tensor,
             ref_chosen_logp: torch.Tensor, ref_rejected_logp: torch.Tensor, beta: float = 0.1,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss, and the implicit rewards of the chosen and rejected responses.

    Each argument is [B]: log p(response | prompt) summed over the response's tokens, under
    the model being trained (policy) and under the frozen reference. The implicit reward of a
    response is how much more likely the policy makes it than the reference did:

        reward = beta * (log pi(response) - log ref(response))

    and the loss asks the chosen reward to beat the rejected one, through a logistic model
    of the preference (Bradley-Terry):

        loss = -log sigmoid(reward_chosen - reward_rejected),   averaged over the batch

    Rewards are returned detached: they are for monitoring, the loss carries the gradient.

    >>> loss, rc, rr = dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]),
    ...                         torch.tensor([-6.0]), torch.tensor([-6.0]), beta=0.5)
    >>> round(loss.item(), 4), rc.item(), rr.item()     # -log sigmoid(0.5 - (-0.5))
    (0.3133, 0.5, -0.5)
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or beta <= 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    shapes = {tuple(t.shape) for t in (policy_chosen_logp, policy_rejected_logp,
                                       ref_chosen_logp, ref_rejected_logp)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-probabilities must have the same shape [B], got {shapes}")
    chosen_rewards = beta * (policy_chosen_logp - ref_chosen_logp)
    rejected_rewards = beta * (policy_rejected_logp - ref_rejected_logp)
    # logsigmoid(z) = -log(1 + e^-z), computed without overflow for large |z|
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()
