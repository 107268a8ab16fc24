"""Text generation: turning next-token logits into text (chapter 08).

A language model only ever answers one question: given these tokens, how likely is each
possible next token? Generation asks it again and again, appending its choice each time:

    idx [B, T] -> model -> logits [B, T, vocab] -> last position [B, vocab]
               -> penalise repeats -> / temperature -> top-k -> top-p -> softmax -> sample
               -> append the token to idx -> run again

The filters are plain functions on logits, so each can be studied (and tested) on its own:

    apply_temperature   divide by T: T < 1 sharpens the distribution, T > 1 flattens it
    top_k_filter        keep the k highest logits (and anything tied with the k-th)
    top_p_filter        keep the fewest most-likely tokens whose probabilities reach p
    apply_repetition_penalty   make tokens already in the text less likely

`generate` returns the whole sequence; `stream` yields one token at a time, as a chat
interface prints them. Both use a KV cache by default (`utils.attention.KVCache`): the
prompt is read once ("prefill"), then each step feeds only the newest token ("decode").
Past `block_size` tokens the context is cropped to the last `block_size`; every position of
the window then shifts, so the cache is rebuilt from the cropped window (see `_steps`).

`sequence_nll`, `perplexity` and `bits_per_char` score a text instead of writing one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from utils.attention import KVCache

# ------------------------------------------------------------------------------------ filters


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by `temperature` (> 0). Dividing *before* the softmax is what changes the
    shape: softmax(z / T) is sharper for T < 1 and flatter for T > 1.

    >>> torch.softmax(apply_temperature(torch.tensor([2.0, 1.0]), 0.5), -1)
    tensor([0.8808, 0.1192])
    """
    _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("temperature=0 means greedy decoding (argmax); there is no "
                         "distribution to scale. Use a positive temperature here")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest (of each row) to -inf.

    Tokens tied with the k-th largest are all kept, so the result never depends on how a sort
    happens to order equal values. A new tensor is returned; `logits` is not changed.

    >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    tensor([-inf, 3., 2., -inf])
    """
    _check_top_k(k)
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]        # [..., 1]
    return logits.masked_fill(logits < kth_largest, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most-likely tokens whose probabilities add up
    to at least `p` (0 < p <= 1); set the rest to -inf. The most likely token is always kept.

    >>> logits = torch.tensor([0.5, 0.3, 0.2]).log()
    >>> top_p_filter(logits, 0.75).exp()          # 0.5 < 0.75, 0.5 + 0.3 >= 0.75: two kept
    tensor([0.5000, 0.3000, 0.0000])
    """
    _check_top_p(p)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Probability of the tokens *before* each one: a token is needed while that is still < p.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False                                         # never drop them all
    drop = drop_sorted.scatter(-1, order, drop_sorted)                  # back to vocab order
    return logits.masked_fill(drop, -math.inf)


def apply_repetition_penalty(logits: torch.Tensor, idx: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """Make every token that already occurs in `idx` [B, T] less likely (logits [B, vocab]).

    The usual rule (CTRL, Hugging Face): a positive logit is divided by `penalty`, a negative
    one multiplied by it, so either way it moves down for penalty > 1. Once per token, however
    often it occurred.

    >>> apply_repetition_penalty(torch.tensor([[2.0, -1.0, 1.0]]), torch.tensor([[0, 1]]), 2.0)
    tensor([[ 1., -2.,  1.]])
    """
    if not isinstance(penalty, numbers.Real) or isinstance(penalty, bool) or penalty <= 0:
        raise ValueError(f"repetition_penalty must be a positive number, got {penalty!r}")
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, -1, idx)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, idx, seen)


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    """Probabilities [..., vocab] after temperature, top-k and top-p, in that order.

    temperature=0 gives the greedy choice: probability 1 on the argmax.

    >>> next_token_probs(torch.tensor([1.0, 2.0, 3.0]), top_k=1)
    tensor([0., 0., 1.])
    """
    logits = logits.float()
    _check_temperature(temperature)
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)        # renormalises what the filters kept


