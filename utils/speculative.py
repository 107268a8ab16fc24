"""Speculative decoding: a small model guesses, the big one checks (chapter 09).

Generating with a KV cache costs one forward pass of the big model per token, and on a CPU (or
a GPU at batch size 1) that pass takes about as long for 5 new tokens as for 1: the weights
have to be read either way, and the fixed cost of launching each layer dominates. Speculative
decoding spends that slack:

    1. the draft, a much cheaper model with the same tokenizer, proposes k tokens, one at a time
    2. the target reads all of them in ONE pass and scores every position at once
    3. the target keeps the longest prefix of proposals it agrees with, then adds one token
       of its own (a correction at the first disagreement, or a bonus token after k agreed)

so each round writes between 1 and k + 1 tokens for one target pass plus k draft passes.

Greedy decoding (temperature 0) "agrees" when the proposal is the target's argmax, so the
text is exactly the target's own greedy text. With temperature > 0 a proposal x drawn from
the draft's q is kept with probability min(1, p(x) / q(x)); after a rejection the next token
is drawn from the leftover max(0, p - q), renormalised. That rule makes each token follow the
target's distribution p exactly, whatever the draft (Leviathan et al. 2023, Chen et al. 2023).

Both models keep a KV cache. Proposals that are rejected leave their keys and values behind,
so the caches are cut back to the accepted text (`crop_cache`). Past a model's block_size the
context window slides (as in `utils.generation.generate`): every position shifts, a cache
cannot be reused, and each position is scored from its own window of the last block_size
tokens, which is slower but gives the same tokens.

The draft need not be a model. Prompt lookup (`prompt_lookup_generate`) proposes what followed
the last few tokens the previous time they occurred in the text: free to compute, and right
whenever the text repeats itself. The target checks its proposals in the same way.

    idx, stats = speculative_generate(target, draft, idx, 200, k=4)
    stats["acceptance_rate"]      # fraction of the checked proposals the target kept
    idx, stats = prompt_lookup_generate(target, idx, 200, k=8, ngram=3)
"""

from __future__ import annotations

import numbers

import torch

from utils.attention import KVCache
from utils.generation import _check_count, _check_prompt, _check_temperature


def crop_cache(cache: KVCache, seq_len: int) -> None:
    """Keep only the first `seq_len` positions of every layer of `cache` (in place).

    >>> cache = KVCache(n_layer=1)
    >>> _ = cache.update(0, torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))
    >>> crop_cache(cache, 3); cache.seq_len
    3
    """
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    for layer, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        if k is not None and k.size(-2) > seq_len:
            # slicing makes a view; the next `update` concatenates into a fresh tensor anyway
            cache.keys[layer] = k[..., :seq_len, :] if seq_len else None
            cache.values[layer] = v[..., :seq_len, :] if seq_len else None


