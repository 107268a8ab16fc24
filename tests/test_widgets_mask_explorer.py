"""The mask explorer (chapter 06), driven from Python: every control changes what is shown."""

import html

import torch

from utils.masks import causal_mask
from utils.widgets.mask_explorer import MAX_WORDS, build_mask, mask_explorer


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_control_changes_the_picture():
    w = mask_explorer()
    seen = [w.image.value]
    assert is_png(seen[0]) and "21 of 36" in w.message.value          # causal, 6 words
    for name, value in [("attention", "bidirectional"), ("padding", 2), ("side", "left"),
                        ("window", 3), ("attention", "causal"), ("text", "a b c")]:
        w.controls[name].value = value
        assert w.image.value not in seen, f"setting {name}={value!r} did not redraw"
        seen.append(w.image.value)


def test_left_padding_under_causal_mask_reports_empty_rows():
    w = mask_explorer("one two three")
    w.controls["padding"].value = 2
    assert "no key" not in w.message.value                             # right padding: fine
    w.controls["side"].value = "left"
    message = html.unescape(w.message.value)
    assert "2 padding queries see no key" in message and "all-zero" in message


def test_build_mask_combines_the_toggles():
    assert torch.equal(build_mask(4, 0, True, "right", 0), causal_mask(4))
    assert build_mask(3, 1, False, "right", 0).int().tolist() == [[1, 1, 1, 0]] * 4
    left = build_mask(2, 2, True, "left", 0)
    assert left[:2].sum() == 0 and left[3].int().tolist() == [0, 0, 1, 1]
    assert build_mask(5, 0, True, "right", 2).sum(-1).tolist() == [1, 2, 2, 2, 2]
    assert build_mask(5, 0, False, "right", 2).sum(-1).tolist() == [2, 3, 3, 3, 2]


def test_bad_input_is_a_message_not_a_traceback():
    w = mask_explorer()
    w.controls["text"].value = "   "
    assert "Type a sentence" in w.message.value
    w.controls["text"].value = " ".join(["word"] * (MAX_WORDS + 8))
    assert f"first {MAX_WORDS} words" in w.message.value and is_png(w.image.value)
    w.controls["text"].value = "x" * 5000 + chr(0xD800)               # long, lone surrogate
    assert "characters" in w.message.value and "Could not" not in w.message.value
    w.controls["window"].value = w.controls["window"].max              # extreme slider values
    w.controls["padding"].value = w.controls["padding"].max
    assert "Could not" not in w.message.value