def entropy_bits(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution in bits: how many yes/no questions the choice is worth.

    >>> entropy_bits(torch.tensor([0.25, 0.25, 0.25, 0.25]))
    tensor(2.)
    """
    logs = torch.where(probs > 0, probs.log2(), torch.zeros_like(probs))
    return -(probs * logs).sum(-1)


# ----------------------------------------------------------------------------------- generate


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, stop: int | Iterable | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             crop: bool = True) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` [B, T]; return idx [B, T + new].

    temperature   0 for greedy (always the most likely token), else sample from softmax(z/T)
    top_k, top_p  optional filters (see above); repetition_penalty > 1 discourages repeats
    stop          a token id, or a list of ids and/or id sequences (e.g. the ids of "\\n\\n");
                  generation ends once the text ends with one of them (it is kept). B = 1 only
    use_cache     KV cache: the same tokens, fewer computations (chapter 08, section 9)
    generator     a seeded torch.Generator: the same seed gives the same text every run
    crop          past block_size tokens, keep only the last block_size as context; with
                  crop=False a prompt + max_new_tokens longer than that is a ValueError

    >>> from utils.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    >>> generate(model, torch.zeros(2, 3, dtype=torch.long), 4, temperature=0).shape
    torch.Size([2, 7])
    """
    new = list(_steps(model, idx, max_new_tokens, temperature, top_k, top_p,
                      repetition_penalty, stop, use_cache, generator, crop))
    return torch.cat([idx, *new], dim=1) if new else idx.clone()


def stream(model, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> Iterator[int]:
    """Like `generate` for one sequence (idx [1, T]), but yield each new token id as soon as it
    is chosen, so the text can be shown while it is being written.

        for token in stream(model, idx, 200, temperature=0.8):
            print(tokenizer.decode([token]), end="")
    """
    if idx.dim() == 2 and idx.size(0) != 1:
        raise ValueError(f"idx: stream writes one sequence, so idx must be [1, T]; got "
                         f"{list(idx.shape)}. Use generate for a batch")
    for token in _steps(model, idx, max_new_tokens, **_defaults(kwargs)):
        yield int(token)


def _defaults(kwargs: dict) -> dict:
    allowed = {"temperature": 1.0, "top_k": None, "top_p": None, "repetition_penalty": 1.0,
               "stop": None, "use_cache": True, "generator": None, "crop": True}
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(f"stream() got unexpected arguments {sorted(unknown)}")
    return {**allowed, **kwargs}


@torch.no_grad()
def _steps(model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop,
           use_cache, generator, crop) -> Iterator[torch.Tensor]:
    """The generation loop; yields each new token as [B, 1]."""
    _check_prompt(idx)
    _check_count(max_new_tokens)
    _check_temperature(temperature)
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)
    stops = _stop_sequences(stop, idx)
    block = model.config.block_size
    if not crop and idx.size(1) + max_new_tokens > block:
        raise ValueError(f"idx: a prompt of {idx.size(1)} tokens plus max_new_tokens="
                         f"{max_new_tokens} exceeds block_size={block}; pass crop=True to "
                         "keep only the last block_size tokens as context")
    was_training = model.training
    model.eval()                    # no dropout: the weights are frozen, we only read them
    cache = None
    try:
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.seq_len < block:
                # decode: only the newest token goes in; its keys join the cache
                logits, _ = model(idx[:, -1:], kv_cache=cache)
            else:
                # prefill (or no cache): the whole window at once. Once the text is longer
                # than block_size the window slides, every token's position changes, and
                # deeper layers' keys depend on the token that fell out, so a cache cannot be
                # trimmed: it is rebuilt from the cropped window (as fast as no cache at all).
                cache = KVCache(len(model.blocks)) if use_cache else None
                logits, _ = model(idx[:, -block:], kv_cache=cache)
            logits = logits[:, -1, :].float()                                   # [B, vocab]
            logits = apply_repetition_penalty(logits, idx, repetition_penalty)
            if temperature == 0:
                token = logits.argmax(-1, keepdim=True)                         # greedy
            else:
                probs = next_token_probs(logits, temperature, top_k, top_p)
                token = torch.multinomial(probs, 1, generator=generator)       # [B, 1]
            idx = torch.cat([idx, token], dim=1)
            yield token
            if any(_ends_with(idx[0], s) for s in stops):
                return
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------- scoring


@torch.no_grad()
def sequence_nll(model, ids: torch.Tensor, stride: int | None = None,
                 batch_size: int = 32) -> torch.Tensor:
    """Negative log-likelihood (nats) of every token of `ids` [N] after the first: entry i is
    -log p(ids[i + 1] | ids[.. i]). Returns [N - 1].

    Texts longer than block_size are read in windows of block_size that overlap by
    block_size - stride (default stride: block_size // 2); each token is scored in the first
    window where it is not among the first tokens, so every token but the earliest sees at
    least block_size - stride characters of context.
    """
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"ids: need a 1-D tensor of at least 2 token ids, got {list(ids.shape)}")
    block = model.config.block_size
    stride = block // 2 if stride is None else stride
    if not 1 <= stride <= block:
        raise ValueError(f"stride must be in 1..block_size={block}, got {stride}")
    n_targets = ids.numel() - 1
    starts = [0]
    while starts[-1] + block < n_targets:            # every window but the last is full
        starts.append(starts[-1] + stride)
    was_training = model.training
    model.eval()
    nll = torch.empty(n_targets)
    done = 0                                           # targets scored so far: ids[1 .. done]
    try:
        for b in range(0, len(starts), batch_size):
            for group in _same_length(starts[b:b + batch_size], block, n_targets):
                length = min(block, n_targets - group[0])
                x = torch.stack([ids[s:s + length] for s in group]).to(_device(model))
                y = torch.stack([ids[s + 1:s + 1 + length] for s in group]).to(x.device)
                logits, _ = model(x)
                losses = F.cross_entropy(logits.float().transpose(1, 2), y,
                                         reduction="none").cpu()              # [n, length]
                for row, s in enumerate(group):
                    end = s + length
                    nll[done:end] = losses[row, done - s:]  # only targets not scored yet
                    done = end
    finally:
        model.train(was_training)
    return nll


