"""The mask explorer (chapter 06), driven from Python: every control changes what is shown."""

import html

import torch

from utils.masks import causal_mask
from utils.widgets.display import has_glyph, placeholder_png
from utils.widgets.mask_explorer import MAX_WORDS, PAD, build_mask, mask_explorer, mask_figure


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


def tick_texts(fig) -> list[tuple[str, str]]:
    """(label, colour) of the first panel's x tick labels."""
    return [(t.get_text(), t.get_color()) for t in fig.axes[0].get_xticklabels()]


def test_an_empty_sentence_clears_the_picture():
    w = mask_explorer()
    w.controls["text"].value = "   "
    assert "Type a sentence" in w.message.value and w.image.value == placeholder_png()
    w.controls["padding"].value = 2                                # still nothing to draw
    assert w.image.value == placeholder_png()
    w.controls["text"].value = "back again"
    assert is_png(w.image.value) and w.image.value != placeholder_png()


def test_a_word_spelled_pad_is_a_real_token_not_padding():
    w = mask_explorer("the <pad> cat")
    w.controls["attention"].value = "bidirectional"
    assert "9 of 9" in w.message.value                              # every pair attends
    assert "ordinary word" in html.unescape(w.message.value)
    w.controls["padding"].value = 1
    tokens = ["the", PAD, "cat", PAD]
    fig = mask_figure(tokens, build_mask(3, 1, False, "right", 0), torch.zeros(4, 4), "t",
                      padded=[False, False, False, True])
    (word, word_colour), (pad, pad_colour) = tick_texts(fig)[1], tick_texts(fig)[3]
    assert word != pad and word_colour != pad_colour                # told apart in the picture


def test_characters_the_font_lacks_are_named_not_drawn_as_boxes():
    w = mask_explorer("猫 sat 🙂")
    message = html.unescape(w.message.value)
    for ch in "猫🙂":
        if not has_glyph(ch):                                       # no CJK/emoji font here
            assert f"U+{ord(ch):04X}" in message
    labels = [label for label, _ in tick_texts(mask_figure(
        ["猫", "sat", "🙂"], build_mask(3, 0, True, "right", 0), torch.zeros(3, 3), "t"))]
    assert labels[1] == "sat"
    assert all(has_glyph(ch) for label in labels for ch in label)   # every glyph drawable


def test_picture_is_shown_at_its_own_size():
    w = mask_explorer()
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
