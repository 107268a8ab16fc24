"""Widgets of chapters 03 and 04, driven from Python: set a control, the picture changes."""

import html

import pytest

from utils.widgets import attention_explorer as explorer_module
from utils.widgets import head_cost as head_cost_module
from utils.widgets import head_viewer as head_viewer_module
from utils.widgets import softmax_scaling as softmax_module
from utils.widgets.attention_explorer import (
    EXAMPLES,
    MAX_CHARACTERS,
    MAX_CHARS,
    MAX_LABEL,
    MAX_TOKENS,
    TrainedModel,
    attention_explorer,
)
from utils.widgets.display import has_glyph, placeholder_png
from utils.widgets.softmax_scaling import D_KS, softmax_gradient_norm, softmax_scaling


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    data = bytes(data)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def broken(*args, **kwargs):
    raise RuntimeError("something inside broke")


# ---- √d_k slider -------------------------------------------------------------------------


def test_softmax_scaling_slider_and_checkbox_change_picture():
    w = softmax_scaling()
    first, first_msg = w.image.value, w.message.value
    assert is_png(first) and "d_k = 64" in first_msg
    w.controls["d_k"].value = 1024
    assert w.image.value != first and "d_k = 1024" in w.message.value
    second = w.image.value
    w.controls["scaled"].value = False
    assert w.image.value != second and "unscaled" in w.message.value


@pytest.mark.parametrize("d_k", [D_KS[0], D_KS[-1]])
@pytest.mark.parametrize("scaled", [True, False])
def test_softmax_scaling_extremes_stay_finite(d_k, scaled):
    w = softmax_scaling(d_k=d_k, scaled=scaled)
    assert is_png(w.image.value)
    assert "nan" not in w.message.value.lower() and "inf" not in w.message.value.lower()


def test_unscaled_softmax_saturates_and_warns():
    w = softmax_scaling(d_k=4096, scaled=False)
    assert "saturated" in w.message.value
    assert softmax_gradient_norm(4096, False) < 1e-3 < softmax_gradient_norm(4096, True)


def test_softmax_scaling_failure_is_a_message(monkeypatch):
    w = softmax_scaling()
    monkeypatch.setattr(softmax_module, "draw", broken)
    w.controls["d_k"].value = 256  # must not raise
    assert "Could not show" in w.message.value and "something inside broke" in w.message.value
    assert w.image.value == placeholder_png()  # not the d_k = 64 picture under "256"
    monkeypatch.undo()
    w.controls["d_k"].value = D_KS[-1]         # the slider's end still draws
    assert "d_k = 4096" in w.message.value and w.image.value != placeholder_png()


def test_softmax_scaling_picture_is_shown_at_its_own_size():
    w = softmax_scaling()
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
    assert w.children[1].children == (w.image,)


# ---- attention explorer ------------------------------------------------------------------


def test_explorer_query_buttons_change_picture():
    w = attention_explorer(EXAMPLES[1], model="toy")
    buttons = w.controls["query"]
    assert [label for label, _ in buttons.options][buttons.value] == "it"
    first = w.image.value
    buttons.value = 1
    assert w.image.value != first and "'animal' attends" in html.unescape(w.message.value)


def test_explorer_example_and_typed_sentence():
    w = attention_explorer(model="toy")
    w.controls["example"].value = EXAMPLES[0]
    assert w.controls["text"].value == EXAMPLES[0]
    assert len(w.controls["query"].options) == 6
    before = w.image.value
    w.controls["text"].value = "Attention is a soft dictionary lookup"
    assert len(w.controls["query"].options) == 6 and w.image.value != before


def test_explorer_bad_input_is_a_message():
    w = attention_explorer(model="toy")
    w.controls["text"].value = "   "
    assert "Type a sentence" in w.message.value
    w.controls["text"].value = " ".join(["word"] * (MAX_TOKENS + 5))
    assert len(w.controls["query"].options) == MAX_TOKENS and "first" in w.message.value


def test_explorer_one_huge_token_is_cut_and_quick():
    w = attention_explorer(model="toy")
    w.controls["text"].value = "a" * 10_000  # one token: used to hang for minutes
    assert f"only the first {MAX_CHARS}" in w.message.value
    assert is_png(w.image.value)
    width, height = png_size(w.image.value)
    assert width < 1500 and height < 1500, (width, height)


