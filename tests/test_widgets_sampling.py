"""The chapter 08 sampling widgets, driven from Python on the shipped model."""

import html

import pytest
import torch

from utils.pretrained import load_pretrained
from utils.widgets import sampling
from utils.widgets.display import placeholder_png
from utils.widgets.sampling import MAX_SEED, encode_prompt, next_token_explorer, step_generator


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("shakespeare-char")


def kept_count(message: str) -> int:
    return int(message.split("; ")[-1].split(" of ")[0].split()[-1])


def test_explorer_sliders_change_the_picture_and_the_kept_set(shipped):
    box = next_token_explorer(*shipped)
    assert "error" not in box.message.value and "Could not" not in box.message.value
    first = box.image.value
    assert first and kept_count(box.message.value) == shipped[1].vocab_size
    box.controls["top_k"].value = 3
    assert kept_count(box.message.value) >= 3 and box.image.value != first
    box.controls["top_k"].value = 0
    box.controls["top_p"].value = 0.5
    assert 1 <= kept_count(box.message.value) < shipped[1].vocab_size
    box.controls["top_p"].value = 1.0
    before = box.image.value
    box.controls["temperature"].value = 0.0                 # greedy: one character left
    assert kept_count(box.message.value) == 1 and box.image.value != before
    assert "0.00 bits after" in box.message.value


def test_explorer_bad_prompts_give_messages_not_tracebacks(shipped):
    box = next_token_explorer(*shipped)
    for text, words in [("", "Type a prompt"), ("naïve café", "never seen"),
                        ("a\ud800b", "never seen")]:
        box.controls["text"].value = text
        assert words in box.message.value, (text, box.message.value)
    box.controls["text"].value = "to be " * 200               # cropped to the context
    assert "only its last 128 are read" in box.message.value


def test_step_generator_steps_resets_and_times_prefill_and_decode(shipped):
    box = step_generator(*shipped, prompt="KING:\n", seed=3)
    assert "prefill" in box.timings.value                      # one step at construction
    for _ in range(3):
        box.controls["next"].click()
    assert box.timings.value.count("decode") == 3
    text_after_4 = box.text_out.value
    box.controls["reset"].click()
    assert box.timings.value == "" and "prefill" not in box.timings.value
    for _ in range(4):
        box.controls["next"].click()
    assert box.text_out.value == text_after_4                   # same seed, same text
    box.controls["seed"].value = 4
    for _ in range(4):
        box.controls["next"].click()
    assert "Could not" not in box.message.value


def test_step_generator_greedy_matches_the_library(shipped):
    from utils.generation import generate
    model, tok = shipped
    box = step_generator(model, tok, prompt="KING:\n")
    box.controls["temperature"].value = 0.0
    box.controls["reset"].click()
    for _ in range(6):
        box.controls["next"].click()
    expected = tok.decode(generate(model, torch.tensor([tok.encode("KING:\n")]), 6,
                                   temperature=0)[0, 6:].tolist())
    assert f"<b style='color:#1f4e9c'>{expected}</b>" in html.unescape(box.text_out.value)


def test_step_generator_unknown_characters_show_a_message(shipped):
    box = step_generator(*shipped)
    box.controls["text"].value = "日本"
    assert "never seen" in box.message.value
    box.controls["next"].click()
    assert "never seen" in box.message.value and box.text_out.value == ""


def test_encode_prompt_crops_to_the_context(shipped):
    model, tok = shipped
    ids, note = encode_prompt("a" * 300, tok, model.config.block_size)
    assert len(ids) == model.config.block_size and "last" in note


def test_explorer_with_an_unreadable_prompt_clears_the_picture_and_says_sliders_wait(shipped):
    box = next_token_explorer(*shipped)
    box.controls["text"].value = ""
    assert box.image.value == placeholder_png()              # no longer asking about Romeo
    box.controls["temperature"].value = 0.5                  # a slider moved meanwhile
    assert box.image.value == placeholder_png()
    assert "Type a prompt" in box.message.value and "sliders take effect" in box.message.value
    box.controls["text"].value = "KING:"
    assert box.image.value != placeholder_png() and "of 76" in box.message.value


def test_the_model_reads_the_end_of_a_long_prompt(shipped):
    model, tok = shipped
    block = model.config.block_size
    prompt = "a" * 450 + "ROMEO:\nWhat light"                # the question is at the end
    ids, note = encode_prompt(prompt, tok, block)
    assert tok.decode(ids) == prompt[-block:] and "last 128" in note
    ids, _ = encode_prompt("9" * 300 + "x" * block, tok, block)   # unknown '9' never read
    assert tok.decode(ids) == "x" * block


def test_digits_are_judged_by_the_vocabulary(shipped):
    model, tok = shipped
    has = "".join(c for c in tok.chars if c.isdigit())        # "12345" for Shakespeare
    ids, _ = encode_prompt(f"Act {has}", tok, model.config.block_size)
    assert ids is not None
    missing = next(d for d in "0123456789" if d not in has)
    ids, message = encode_prompt(f"Act {missing}", tok, model.config.block_size)
    assert ids is None and f"the digits {has} only" in message


def test_a_huge_seed_is_bounded_and_reset_still_works(shipped):
    box = step_generator(*shipped, prompt="KING:\n")
    box.controls["seed"].value = 10**30                       # would overflow torch's seed
    assert box.controls["seed"].value == MAX_SEED and "Could not" not in box.message.value
    box.controls["next"].click()
    box.controls["reset"].click()
    box.controls["next"].click()
    assert "Could not" not in box.message.value and "prefill" in box.timings.value
    assert step_generator(*shipped, seed=2**70).controls["seed"].value == MAX_SEED


def test_step_timings_go_through_the_synchronizing_stopwatch(shipped, monkeypatch):
    devices = []
    real = sampling.stopwatch

    def recording(device=None):
        devices.append(device)
        return real(device)

    monkeypatch.setattr(sampling, "stopwatch", recording)
    box = step_generator(*shipped, prompt="KING:\n")
    box.controls["next"].click()
    assert devices == [next(shipped[0].parameters()).device] * 2


def test_reset_clears_the_old_picture_and_an_unreadable_prompt_clears_everything(shipped):
    box = step_generator(*shipped, prompt="KING:\n")
    assert box.image.value != placeholder_png()
    box.controls["reset"].click()
    assert box.image.value == placeholder_png() and box.timings.value == ""
    box.controls["text"].value = ""
    box.controls["next"].click()
    assert box.image.value == placeholder_png() and box.text_out.value == ""
    assert "Type a prompt" in box.message.value


def test_pictures_are_shown_at_their_own_size(shipped):
    for box in (next_token_explorer(*shipped), step_generator(*shipped)):
        assert box.image.layout.max_width == "none" and box.image.layout.width is None
