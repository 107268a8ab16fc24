"""Batched generation: prompts of different lengths, one forward pass per step (chapter 11).

`utils.generation.generate` writes a batch only when every prompt has the same length, since
a tensor is a rectangle. Prompts of different lengths have to be padded to one length
(`_` is a pad token below), and the side the padding goes on decides whether one decode
step can serve every row:

    right padding       left padding
    W h a t _           _ W h a t
    R O M E O           R O M E O
    A h _ _ _           _ _ _ A h
                                  ^ every row's next token goes in the next column

With right padding each row's next token belongs in a different column (after its own last
real token), so the rows cannot share a step. With left padding every prompt ends in the
last column: each step appends one column to the whole batch, and one KV cache per layer,
[B, kv_heads, columns, head_dim], serves every row.

Two things make each row behave as if it were alone:

* the mask. A pad is still a token to attention: a query would read its key and value and
  mix them into its own. So every query, in the prefill and at every decode step, is kept
  off the pad columns of its row (on top of the causal mask). A pad query then has no key
  left at all; it is allowed to attend to itself, so its output stays an ordinary finite
  vector. That matters even though pad outputs are thrown away: a NaN in a pad's value
  would reach the real queries of the next layer, because a masked weight is exactly 0 and
  0 * NaN is still NaN.
* per-row positions. Alone, "Ah" has its first token at position 0; in the batch it sits in
  column 3. A learned position table is absolute: it would add position 3's vector instead
  of position 0's, and the greedy text would change. `GPT.forward(positions=...)` gives
  every token its own position: its column minus its row's padding. RoPE and ALiBi only
  depend on the distance between two tokens, which left padding does not change (ALiBi's
  bias is read from columns); RoPE is given the row's own positions all the same, so every
  rotation is the one the row gets alone.

With both, greedy decoding writes for each prompt the text `generate` writes for it alone
(tests/test_batch_generation.py checks it for every positional scheme, and shows it fails
without the mask).

Rows finish at different times: a stop sequence, or their own `max_new_tokens`. A finished
row is dropped from the batch and from the cache, and columns that have become padding in
every remaining row are cut off, so finished rows cost nothing. The context window does
not slide: a prompt plus its new tokens must fit in block_size (a ValueError says how many
positions a row would need). Cropping would have to rebuild each row's cache at a
different step, which is what `generate(..., crop=True)` does for one prompt.

    outs = generate_batch(model, [tok.encode("ROMEO:"), tok.encode("O")], 50, stop=[0])
    texts = [tok.decode(ids) for ids in outs]
"""

from __future__ import annotations

import numbers

import torch

from utils.attention import KVCache
from utils.generation import (
    _check_temperature,
    _check_top_k,
    _check_top_p,
    _stop_sequences,
    apply_repetition_penalty,
    next_token_probs,
)


@torch.no_grad()
def generate_batch(model, prompts, max_new_tokens, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0, stop=None,
                   generator: torch.Generator | None = None, pad_id: int = 0) -> list[list[int]]:
    """Continue every prompt of `prompts` (lists of token ids, or 1-D tensors, of any
    lengths); return one list per prompt: its ids followed by its new tokens (no padding).

    max_new_tokens  an int for every prompt, or a list with one per prompt
    temperature     0 (default) for greedy: each row gets exactly the tokens `generate`
                    gives that prompt alone. Above 0, each step samples every row from one
                    `generator` call, so a row's text depends on the batch it is in: the
                    same seed and batch repeat it, but it differs from sampling alone
    top_k, top_p, repetition_penalty   as in `utils.generation.generate`, row by row
    stop            a token id, or a list of ids and/or id sequences, checked per row: a row
                    that ends with one stops (keeping it), the others go on
    pad_id          the id written into pad columns; masked out, so any id gives the same text

    >>> from utils.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    >>> [len(ids) for ids in generate_batch(model, [[1], [2, 3, 4]], [5, 2])]
    [6, 5]
    """
    config = model.config
    rows = _check_prompts(prompts, config.vocab_size, config.block_size)
    budgets = _check_lengths(max_new_tokens, rows, config.block_size)
    _check_temperature(temperature)
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)
    if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, numbers.Real) \
            or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a positive number, got {repetition_penalty!r}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral) \
            or not 0 <= pad_id < config.vocab_size:
        raise ValueError(f"pad_id must be a token id in 0..{config.vocab_size - 1}, got {pad_id!r}")
    # generate's parser, which insists on a batch of one: here each row is checked alone
    stops = _stop_sequences(stop, torch.zeros(1, 1))

    def choose(logits: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
        if repetition_penalty != 1.0:         # rows have different lengths: one at a time
            logits = torch.cat([apply_repetition_penalty(
                logits[j:j + 1], torch.tensor([seen], device=logits.device), repetition_penalty)
                for j, seen in enumerate(histories)])
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)                              # [B, 1]
        probs = next_token_probs(logits, temperature, top_k, top_p)
        return torch.multinomial(probs, 1, generator=generator)

    outputs = [list(row) for row in rows]
    alive = [i for i, n in enumerate(budgets) if n > 0]
    if not alive:
        return outputs
    was_training = model.training
    model.eval()                    # no dropout: the weights are frozen, we only read them
    try:
        _decode(model, outputs, [len(r) for r in rows], budgets, alive, choose, stops, pad_id)
    finally:
        model.train(was_training)
    return outputs


