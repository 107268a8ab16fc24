"""Graders for chapter 11 (the capstone): `from utils.checks import ch11 as check`.

Each grader compares the learner's function with a reference on hand-picked inputs aimed at
known mistakes and on seeded random ones, and names the mistake it recognises.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from utils.checks.grading import Hint, compare_with_reference, expect_close, grader, seeded_cases

# ---- exercise 1: left padding and its attention mask -----------------------------------------


def reference_left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prompt ends in the last column; `mask` is True on real tokens, False on padding."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = True
    return ids, mask


def _diagnose_left_pad(got, expected, prompts, pad_id) -> str | None:
    if not (isinstance(got, (tuple, list)) and len(got) == 2
            and all(isinstance(t, torch.Tensor) for t in got)):
        return None
    ids, mask = got
    want_ids, want_mask = expected
    if mask.dtype != torch.bool or ids.dtype != torch.long or ids.shape != mask.shape:
        return None     # _check_pair's message says what is wrong
    width = want_ids.size(1)
    right_ids = torch.full_like(want_ids, pad_id)
    right_mask = torch.zeros_like(want_mask)
    for row, prompt in enumerate(prompts):
        right_ids[row, :len(prompt)] = torch.tensor(prompt)
        right_mask[row, :len(prompt)] = True
    padded = any(len(p) < width for p in prompts)
    if padded and (torch.equal(ids, right_ids) or torch.equal(mask, right_mask)):
        return ("the prompts are padded on the right; batched generation pads on the LEFT, so "
                "that every prompt ends in the last column and the next token of every row "
                "is read from the same place")
    if torch.equal(ids, want_ids) and torch.equal(mask, ~want_mask):
        return "the mask is inverted: True must mark the real tokens (the keys to attend to)"
    if (torch.equal(ids, want_ids) and torch.equal(mask, ids != pad_id)
            and not torch.equal(mask, want_mask)):
        return ("the mask was computed as ids != pad_id, but a prompt may itself contain the pad "
                "id as a real token (here one does); build the mask from each prompt's length")
    if ids.size(1) != width:
        return f"the width should be the longest prompt's length, {width}"
    if torch.equal(mask, want_mask) and not torch.equal(ids, want_ids):
        return f"the padding positions should hold pad_id={pad_id}"
    return None


def _check_pair(got, expected, what: str) -> None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Hint(f"{what}: return two tensors, (ids, mask); got {type(got).__name__}")
    ids, mask = got
    want_ids, want_mask = expected
    for name, value in (("ids", ids), ("mask", mask)):
        if not isinstance(value, torch.Tensor):
            raise Hint(f"{what}: {name} should be a torch tensor, got {type(value).__name__}")
    if mask.dtype != torch.bool:
        raise Hint(f"{what}: the mask should be a bool tensor (True = a real token), got "
                   f"{mask.dtype}; PyTorch's attention reads a float mask as numbers to add")
    if ids.dtype != torch.long:
        raise Hint(f"{what}: ids should be torch.long (token ids index an embedding), got {ids.dtype}")
    if ids.shape != want_ids.shape or mask.shape != want_mask.shape:
        raise Hint(f"{what}: expected ids and mask of shape {tuple(want_ids.shape)}, got "
                   f"{tuple(ids.shape)} and {tuple(mask.shape)}")
    if not torch.equal(ids, want_ids):
        raise Hint(f"{what}: ids expected {want_ids.tolist()}, got {ids.tolist()}")
    if not torch.equal(mask, want_mask):
        raise Hint(f"{what}: mask expected {want_mask.int().tolist()}, got {mask.int().tolist()}")


@grader
def left_pad(fn):
    hand = [
        ([[5, 6, 7], [8]], 0),
        ([[1, 2], [3, 4]], 9),                      # equal lengths: no padding at all
        ([[0, 3, 0], [7]], 0),                      # a prompt holds the pad id as a real token
        ([[42]], 0),                                # one prompt of one token
        ([[4], [5, 6, 7, 8, 9], [1, 2]], 2047),    # three lengths, a large pad id
    ]

    def make(rng):
        batch = int(rng.integers(1, 7))
        prompts = [rng.integers(0, 2048, int(rng.integers(1, 13))).tolist() for _ in range(batch)]
        pad_id = int(rng.choice(prompts[0])) if rng.random() < 0.5 else int(rng.integers(0, 2048))
        return prompts, pad_id

    compare_with_reference(fn, reference_left_pad, hand + seeded_cases(make, 20), _check_pair,
                           diagnose=_diagnose_left_pad)
    return "Every prompt ends in the last column, and the mask hides exactly the padding."


# ---- exercise 2: the chat template's loss mask -----------------------------------------------


def reference_loss_mask(ids: list[int], response_id: int, end_id: int) -> list[int]:
    """1 on what the assistant wrote (after each <|response|>, up to and including its
    <|end|>), 0 on the user's turns and on the markers that open them."""
    mask, speaking = [], False
    for token in ids:
        if token == response_id:
            mask.append(0)
            speaking = True
        else:
            mask.append(1 if speaking else 0)
            if token == end_id:
                speaking = False
    return mask