class _Scorer:
    """One model and its cache: logits for the next token after each of the last m prefixes.

    `next_logits(idx, m)` returns [m, vocab]; row j predicts the token after idx[:, :L-m+1+j]
    (L = idx.size(1)), from the same context `generate` would use: the whole text while it
    fits in block_size, else its last block_size tokens.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.block = model.config.block_size
        self.cache = KVCache(len(model.blocks))
        self.calls = 0

    def next_logits(self, idx: torch.Tensor, m: int) -> torch.Tensor:
        self.calls += 1
        L = idx.size(1)
        if L <= self.block:
            # The cache holds a prefix of idx; drop anything at or after the first position
            # that must be scored (rejected proposals), then feed the rest in one pass.
            crop_cache(self.cache, min(self.cache.seq_len, L - m))
            logits, _ = self.model(idx[:, self.cache.seq_len:], kv_cache=self.cache)
            return logits[0, -m:].float()
        # Sliding window: each prefix is read from scratch in its own window, all in one batch
        # when the windows have the same length (always, once the text is past block_size + m).
        self.cache = KVCache(len(self.model.blocks))
        ends = range(L - m + 1, L + 1)
        windows = [idx[0, max(0, end - self.block):end] for end in ends]
        if len({w.numel() for w in windows}) == 1:
            logits, _ = self.model(torch.stack(windows))
            return logits[:, -1].float()
        return torch.cat([self.model(w[None])[0][:, -1] for w in windows]).float()


@torch.no_grad()
def speculative_generate(target, draft, idx: torch.Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, dict]:
    """Append `max_new_tokens` tokens to idx [1, T], the draft model proposing k at a time.

    Returns (idx [1, T + max_new_tokens], stats) with stats: proposed, checked (the proposals
    the target actually judged: a round stops at its first rejection, so the proposals after
    it are never checked), accepted, acceptance_rate (accepted / checked: the α of
    `expected_tokens_per_round`), rounds, target_calls, draft_calls and tokens_per_round (new
    tokens per target pass; plain decoding has 1).

    temperature=0: exactly `generate(target, idx, max_new_tokens, temperature=0)`.
    temperature>0: the tokens follow the target's distribution softmax(logits / temperature);
    `generator` (a seeded torch.Generator) makes the draws repeatable.
    """
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft: its vocab_size ({draft.config.vocab_size}) differs from the "
                         f"target's ({target.config.vocab_size}); the draft must use the "
                         "target's tokenizer")
    small = _Scorer(draft)
    mode = draft.training
    draft.eval()
    try:
        idx, stats = _speculate(target, _ModelDraft(small), idx, max_new_tokens, k,
                                temperature, generator)
    finally:
        draft.train(mode)
    stats["draft_calls"] = small.calls
    return idx, stats


@torch.no_grad()
def prompt_lookup_generate(target, idx: torch.Tensor, max_new_tokens: int, k: int = 8,
                           ngram: int = 3, temperature: float = 0.0,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Speculative decoding whose draft is the text itself (prompt lookup, n-gram drafting).

    Each round looks up the latest earlier occurrence of the last `ngram` tokens of the text
    and proposes the k tokens that followed it there (`lookup_proposals`); the target
    checks them in one pass over its KV cache, exactly as for a draft model. Where the last
    `ngram` tokens never occurred before, the round is a plain decoding step. The draft costs
    no forward pass at all, so it pays whenever the text repeats itself: a continuation that
    quotes the prompt, code that reuses names, a greedy generation caught in a loop.

    Same guarantees and stats as `speculative_generate` (draft_calls is 0), plus
    rounds_without_match. temperature>0 works too: the lookup is a draft whose distribution
    puts all its mass on the proposed token, so the accept/reject rule keeps the target's
    distribution exactly.
    """
    if isinstance(ngram, bool) or not isinstance(ngram, numbers.Integral) or ngram < 1:
        raise ValueError(f"ngram (tokens matched to find a proposal) must be an int >= 1, "
                         f"got {ngram!r}")
    draft = _LookupDraft(ngram, target.config.vocab_size)
    idx, stats = _speculate(target, draft, idx, max_new_tokens, k, temperature, generator)
    stats["draft_calls"], stats["rounds_without_match"] = 0, draft.misses
    return idx, stats


def lookup_proposals(tokens: list[int], ngram: int, k: int) -> list[int]:
    """The k tokens that followed the latest earlier occurrence of the last `ngram` tokens of
    `tokens`; [] when they never occurred before (or the text is too short).

    >>> lookup_proposals([5, 6, 7, 1, 2, 5, 6], ngram=2, k=3)     # ...5 6 | 7 1 2 ... 5 6
    [7, 1, 2]
    >>> lookup_proposals([1, 2, 3, 4], ngram=2, k=3)
    []

    When the copy runs into the present, it goes on copying what it has just proposed: text
    that repeats with period p goes on repeating (as an LZ77 copy may overlap itself).

    >>> lookup_proposals([0, 1, 2, 1, 2], ngram=2, k=5)          # 1 2 | 1 2 -> 1 2 1 2 1
    [1, 2, 1, 2, 1]
    """
    L, tail = len(tokens), tokens[-ngram:]
    # the latest start s < L - ngram whose n-gram equals the tail: at least one token follows
    for s in range(L - ngram - 1, -1, -1):
        if tokens[s:s + ngram] == tail:
            proposals: list[int] = []
            for pos in range(s + ngram, s + ngram + k):
                proposals.append(tokens[pos] if pos < L else proposals[pos - L])
            return proposals
    return []