def _same_length(starts: list[int], block: int, n_targets: int) -> list[list[int]]:
    """Split window starts into runs whose windows have the same length (only the last
    window of a text can be shorter than block_size)."""
    full = [s for s in starts if s + block <= n_targets]
    short = [s for s in starts if s + block > n_targets]
    return [group for group in (full, short) if group]


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean NLL): the model is as unsure as a fair choice among this many tokens."""
    return math.exp(float(nll.mean()))


def bits_per_char(nll: torch.Tensor) -> float:
    """Mean NLL in bits (for a character-level model: bits per character)."""
    return float(nll.mean()) / math.log(2)


# ------------------------------------------------------------------------------ beam search


@torch.no_grad()
def beam_search(model, idx: torch.Tensor, max_new_tokens: int, beam_width: int = 4
                ) -> tuple[torch.Tensor, float]:
    """Keep the `beam_width` most likely continuations (by total log-probability) at each step;
    return the best one ([1, T + new]) and its log-probability. One prompt, no cache: a
    short, readable version for comparison with greedy search.
    """
    _check_prompt(idx)
    _check_count(max_new_tokens)
    if idx.size(0) != 1:
        raise ValueError(f"idx: beam_search takes one prompt [1, T], got {list(idx.shape)}")
    if isinstance(beam_width, bool) or not isinstance(beam_width, numbers.Integral) \
            or beam_width < 1:
        raise ValueError(f"beam_width must be a positive int, got {beam_width!r}")
    block = model.config.block_size
    was_training = model.training
    model.eval()
    beams, scores = idx, torch.zeros(1)                  # [n_beams, T], [n_beams] log-probs
    for _ in range(max_new_tokens):
        logits, _ = model(beams[:, -block:])
        logp = torch.log_softmax(logits[:, -1].float(), -1).cpu()       # [n_beams, vocab]
        total = (scores[:, None] + logp).flatten()                       # every extension
        scores, flat = total.topk(min(beam_width, total.numel()))
        parent, token = flat // logp.size(1), flat % logp.size(1)
        beams = torch.cat([beams[parent], token[:, None].to(beams.device)], dim=1)
    model.train(was_training)
    return beams[:1], float(scores[0])


# ------------------------------------------------------------------------------- validation


def _check_prompt(idx) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = list(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a [B, T] tensor of token ids, got {shape}; for one "
                         "prompt use torch.tensor([ids])")
    if idx.size(1) == 0:
        raise ValueError("idx: the prompt is empty; a model needs at least one token to "
                         "predict the next (start with e.g. a newline)")
    if idx.dtype not in (torch.long, torch.int):
        raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")


def _check_count(max_new_tokens) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")


def _check_top_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"top_k must be None or an int >= 1, got {k!r}")


def _check_top_p(p) -> None:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ValueError(f"top_p must be None or a number in (0, 1], got {p!r}")


def _stop_sequences(stop, idx: torch.Tensor) -> list[list[int]]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, numbers.Integral) else list(stop)
    sequences = []
    for item in items:
        seq = [item] if isinstance(item, numbers.Integral) else list(item)
        if not seq or not all(isinstance(t, numbers.Integral) for t in seq):
            raise ValueError(f"stop: each entry must be a token id or a non-empty list of "
                             f"token ids, got {item!r}")
        sequences.append([int(t) for t in seq])
    if sequences and idx.size(0) != 1:
        raise ValueError(f"stop works on one sequence (idx [1, T]), got a batch of {idx.size(0)}")
    return sequences


def _ends_with(row: torch.Tensor, seq: list[int]) -> bool:
    return row.numel() >= len(seq) and row[-len(seq):].tolist() == seq


def _device(model) -> torch.device:
    return next(model.parameters()).device