def _conversation(rng, vocab: int = 60, open_last: bool | None = None) -> tuple[list[int], int, int]:
    """Ids of a random conversation: user turns <|instruction|> text <|response|>, assistant
    turns text <|end|>; the special ids are vocab, vocab + 1, vocab + 2."""
    instruction, response, end = vocab, vocab + 1, vocab + 2
    ids: list[int] = []
    for _ in range(int(rng.integers(1, 4))):
        ids += [instruction, *rng.integers(0, vocab, int(rng.integers(1, 6))).tolist(), response]
        ids += [*rng.integers(0, vocab, int(rng.integers(0, 5))).tolist(), end]
    if open_last if open_last is not None else rng.random() < 0.4:   # awaiting the reply
        ids += [instruction, *rng.integers(0, vocab, int(rng.integers(1, 4))).tolist(), response]
    return ids, response, end


def _diagnose_loss_mask(got, expected, ids, response_id, end_id) -> str | None:
    ends = [i for i, t in enumerate(ids) if t == end_id]
    responses = [i for i, t in enumerate(ids) if t == response_id]
    if all(got[i] == 1 for i in responses) and any(expected):
        return "the <|response|> marker is part of the prompt: the model is given it, not taught it"
    if ends and all(got[i] == 0 for i in ends):
        return ("each <|end|> must be learned too (mask 1): it is how the model learns to stop "
                "talking")
    if any(got[i] == 1 and expected[i] == 0 for i in range(len(ids))):
        return "some of the user's tokens (or the <|instruction|> marker) have mask 1"
    if sum(got) < sum(expected):
        return ("some assistant tokens have mask 0: every assistant turn is learned, not only "
                "the first or the last")
    return None


def _check_mask(got, expected, what: str) -> None:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)):
        raise Hint(f"{what}: return a list of 0s and 1s, got {type(got).__name__}")
    if len(got) != len(expected):
        raise Hint(f"{what}: one mask entry per token: expected {len(expected)} entries, got "
                   f"{len(got)}")
    if any(int(g) != e for g, e in zip(got, expected, strict=True)):
        raise Hint(f"{what}: expected {expected}, got {[int(g) for g in got]}")


@grader
def loss_mask(fn):
    V = 60
    hand = [
        ([V, 1, 2, V + 1, 3, 4, V + 2], V + 1, V + 2),                      # one turn
        ([V, 1, V + 1, 2, V + 2, V, 3, V + 1, 4, 5, V + 2], V + 1, V + 2),  # two turns
        ([V, 1, V + 1, 2, V + 2, V, 3, V + 1], V + 1, V + 2),               # awaiting the reply
        ([V, 7, V + 1, V + 2], V + 1, V + 2),                                # an empty answer
    ]
    cases = hand + seeded_cases(lambda rng: _conversation(rng, V), 20)

    def compare(got, expected, what):
        _check_mask(got, expected, what)

    def diagnose(got, expected, ids, response_id, end_id):
        got = got.tolist() if isinstance(got, torch.Tensor) else list(got)
        if len(got) != len(expected):
            return None
        return _diagnose_loss_mask([int(g) for g in got], expected, ids, response_id, end_id)

    compare_with_reference(fn, reference_loss_mask, cases, compare, diagnose=diagnose)
    return "The model learns every answer and its <|end|>, and none of the questions."