def test_explorer_long_tokens_are_shortened_in_labels():
    w = attention_explorer(model="toy")
    w.controls["text"].value = "x" * 150 + " is long"  # used to garble the figure
    labels = [label for label, _ in w.controls["query"].options]
    assert len(labels) == 3 and max(len(label) for label in labels) <= MAX_LABEL
    width, _ = png_size(w.image.value)
    assert width < 1500, width


def test_explorer_lone_surrogate_and_failures_are_messages(monkeypatch):
    w = attention_explorer(model="toy")
    w.controls["text"].value = "it was " + chr(0xDC00)
    assert "attends" in w.message.value and is_png(w.image.value)
    monkeypatch.setattr(explorer_module, "draw", broken)
    w.controls["query"].value = 1  # must not raise
    assert "Could not show" in w.message.value and "something inside broke" in w.message.value


def test_explorer_without_a_sentence_greys_the_picture_and_drops_the_buttons():
    w = attention_explorer(EXAMPLES[0], model="toy")
    w.controls["text"].value = "   "
    assert "Type a sentence" in w.message.value and w.image.value == placeholder_png()
    assert list(w.controls["query"].options) == []     # no buttons for the old sentence's words
    assert w.controls["query"].layout.display == "none"  # the browser would keep its old ones
    w.controls["text"].value = "back to words"
    assert len(w.controls["query"].options) == 3 and w.image.value != placeholder_png()
    assert w.controls["query"].layout.display is None
    assert "attends" in w.message.value


def test_explorer_dropdown_follows_the_typed_sentence():
    w = attention_explorer(EXAMPLES[0], model="toy")
    w.controls["text"].value = "my own sentence"
    assert w.controls["example"].value == "(type your own)"  # no longer names EXAMPLES[0]
    w.controls["text"].value = EXAMPLES[2]
    assert w.controls["example"].value == EXAMPLES[2]
    w.controls["example"].value = EXAMPLES[1]
    assert w.controls["text"].value == EXAMPLES[1] and "'it' attends" in html.unescape(w.message.value)


def figure_texts(monkeypatch) -> list[str]:
    """Every piece of text the explorer's next figures draw (titles, labels, ticks)."""
    import matplotlib.text

    seen = []
    real = explorer_module.figure_to_png

    def spy(fig, *args, **kwargs):
        fig.canvas.draw()
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(explorer_module, "figure_to_png", spy)
    return seen


def test_explorer_draws_characters_the_font_lacks_as_named_boxes(monkeypatch):
    drawn = figure_texts(monkeypatch)
    w = attention_explorer("猫 sat on 🙂", model="toy")
    message = html.unescape(w.message.value)
    assert [label for label, _ in w.controls["query"].options] == ["猫", "sat", "on", "🙂"]
    for ch in "猫🙂":
        if not has_glyph(ch):                              # no CJK/emoji font on this machine
            assert f"U+{ord(ch):04X}" in message
    assert drawn and all(has_glyph(ch) for text in drawn for ch in text if not ch.isspace())


def test_explorer_picture_is_shown_at_its_own_size():
    w = attention_explorer(model="toy")
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
    assert w.children[-2].children == (w.image,)


@pytest.fixture(scope="module")
def trained_explorer():
    return attention_explorer()


def test_trained_explorer_is_the_default_and_reads_characters(trained_explorer):
    w = trained_explorer
    labels = [label for label, _ in w.controls["query"].options]
    assert labels[:6] == ["T", "o", "␣", "b", "e", ","]          # one button per character
    assert w.controls["query"].value == len(labels) - 1           # the last character asks
    assert list(w.controls["layer"].options) == list(range(6))
    assert list(w.controls["head"].options) == list(range(4))
    assert "Layer 0, head 0 of the trained model" in w.message.value


def test_trained_explorer_layer_and_head_change_picture_and_numbers(trained_explorer):
    w = trained_explorer
    w.controls["layer"].value, w.controls["head"].value = 0, 0
    first, first_message = w.image.value, w.message.value
    w.controls["head"].value = 2
    assert w.image.value != first and w.message.value != first_message
    w.controls["layer"].value = 4
    assert "Layer 4, head 2" in w.message.value and is_png(w.image.value)


def test_trained_heads_are_the_models_own_causal_weights():
    import torch

    from utils.pretrained import load_pretrained
    net = TrainedModel()
    net.layer, net.head = 3, 1
    tokens = list("To be, or not")
    weights, values, out = net(tokens)
    model, tokenizer = load_pretrained("shakespeare-char")
    ids = torch.tensor([tokenizer.encode("To be, or not")])
    with torch.no_grad():
        reference = model(ids, return_attention=True).attentions[3][0, 1]
    assert torch.allclose(weights, reference)
    assert weights.triu(1).abs().max() == 0                       # never looks ahead
    assert values.shape == (13, 32) and torch.allclose(out, weights @ values)