def _decode(model, outputs, prompt_lens, budgets, alive, choose, stops, pad_id) -> None:
    """The loop: prefill the left-padded batch, then one column per step; appends each row's
    new tokens to `outputs` and drops a row from the batch once it is done."""
    device = next(model.parameters()).device
    width = max(prompt_lens[i] for i in alive)
    ids = torch.tensor([[pad_id] * (width - len(outputs[i])) + outputs[i] for i in alive],
                       device=device)                                           # [B, width]
    pads = torch.tensor([width - len(outputs[i]) for i in alive], device=device)  # [B]
    cache = KVCache(len(model.blocks))
    logits = _step(model, ids, pads, cache)
    while True:
        tokens = choose(logits, [outputs[i] for i in alive])                    # [B, 1]
        keep = []
        for j, (i, token) in enumerate(zip(alive, tokens.flatten().tolist(), strict=True)):
            outputs[i].append(token)
            done = len(outputs[i]) - prompt_lens[i] >= budgets[i] or any(
                outputs[i][-len(s):] == s for s in stops)
            if not done:
                keep.append(j)
        if not keep:
            return
        if len(keep) < len(alive):
            pads = _keep_rows(cache, pads, keep)
            tokens, alive = tokens[keep], [alive[j] for j in keep]
        logits = _step(model, tokens, pads, cache)


def _step(model, ids: torch.Tensor, pads: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the new columns `ids` [B, T] of a left-padded batch whose rows start with
    `pads` [B] pad columns; their keys join `cache`. Returns the last column's logits."""
    past = cache.seq_len
    columns = torch.arange(past, past + ids.size(1), device=ids.device)        # [T]
    logits, _ = model(ids, kv_cache=cache, mask=_attention_mask(pads, columns, past + ids.size(1)),
                      positions=_positions(pads, columns))
    return logits[:, -1].float()                                                # [B, vocab]


def _attention_mask(pads: torch.Tensor, columns: torch.Tensor, n_keys: int) -> torch.Tensor:
    """[B, 1, T, S], True = may attend: a row's own tokens, and each query its own column
    (which only changes anything for a pad query; GPT.forward adds the causal mask)."""
    keys = torch.arange(n_keys, device=pads.device)
    real = keys[None, :] >= pads[:, None]                                      # [B, S]
    itself = keys[None, :] == columns[:, None]                                 # [T, S]
    return (real[:, None, :] | itself[None])[:, None]


def _positions(pads: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """[B, T]: column minus the row's padding, so a row's first real token is at 0 (pads,
    whose outputs are thrown away, get 0 too)."""
    return (columns[None, :] - pads[:, None]).clamp(min=0)


def _keep_rows(cache: KVCache, pads: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Drop the finished rows from `cache` (in place) and the columns that are padding in
    every row left; return those rows' padding after the cut."""
    index = torch.tensor(keep, device=pads.device)
    pads = pads[index]
    cut = int(pads.min())
    for layer in range(len(cache.keys)):
        cache.keys[layer] = cache.keys[layer][index, :, cut:]
        cache.values[layer] = cache.values[layer][index, :, cut:]
    return pads - cut


# ------------------------------------------------------------------------------- validation


def _check_prompts(prompts, vocab_size: int, block_size: int) -> list[list[int]]:
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a list of prompts (each a list of token ids), got "
                         f"{type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    rows = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1 or prompt.dtype not in (torch.long, torch.int):
                raise ValueError(f"prompts[{i}]: a tensor prompt must be 1-D integer ids, got "
                                 f"shape {list(prompt.shape)} of {prompt.dtype}")
            prompt = prompt.tolist()
        if not isinstance(prompt, (list, tuple)) or not all(
                isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
            raise ValueError(f"prompts[{i}] must be a list of token ids, got {prompt!r:.60}")
        if not prompt:
            raise ValueError(f"prompts[{i}] is empty; a model needs at least one token to "
                             "predict the next (start with e.g. a newline)")
        if len(prompt) > block_size:
            raise ValueError(f"prompts[{i}] has {len(prompt)} tokens, more than "
                             f"block_size={block_size}")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompts[{i}] holds id {bad[0]}, outside the vocabulary "
                             f"0..{vocab_size - 1}")
        rows.append([int(t) for t in prompt])
    return rows


def _check_lengths(max_new_tokens, rows: list[list[int]], block_size: int) -> list[int]:
    many = isinstance(max_new_tokens, (list, tuple))
    counts = list(max_new_tokens) if many else [max_new_tokens] * len(rows)
    if len(counts) != len(rows):
        raise ValueError(f"max_new_tokens: {len(counts)} lengths for {len(rows)} prompts; "
                         "give one per prompt, or one int for all")
    for i, n in enumerate(counts):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            name = f"max_new_tokens[{i}]" if many else "max_new_tokens"
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    for i, (row, n) in enumerate(zip(rows, counts, strict=True)):
        if len(row) + n > block_size:
            raise ValueError(f"prompts[{i}]: {len(row)} tokens + {n} new ones need "
                             f"{len(row) + n} positions, more than block_size={block_size}; "
                             f"generate_batch does not slide the context window, so ask for at "
                             f"most {block_size - len(row)} new tokens (generate(..., crop=True) "
                             "slides it for one prompt)")
    return [int(n) for n in counts]