# ---- exercise 3: bits per character, the report card's fair metric ----------------------------


def reference_bits_per_char(token_nats, token_ids: list[int], tokenizer) -> float:
    """Total information (nats) over the characters the scored tokens spell, in bits."""
    total = float(torch.as_tensor(token_nats, dtype=torch.float64).sum())
    return total / len(tokenizer.decode(list(token_ids))) / math.log(2)


def _diagnose_bpc(got, expected, token_nats, token_ids, tokenizer) -> str | None:
    total = float(torch.as_tensor(token_nats, dtype=torch.float64).sum())
    chars = len(tokenizer.decode(list(token_ids)))
    n = len(token_ids)
    candidates = [
        (total / n / math.log(2), "that is bits per TOKEN: divide the total by the number of "
                                  "characters the tokens spell, not by the number of tokens"),
        (total / chars, "that is nats per character: divide by ln 2 to get bits"),
        (total / chars * math.log(2), "multiply by 1/ln 2, not by ln 2, to turn nats into bits"),
        # Decoding token by token gives the same count here: each byte of a split character
        # decodes on its own to one replacement character.
        (total / len(tokenizer.decode(list(token_ids)).encode("utf-8")) / math.log(2),
         "that counts UTF-8 bytes, not characters (decoding token by token does too: each "
         "byte of a split character decodes to a replacement character); decode all the ids "
         "at once and take the length of the text"),
    ]
    for value, why in candidates:
        if math.isfinite(value) and abs(value - expected) > 1e-9 and abs(float(got) - value) < 1e-6:
            return why
    return None


@grader
def bits_per_char(fn):
    from utils.bpe_tokenizer import pretrained_bpe
    from utils.data import load_corpus
    from utils.tokenizers import CharTokenizer

    chars = CharTokenizer(load_corpus())
    bpe = pretrained_bpe(512)
    text_bpe = bpe.encode("Thou art more lovely and more temperate.")
    # Byte-level BPE splits a non-ASCII character into bytes, and the course's tokens never
    # merge these: 'é' and '—' are two and three tokens, which decode to one character together.
    accented = bpe.encode("Café — naïve.")

    def nats(rng, n):
        return torch.from_numpy(rng.uniform(0.05, 6.0, n))

    def case(rng, tokenizer, ids):
        return nats(rng, len(ids)), list(ids), tokenizer

    rng = np.random.default_rng(7)
    hand = [
        (torch.tensor([math.log(2)] * 4, dtype=torch.float64), chars.encode("abcd"), chars),
        case(rng, bpe, text_bpe),
        case(rng, bpe, accented),
        (torch.tensor([0.7]), chars.encode("x"), chars),
    ]

    def make(r):
        tokenizer = bpe if r.random() < 0.6 else chars
        start = int(r.integers(0, 5000))
        piece = load_corpus()[start:start + int(r.integers(1, 120))]
        ids = tokenizer.encode(piece)
        if tokenizer is bpe and r.random() < 0.3:
            ids = ids + bpe.encode(" \u00e9t\u00e9 \u2014")
        return case(r, tokenizer, ids)

    def compare(got, expected, what):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float, np.floating)) or isinstance(got, bool):
            raise Hint(f"{what}: return one number (a Python float), got {type(got).__name__}")
        expect_close(float(got), expected, what, atol=1e-6, rtol=1e-6)

    def diagnose(got, expected, token_nats, token_ids, tokenizer):
        got = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if not isinstance(got, (int, float, np.floating)):
            return None
        return _diagnose_bpc(got, expected, token_nats, token_ids, tokenizer)

    compare_with_reference(fn, reference_bits_per_char, hand + seeded_cases(make, 15), compare,
                           diagnose=diagnose)
    return "A character model and a BPE model can now be compared on the same scale."