def test_trained_explorer_unknown_characters_and_long_text_are_messages(trained_explorer):
    w = trained_explorer
    w.controls["text"].value = "naïve café"
    assert "only knows the 76 characters" in w.message.value and "ï" in w.message.value
    assert w.image.value == placeholder_png() and list(w.controls["query"].options) == []
    w.controls["head"].value = 1 if w.controls["head"].value != 1 else 2  # still no sentence
    assert w.image.value == placeholder_png() and "76 characters" in w.message.value
    w.controls["text"].value = "word " * 30
    assert len(w.controls["query"].options) == MAX_CHARACTERS and f"first {MAX_CHARACTERS}" in w.message.value
    w.controls["text"].value = "To be"
    assert len(w.controls["query"].options) == 5


def test_trained_explorer_failure_is_a_message(trained_explorer, monkeypatch):
    w = trained_explorer
    monkeypatch.setattr(explorer_module, "draw", broken)
    w.controls["head"].value = 3 if w.controls["head"].value != 3 else 1
    assert "Could not show" in w.message.value


# ---- head viewer (chapter 04) ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained model is enough to drive the viewer; the chapter uses the trained one."""
    import torch

    from utils.attention_lm import AttentionLM, LMConfig
    from utils.tokenizers import CharTokenizer

    torch.manual_seed(0)
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.")
    return AttentionLM(LMConfig(tok.vocab_size, d_model=16, n_heads=4, n_layers=2,
                                block_size=32)), tok


def test_head_viewer_toggles_and_layer_change_picture(tiny_model):
    from utils.widgets.head_viewer import head_viewer

    w = head_viewer(*tiny_model, text="the cat sat on the mat")
    first = w.image.value
    assert is_png(first) and "Layer 0" in w.message.value
    w.controls["heads"][0].value = False
    second = w.image.value
    assert second != first
    assert w.controls["heads"][0].style.text_color == "#bbbbbb"  # switched off: greyed
    w.controls["layer"].value = 1
    assert w.image.value != second and "Layer 1" in w.message.value
    third = w.image.value
    w.controls["text"].value = "a different text"
    assert w.image.value != third


def test_head_viewer_bad_input_is_a_message(tiny_model):
    from utils.widgets.head_viewer import head_viewer

    w = head_viewer(*tiny_model, text="abc")
    for toggle in w.controls["heads"]:
        toggle.value = False
    assert "All heads are off" in w.message.value
    w.controls["heads"][2].value = True
    w.controls["text"].value = "ABC!"
    assert "alphabet" in w.message.value
    w.controls["text"].value = ""
    assert "Type some text" in w.message.value
    w.controls["text"].value = "a" * 60
    assert "only the first 32" in w.message.value


def test_head_viewer_all_heads_off_greys_every_button(tiny_model):
    from utils.widgets.head_viewer import OFF_COLOUR, head_viewer

    w = head_viewer(*tiny_model, text="abc")
    for toggle in w.controls["heads"]:
        toggle.value = False
    assert all(t.style.text_color == OFF_COLOUR for t in w.controls["heads"])  # the last one too


def test_head_viewer_labels_every_character_of_a_long_text(tiny_model, monkeypatch):
    from utils.widgets.head_viewer import head_viewer

    seen = []
    real = head_viewer_module.figure_to_png

    def spy(fig, *args, **kwargs):
        fig.canvas.draw()  # tick labels get their text when drawn
        seen.append([([t.get_text() for t in ax.get_xticklabels()],
                       [t.get_text() for t in ax.get_yticklabels()]) for ax in fig.axes])
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(head_viewer_module, "figure_to_png", spy)
    text = "the quick brown fox jumps over t"  # 32 characters, the model's context
    head_viewer(*tiny_model, text=text)
    expected = [c.replace(" ", "␣") for c in text]
    panels = seen[-1]
    assert len(panels) == 4
    assert sum(x == expected for x, _ in panels) == 2  # the bottom panel of each column
    assert sum(y == expected for _, y in panels) == 2  # the first panel of each row


def test_head_viewer_names_no_previous_token_head_without_a_previous_character(tiny_model):
    from utils.widgets.head_viewer import head_viewer

    w = head_viewer(*tiny_model, text="a")
    assert "previous-token" not in w.message.value and "two characters" in w.message.value


