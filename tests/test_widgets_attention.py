"""Widgets of chapters 03 and 04, driven from Python: set a control, the picture changes."""

import html

import pytest

from utils.widgets.attention_explorer import EXAMPLES, MAX_TOKENS, attention_explorer
from utils.widgets.softmax_scaling import D_KS, softmax_gradient_norm, softmax_scaling


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


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


# ---- attention explorer ------------------------------------------------------------------


def test_explorer_query_buttons_change_picture():
    w = attention_explorer(EXAMPLES[1])
    buttons = w.controls["query"]
    assert [label for label, _ in buttons.options][buttons.value] == "it"
    first = w.image.value
    buttons.value = 1
    assert w.image.value != first and "'animal' attends" in html.unescape(w.message.value)


def test_explorer_example_and_typed_sentence():
    w = attention_explorer()
    w.controls["example"].value = EXAMPLES[0]
    assert w.controls["text"].value == EXAMPLES[0]
    assert len(w.controls["query"].options) == 6
    before = w.image.value
    w.controls["text"].value = "Attention is a soft dictionary lookup"
    assert len(w.controls["query"].options) == 6 and w.image.value != before


def test_explorer_bad_input_is_a_message():
    w = attention_explorer()
    w.controls["text"].value = "   "
    assert "Type a sentence" in w.message.value
    w.controls["text"].value = " ".join(["word"] * (MAX_TOKENS + 5))
    assert len(w.controls["query"].options) == MAX_TOKENS and "first" in w.message.value


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
    assert "first 32 characters" in w.message.value


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
    w.controls["n_heads"].value = 8
    w.controls["n_kv_heads"].value = 16
    assert "must divide" in w.message.value
    w.controls["n_kv_heads"].value = 1
    assert "MQA" not in w.message.value and "12%" in w.message.value
