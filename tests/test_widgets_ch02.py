"""Chapter 02 widgets driven from Python: build, set a control's value, check what changed."""

import pytest
import torch

from utils.widgets.analogy_explorer import analogy_explorer
from utils.widgets.embedding_heatmap import embedding_heatmap
from utils.widgets.positional_explorer import positional_explorer
from utils.word_vectors import WordVectors

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def vectors() -> WordVectors:
    """A small made-up vocabulary: building the real one takes seconds, and is tested apart."""
    words = ["king", "queen", "man", "woman", "thou", "thee", "day", "night", "apple"]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(len(words), 10, generator=g)
    v[1] = v[0] - v[2] + v[3] + 0.05 * torch.randn(10, generator=g)  # queen = king - man + woman
    return WordVectors(words, v / v.norm(dim=1, keepdim=True))


# ---- positional explorer --------------------------------------------------------------------

def test_positional_explorer_starts_with_a_picture():
    w = positional_explorer(T=32, d_model=16)
    assert bytes(w.image.value).startswith(PNG)
    assert "sine" in w.message.value


@pytest.mark.parametrize("kind, word", [("RoPE", "rotated"), ("ALiBi", "slope")])
def test_positional_explorer_kind_changes_picture_and_caption(kind, word):
    w = positional_explorer(T=32, d_model=16)
    before = w.image.value
    w.controls["kind"].value = kind
    assert w.image.value != before and bytes(w.image.value).startswith(PNG)
    assert word in w.message.value


def test_positional_explorer_sliders_change_picture():
    w = positional_explorer(T=32, d_model=16)
    for name, value in (("position", 20), ("dim", 5)):
        before = w.image.value
        w.controls[name].value = value
        assert w.image.value != before, name


def test_positional_explorer_alibi_dim_slider_becomes_head_slider():
    w = positional_explorer(T=32, d_model=16, n_heads=4)
    w.controls["dim"].value = 15
    w.controls["kind"].value = "ALiBi"
    assert w.controls["dim"].max == 3 and w.controls["dim"].value == 3
    assert w.controls["dim"].description == "head" and "head 3 of 4" in w.message.value
    w.controls["kind"].value = "sinusoidal"
    assert w.controls["dim"].max == 15


def test_positional_explorer_extreme_positions():
    w = positional_explorer(T=32, d_model=16)
    for kind in ("sinusoidal", "RoPE", "ALiBi"):
        w.controls["kind"].value = kind
        for p in (0, 31):
            w.controls["position"].value = p
            assert "could not" not in w.message.value


# ---- embedding heatmap ----------------------------------------------------------------------

def test_heatmap_changes_with_words_and_dims(vectors):
    w = embedding_heatmap(vectors, words="king queen man", n_dims=8)
    first = w.image.value
    assert bytes(first).startswith(PNG) and "3 words x 8 dimensions" in w.message.value
    w.controls["words"].value = "day night"
    assert w.image.value != first and "2 words" in w.message.value
    second = w.image.value
    w.controls["dims"].value = 4
    assert w.image.value != second


def test_heatmap_unknown_and_empty_input_give_messages(vectors):
    w = embedding_heatmap(vectors, words="king")
    w.controls["words"].value = "king zebra"
    assert "zebra" in w.message.value and "not in" in w.message.value
    shown = w.image.value
    w.controls["words"].value = "   "
    assert "type some words" in w.message.value
    assert w.image.value == shown  # the last good picture stays
    w.controls["words"].value = "unicorn"
    assert "unicorn" in w.message.value


# ---- analogy explorer -----------------------------------------------------------------------

def test_analogy_explorer_finds_the_planted_analogy(vectors):
    w = analogy_explorer(vectors, word="king", a="man", b="woman", c="king", k=3)
    assert bytes(w.image.value).startswith(PNG)
    assert "man : woman :: king : queen" in w.message.value


def test_analogy_explorer_controls_change_output(vectors):
    w = analogy_explorer(vectors, k=3)
    before = w.image.value
    w.controls["word"].value = "night"
    assert w.image.value != before
    before = w.image.value
    w.controls["k"].value = 5
    assert w.image.value != before
    w.controls["c"].value = "thou"
    assert "king : " not in w.message.value and "thou" in w.message.value


def test_analogy_explorer_unknown_words_give_a_message(vectors):
    w = analogy_explorer(vectors, k=3)
    w.controls["word"].value = "Zebra"
    assert "zebra" in w.message.value and "not in" in w.message.value
    w.controls["a"].value = "unicorn"
    assert "unicorn" in w.message.value
    w.controls["word"].value = ""
    assert "type a word" in w.message.value