def test_head_viewer_pathological_text_and_failures_are_messages(tiny_model, monkeypatch):
    from utils.widgets.head_viewer import head_viewer

    w = head_viewer(*tiny_model, text="abc")
    w.controls["text"].value = "ab" + chr(0xD800)
    assert "alphabet" in w.message.value
    w.controls["text"].value = "z" * 10_000
    assert "only the first 32" in w.message.value and is_png(w.image.value)
    monkeypatch.setattr(head_viewer_module, "attention_maps", broken)
    w.controls["text"].value = "a new text"  # must not raise
    assert "Could not show" in w.message.value and "something inside broke" in w.message.value


def test_head_viewer_greys_the_picture_whenever_it_refuses(tiny_model):
    from utils.widgets.head_viewer import head_viewer

    w = head_viewer(*tiny_model, text="abc")
    for toggle in w.controls["heads"]:
        toggle.value = False
    assert "All heads are off" in w.message.value and w.image.value == placeholder_png()
    w.controls["layer"].value = 1                      # still nothing to draw
    assert w.image.value == placeholder_png()
    w.controls["heads"][1].value = True
    assert "Layer 1" in w.message.value and w.image.value != placeholder_png()
    for text, says in (("ABC!", "alphabet"), ("", "Type some text"), ("猫 🙂", "alphabet")):
        w.controls["text"].value = text
        assert says in w.message.value and w.image.value == placeholder_png(), text
    w.controls["text"].value = "Q" * 60                # cut and refused: both are said
    assert "alphabet" in w.message.value and "only the first 32" in w.message.value


def test_head_viewer_picture_is_shown_at_its_own_size(tiny_model):
    from utils.widgets.head_viewer import head_viewer

    w = head_viewer(*tiny_model, text="abc")
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
    assert w.children[-2].children == (w.image,)


# ---- heads vs width cost (chapter 04) ----------------------------------------------------


def test_head_cost_controls_change_picture_and_numbers():
    from utils.widgets.head_cost import head_cost

    w = head_cost()
    first, first_msg = w.image.value, w.message.value
    assert is_png(first) and "100% of full" in first_msg
    w.controls["n_kv_heads"].value = 2
    assert w.image.value != first and "25% of full" in w.message.value
    second = w.image.value
    w.controls["T"].value = 32768
    assert w.image.value != second and "T=32768" in w.message.value


def test_head_cost_impossible_combinations_are_messages():
    from utils.widgets.head_cost import head_cost

    w = head_cost()
    w.controls["n_heads"].value = 12
    assert "cannot be split" in w.message.value
    assert w.image.value == placeholder_png()        # not the 8-head bars under "12 heads"
    w.controls["T"].value = 64                        # still impossible: still no bars
    assert w.image.value == placeholder_png()
    w.controls["n_heads"].value = 8
    assert "T=64" in w.message.value and w.image.value != placeholder_png()
    w.controls["n_kv_heads"].value = 16
    assert "must divide" in w.message.value and w.image.value == placeholder_png()
    w.controls["n_kv_heads"].value = 1
    assert "MQA" not in w.message.value and "12%" in w.message.value
    assert w.image.value != placeholder_png()
    assert w.image.layout.max_width == "none" and w.children[-2].children == (w.image,)


def test_head_cost_failure_is_a_message(monkeypatch):
    from utils.widgets.head_cost import head_cost

    w = head_cost()
    monkeypatch.setattr(head_cost_module, "attention_cost", broken)
    w.controls["T"].value = 2048  # must not raise
    assert "Could not show" in w.message.value and "something inside broke" in w.message.value
    assert w.image.value == placeholder_png()


# ---- the "rate" slider as chapter 03 shows it, before exercise 4 --------------------------


def test_rate_slider_without_verdict_never_tells_when_the_page_is_matched():
    from utils.widgets.rate_temperature import rate_temperature

    w = rate_temperature(verdict=False)
    shown = set()
    for c in (1.0, 2.0, 2.8, 6.0):       # 2.8 is inside exercise 4's accepted range
        w.controls["c"].value = c
        text = html.unescape(w.message.value)
        assert f"c = {c:.2f}" in text
        for verdict in ("within", "gap", "increase c", "lower c", "too sharp"):
            assert verdict not in text, (c, verdict)
        shown.add(bytes(w.image.value))
    assert len(shown) == 4                # the picture follows the slider
    with_verdict = rate_temperature(c=2.8)
    assert "within 0.02" in with_verdict.message.value
    assert bytes(with_verdict.image.value) != bytes(rate_temperature(c=2.8, verdict=False).image.value)
