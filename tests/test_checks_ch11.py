"""Chapter 11 graders: solutions accepted, plausible mistakes rejected with a useful hint."""

import math

import numpy as np
import torch

from tests.grading import (
    assert_accepts,
    assert_not_attempted,
    assert_rejects,
    right_on_first_call_only,
    stub,
)
from utils.checks import ch11 as check

# ---- exercise 1: left padding -----------------------------------------------------------------


def left_pad(prompts, pad_id):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    return ids, mask


def test_left_pad_accepts_solutions():
    assert_accepts(check.left_pad, left_pad)
    assert_accepts(check.left_pad, check.reference_left_pad)

    def with_flip(prompts, pad_id):           # pad on the right, then flip: also left padding
        width = max(len(p) for p in prompts)
        ids = torch.tensor([list(reversed(p)) + [pad_id] * (width - len(p)) for p in prompts])
        mask = torch.arange(width)[None, :] < torch.tensor([len(p) for p in prompts])[:, None]
        return ids.flip(1), mask.flip(1)
    assert_accepts(check.left_pad, with_flip)
    assert_not_attempted(check.left_pad, stub)


def test_left_pad_rejects_classic_mistakes():
    def right_pad(prompts, pad_id):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([list(p) + [pad_id] * (width - len(p)) for p in prompts])
        mask = torch.tensor([[True] * len(p) + [False] * (width - len(p)) for p in prompts])
        return ids, mask
    assert "on the right" in assert_rejects(check.left_pad, right_pad)

    inverted = lambda prompts, pad_id: (left_pad(prompts, pad_id)[0], ~left_pad(prompts, pad_id)[1])  # noqa: E731
    assert "inverted" in assert_rejects(check.left_pad, inverted)

    def mask_from_ids(prompts, pad_id):
        ids, _ = left_pad(prompts, pad_id)
        return ids, ids != pad_id
    assert "ids != pad_id" in assert_rejects(check.left_pad, mask_from_ids)

    def zeros_not_pad(prompts, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        return ids.masked_fill(~mask, 0), mask
    assert "pad_id" in assert_rejects(check.left_pad, zeros_not_pad)

    def int_mask(prompts, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        return ids, mask.long()
    assert "bool tensor" in assert_rejects(check.left_pad, int_mask)

    def float_ids(prompts, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        return ids.float(), mask
    assert "torch.long" in assert_rejects(check.left_pad, float_ids)

    def one_too_wide(prompts, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        return (torch.cat([torch.full((len(prompts), 1), pad_id), ids], 1),
                torch.cat([torch.zeros(len(prompts), 1, dtype=torch.bool), mask], 1))
    assert "longest prompt" in assert_rejects(check.left_pad, one_too_wide)

    def lists(prompts, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        return ids.tolist(), mask.tolist()
    assert "torch tensor" in assert_rejects(check.left_pad, lists)

    def changes_input(prompts, pad_id):
        width = max(len(p) for p in prompts)
        for p in prompts:
            p[:0] = [pad_id] * (width - len(p))
        return left_pad(prompts, pad_id)
    assert "changed its input" in assert_rejects(check.left_pad, changes_input)


def test_left_pad_rejects_wrong_after_first_case():
    def right_pad(prompts, pad_id):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([list(p) + [pad_id] * (width - len(p)) for p in prompts])
        return ids, ids != pad_id
    assert_rejects(check.left_pad, right_on_first_call_only(left_pad, right_pad))


def test_left_pad_seeded_cases_catch_what_hand_cases_miss():
    """Right on the hand-picked cases (all short), wrong past 5 tokens: only the seeded cases
    (up to 12 tokens) catch it."""
    def short_only(prompts, pad_id):
        ids, mask = left_pad(prompts, pad_id)
        if ids.size(1) > 5:
            mask = mask.clone()
            mask[:, 0] = True
        return ids, mask
    assert_rejects(check.left_pad, short_only)


# ---- exercise 2: the chat loss mask -----------------------------------------------------------


def loss_mask(ids, response_id, end_id):
    mask, speaking = [], False
    for token in ids:
        mask.append(int(speaking and token != response_id))
        if token == response_id:
            speaking = True
        elif token == end_id:
            speaking = False
    return mask


def test_loss_mask_accepts_solutions():
    assert_accepts(check.loss_mask, loss_mask)
    assert_accepts(check.loss_mask, lambda ids, r, e: torch.tensor(loss_mask(ids, r, e)))
    assert_accepts(check.loss_mask, lambda ids, r, e: [bool(m) for m in loss_mask(ids, r, e)])
    assert_not_attempted(check.loss_mask, stub)


def test_loss_mask_rejects_classic_mistakes():
    def with_marker(ids, r, e):
        return [m or int(t == r) for m, t in zip(loss_mask(ids, r, e), ids, strict=True)]
    assert "<|response|> marker" in assert_rejects(check.loss_mask, with_marker)

    def without_end(ids, r, e):
        return [0 if t == e else m for m, t in zip(loss_mask(ids, r, e), ids, strict=True)]
    assert "<|end|>" in assert_rejects(check.loss_mask, without_end)

    def everything_after_first_response(ids, r, e):
        first = ids.index(r)
        return [int(i > first) for i in range(len(ids))]
    assert "user's tokens" in assert_rejects(check.loss_mask, everything_after_first_response)

    def last_turn_only(ids, r, e):
        mask = loss_mask(ids, r, e)
        last = max(i for i, t in enumerate(ids) if t == r)
        return [m if i > last else 0 for i, m in enumerate(mask)]
    assert "every assistant turn" in assert_rejects(check.loss_mask, last_turn_only)

    def shifted(ids, r, e):               # aligned to targets instead of tokens
        return loss_mask(ids, r, e)[1:] + [0]
    assert_rejects(check.loss_mask, shifted)

    def one_short(ids, r, e):
        return loss_mask(ids, r, e)[:-1]
    assert "one mask entry per token" in assert_rejects(check.loss_mask, one_short)


def test_loss_mask_rejects_wrong_after_first_case():
    def first_turn_only(ids, r, e):
        mask, seen_end = loss_mask(ids, r, e), False
        out = []
        for m, t in zip(mask, ids, strict=True):
            out.append(0 if seen_end else m)
            seen_end = seen_end or t == e
        return out
    assert_rejects(check.loss_mask, right_on_first_call_only(loss_mask, first_turn_only))


def test_loss_mask_reference_agrees_with_the_library_template():
    """The grader's reference and utils.chat's template mark the same tokens."""
    from utils.bpe_tokenizer import pretrained_bpe
    from utils.chat import Turn, encode_chat
    from utils.instructions import END, RESPONSE, ChatTokenizer

    tokenizer = ChatTokenizer(pretrained_bpe(512))
    turns = [Turn("user", "Who is there?"), Turn("assistant", "Nay, answer me."),
             Turn("user", "Long live the king!"), Turn("assistant", "Barnardo?")]
    ids, mask = encode_chat(tokenizer, turns)
    got = check.reference_loss_mask(list(ids), tokenizer.ids_of(RESPONSE), tokenizer.ids_of(END))
    assert got == [int(m) for m in mask] and 0 < sum(got) < len(got)


# ---- exercise 3: bits per character ------------------------------------------------------------


def bits_per_char(token_nats, token_ids, tokenizer):
    return float(torch.as_tensor(token_nats).sum()) / len(tokenizer.decode(token_ids)) / math.log(2)


def test_bits_per_char_accepts_solutions():
    assert_accepts(check.bits_per_char, bits_per_char)
    assert_accepts(check.bits_per_char, lambda n, ids, tok:
                   torch.as_tensor(n).sum() / math.log(2) / len(tok.decode(ids)))
    assert_accepts(check.bits_per_char, lambda n, ids, tok:
                   float(np.log2(np.e) * np.sum(np.asarray(n)) / len(tok.decode(ids))))
    assert_not_attempted(check.bits_per_char, stub)


def test_bits_per_char_rejects_classic_mistakes():
    per_token = lambda n, ids, tok: float(torch.as_tensor(n).mean()) / math.log(2)  # noqa: E731
    assert "bits per TOKEN" in assert_rejects(check.bits_per_char, per_token)

    nats = lambda n, ids, tok: float(torch.as_tensor(n).sum()) / len(tok.decode(ids))  # noqa: E731
    assert "divide by ln 2" in assert_rejects(check.bits_per_char, nats)

    times_ln2 = lambda n, ids, tok: (  # noqa: E731
        float(torch.as_tensor(n).sum()) / len(tok.decode(ids)) * math.log(2))
    assert "not by ln 2" in assert_rejects(check.bits_per_char, times_ln2)

    by_bytes = lambda n, ids, tok: (  # noqa: E731
        float(torch.as_tensor(n).sum()) / len(tok.decode(ids).encode()) / math.log(2))
    assert "counts UTF-8 bytes" in assert_rejects(check.bits_per_char, by_bytes)

    token_by_token = lambda n, ids, tok: (  # noqa: E731
        float(torch.as_tensor(n).sum()) / sum(len(tok.decode([i])) for i in ids) / math.log(2))
    # every split character is a byte per token here, so this is the same count as bytes
    assert "counts UTF-8 bytes" in assert_rejects(check.bits_per_char, token_by_token)

    natural_log_of_mean = lambda n, ids, tok: math.log2(float(torch.as_tensor(n).mean()))  # noqa: E731
    assert_rejects(check.bits_per_char, natural_log_of_mean)

    as_tensor_vector = lambda n, ids, tok: torch.as_tensor(n) / math.log(2)  # noqa: E731
    assert "one number" in assert_rejects(check.bits_per_char, as_tensor_vector)


def test_bits_per_char_rejects_wrong_after_first_case():
    per_token = lambda n, ids, tok: float(torch.as_tensor(n).mean()) / math.log(2)  # noqa: E731
    # the first case is a character tokenizer, where bits per token = bits per character
    assert_rejects(check.bits_per_char, right_on_first_call_only(bits_per_char, per_token))
