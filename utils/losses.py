"""Cross-entropy written out, and the reference lines every loss curve should be read
against (chapter 07).

    log_softmax, cross_entropy   the loss a language model minimises, from its definition
    next_token_loss              the same, scoring logits against the tokens shifted by one

A loss of 2.5 means nothing on its own. Three simple predictors, scored with the same
cross-entropy on the same validation text, say what it means:

    uniform   every token equally likely: ln(V), where a fresh model starts
    unigram   each token with its frequency in the training text, ignoring context
    bigram    the next token from counts of (previous token, next token) pairs

A transformer that does not beat the bigram line has learned nothing a table of pair counts
could not. `bits_per_token` converts a loss in nats (natural log) to bits (log base 2), the
unit compression papers report for character models ("bits per character").

>>> import math
>>> round(uniform_loss(76), 3) == round(math.log(76), 3)
True
"""

from __future__ import annotations

import math

import torch


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(softmax(logits)) over the last dimension, computed without overflow.

    exp(1000) is inf in float32, so exp-then-log fails on large logits. Subtracting each
    row's maximum first changes nothing mathematically (softmax ignores a shift) and keeps
    every exp() at most 1: log p_i = z_i - max - log(sum_j exp(z_j - max)).

    >>> log_softmax(torch.tensor([1000.0, 1000.0]))
    tensor([-0.6931, -0.6931])
    """
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over all positions of -log p(target): logits [..., V], targets [...] (ids).

    Same number as `torch.nn.functional.cross_entropy(logits.flatten(0, -2), targets.flatten())`.

    >>> cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))  # ln 4
    tensor(1.3863)
    """
    logp = log_softmax(logits.float())                                 # [..., V]
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)        # [...]
    return -picked.mean()


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The language-modelling loss: logits [B, T, V] were computed from tokens[:, :T];
    position t is scored against the token that follows it, tokens[:, t + 1].

    `tokens` is [B, T + 1], one longer than the logits: a window and its next token.
    """
    return cross_entropy(logits, tokens[:, 1:])


def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy of the uniform guess: -ln(1/V) = ln(V), whatever the text is."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return math.log(vocab_size)


def bits_per_token(loss_nats: float) -> float:
    """A loss in nats as bits: divide by ln 2 (for characters: bits per character).

    >>> bits_per_token(math.log(2))
    1.0
    """
    return loss_nats / math.log(2)


def _ids(ids) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of token ids, got shape "
                         f"{tuple(ids.shape)}")
    return ids


def unigram_probs(train_ids, vocab_size: int, smoothing: float = 1.0) -> torch.Tensor:
    """P(token) from counts in the training ids, plus `smoothing` for every token (so a token
    never seen in training still gets a small probability rather than zero)."""
    counts = torch.bincount(_ids(train_ids), minlength=vocab_size).double() + smoothing
    return counts / counts.sum()


def unigram_entropy(train_ids, vocab_size: int) -> float:
    """Entropy of the training text's token frequencies, in nats: the best loss any
    model that ignores context can reach on the training text itself."""
    p = unigram_probs(train_ids, vocab_size, smoothing=0.0)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def unigram_loss(train_ids, val_ids, vocab_size: int, smoothing: float = 1.0) -> float:
    """Cross-entropy on `val_ids` of the unigram model counted on `train_ids`."""
    p = unigram_probs(train_ids, vocab_size, smoothing)
    return float(-p.log()[_ids(val_ids)].mean())


def bigram_probs(train_ids, vocab_size: int, smoothing: float = 1.0) -> torch.Tensor:
    """[V, V] table: row a is P(next | previous = a), from counts of neighbouring pairs
    in the training ids, with `smoothing` added to every cell (add-one by default)."""
    ids = _ids(train_ids)
    pairs = ids[:-1] * vocab_size + ids[1:]
    counts = torch.bincount(pairs, minlength=vocab_size * vocab_size).double()
    counts = counts.view(vocab_size, vocab_size) + smoothing
    return counts / counts.sum(dim=1, keepdim=True)


def bigram_loss(train_ids, val_ids, vocab_size: int, smoothing: float = 1.0) -> float:
    """Cross-entropy on `val_ids` of the count-based bigram model: the mean of
    -ln P(val[t+1] | val[t]) over every neighbouring pair of the validation ids."""
    probs = bigram_probs(train_ids, vocab_size, smoothing)
    val = _ids(val_ids)
    if val.numel() < 2:
        raise ValueError("val_ids needs at least 2 tokens to score a pair")
    return float(-probs[val[:-1], val[1:]].log().mean())


def reference_losses(train_ids, val_ids, vocab_size: int) -> dict[str, float]:
    """The three reference lines on the validation ids (and the unigram entropy), in nats.

    >>> lines = reference_losses([0, 1, 0, 1, 0, 1], [0, 1, 0], vocab_size=2)
    >>> lines["uniform"] > lines["bigram"]
    True
    """
    return {
        "uniform": uniform_loss(vocab_size),
        "unigram entropy": unigram_entropy(train_ids, vocab_size),
        "unigram": unigram_loss(train_ids, val_ids, vocab_size),
        "bigram": bigram_loss(train_ids, val_ids, vocab_size),
    }