def _speculate(target, draft, idx: torch.Tensor, max_new_tokens: int, k: int,
               temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    """The loop shared by both drafts: propose, verify, keep, until max_new_tokens are written."""
    _check_prompt(idx)
    _check_count(max_new_tokens)
    _check_temperature(temperature)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k (tokens proposed per round) must be an int >= 1, got {k!r}")
    if idx.size(0) != 1:
        raise ValueError(f"idx: speculative decoding writes one sequence, so idx must be "
                         f"[1, T]; got {list(idx.shape)} (each row would accept a different "
                         "number of tokens)")
    mode = target.training
    target.eval()
    big = _Scorer(target)
    stats = {"proposed": 0, "checked": 0, "accepted": 0, "rounds": 0}
    goal = idx.size(1) + max_new_tokens
    try:
        while idx.size(1) < goal:
            # never propose more than can be kept: the target always adds one token itself
            proposals, draft_probs = draft.propose(idx, min(k, goal - idx.size(1) - 1),
                                                   temperature, generator)
            idx, accepted = _verify(big, idx, proposals, draft_probs, temperature, generator)
            stats["rounds"] += 1
            stats["proposed"] += len(proposals)
            stats["accepted"] += accepted
            # proposals are judged in order until the first rejection; later ones never are
            stats["checked"] += accepted + (accepted < len(proposals))
    finally:
        target.train(mode)
    stats["acceptance_rate"] = stats["accepted"] / stats["checked"] if stats["checked"] else 0.0
    stats["target_calls"] = big.calls
    stats["tokens_per_round"] = max_new_tokens / stats["rounds"] if stats["rounds"] else 0.0
    return idx, stats


class _ModelDraft:
    """A small model writes the proposals one at a time, from its own KV cache."""

    def __init__(self, scorer: _Scorer) -> None:
        self.scorer = scorer

    def propose(self, idx, n, temperature, generator) -> tuple[list[int], list[torch.Tensor]]:
        proposals, draft_probs = [], []                 # the tokens and q at each of them
        for _ in range(n):
            logits = self.scorer.next_logits(idx, 1)[0]     # [vocab]
            if temperature == 0:
                token = int(logits.argmax())
            else:
                q = torch.softmax(logits / temperature, -1)
                token = int(torch.multinomial(q.cpu(), 1, generator=generator))
                draft_probs.append(q)
            proposals.append(token)
            idx = torch.cat([idx, idx.new_tensor([[token]])], dim=1)
        return proposals, draft_probs


class _LookupDraft:
    """Prompt lookup: copy what followed the last n-gram the previous time it occurred."""

    def __init__(self, ngram: int, vocab_size: int) -> None:
        self.ngram, self.vocab_size, self.misses = ngram, vocab_size, 0

    def propose(self, idx, n, temperature, generator) -> tuple[list[int], list[torch.Tensor]]:
        proposals = lookup_proposals(idx[0].tolist(), self.ngram, n) if n else []
        self.misses += n > 0 and not proposals
        if temperature == 0:
            return proposals, []
        # a draft that is certain: q puts all its mass on the proposed token
        certain = torch.eye(self.vocab_size)
        return proposals, [certain[t] for t in proposals]


def _verify(big: _Scorer, idx: torch.Tensor, proposals: list[int], draft_probs: list,
            temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
    """The target scores the position before the first proposal and after each, in ONE pass,
    keeps the agreeing prefix and adds one token of its own. Returns (longer idx, accepted)."""
    start, n = idx.size(1), len(proposals)
    idx = torch.cat([idx, idx.new_tensor([proposals])], dim=1) if n else idx
    logits = big.next_logits(idx, n + 1)                # [n + 1, vocab]
    if temperature == 0:
        choices = logits.argmax(-1).tolist()            # what the target itself would write
        accepted = 0
        while accepted < n and proposals[accepted] == choices[accepted]:
            accepted += 1
        last = choices[accepted]                        # its correction, or the bonus token
    else:
        p = torch.softmax(logits / temperature, -1)
        accepted, last = _accept_or_resample(p, torch.stack(draft_probs) if n else None,
                                             proposals, generator)
    kept = idx[:, :start + accepted]
    return torch.cat([kept, idx.new_tensor([[last]])], dim=1), accepted


def _accept_or_resample(p: torch.Tensor, q: torch.Tensor | None, proposals: list[int],
                        generator: torch.Generator | None) -> tuple[int, int]:
    """The sampling rule. p [n + 1, vocab] (target), q [n, vocab] (draft) -> (accepted, token).

    Proposal x_i is kept with probability min(1, p_i(x_i) / q_i(x_i)). At the first rejection
    the token is drawn from max(0, p_i - q_i), renormalised: exactly the probability mass
    the draft under-proposes, so that kept + resampled tokens together follow p_i. After n
    acceptances the bonus token is drawn from p_n.
    """
    p, q = p.cpu(), None if q is None else q.cpu()
    for i, x in enumerate(proposals):
        u = torch.rand(1, generator=generator).item()
        if u * q[i, x] <= p[i, x]:                      # u < p/q without dividing by ~0
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        if residual.sum() <= 0:                         # p == q: a rejection cannot happen
            residual = p[i]
        token = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
        return i, token
    n = len(proposals)
    return n, int(torch.multinomial(p[n], 1, generator=generator))


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """Tokens a round writes on average if each proposal is accepted with probability
    `acceptance`, independently: 1 + a + a² + ... + a^k = (1 - a^(k+1)) / (1 - a).

    >>> expected_tokens_per_round(0.0, 4), expected_tokens_per_round(1.0, 4)
    (1.0, 5.0)
    >>> round(expected_tokens_per_round(0.8, 4), 3)
    3.362
    """
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance!r}")
    if acceptance == 1.0:
        return float(k + 1)
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def expected_speedup(acceptance: float, k: int, cost_ratio: float,
                     verify_cost: float = 1.0) -> float:
    """Speed-up over plain cached decoding, in units of one target decoding step:
    tokens per round / (k draft steps at `cost_ratio` each + one verifying pass that costs
    `verify_cost` target steps).

    >>> round(expected_speedup(0.8, 4, cost_ratio=0.1), 2)
    2.4
    """
    return expected_tokens_per_round(acceptance, k) / (k * cost_ratio + verify_cost)
