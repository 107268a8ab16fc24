"""Chapter 02 widgets driven from Python: build, set a control's value, check what changed."""

import matplotlib.pyplot as plt
import pytest
import torch

from utils.widgets import positional_explorer as positional_module
from utils.widgets.analogy_explorer import MAX_WORD, analogy_explorer, is_answer_word
from utils.widgets.display import has_glyph, placeholder_png
from utils.widgets.embedding_heatmap import MAX_CHARS, embedding_heatmap
from utils.widgets.positional_explorer import _alibi, positional_explorer
from utils.word_vectors import WordVectors

PNG = b"\x89PNG"
SURROGATE = "king" + chr(0xD83D)  # half of an emoji, as a bad paste can leave it


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    data = bytes(data)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def vectors() -> WordVectors:
    """A small made-up vocabulary: building the real one takes seconds, and is tested apart."""
    words = ["king", "queen", "man", "woman", "thou", "thee", "day", "night", "apple", "p"]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(len(words), 10, generator=g)
    v[1] = v[0] - v[2] + v[3] + 0.05 * torch.randn(10, generator=g)  # queen = king - man + woman
    v = v / v.norm(dim=1, keepdim=True)
    target = v[0] - v[2] + v[3]
    v[9] = target / target.norm()  # a stray letter "p", exactly at king - man + woman
    return WordVectors(words, v)


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
            assert "could not" not in w.message.value.lower()
        for d in (w.controls["dim"].max, 0):              # the last dimension (or head), the first
            w.controls["dim"].value = d
            assert "could not" not in w.message.value.lower()
            assert w.image.value != placeholder_png()


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
    w.controls["words"].value = "   "
    assert "type some words" in w.message.value
    assert w.image.value == placeholder_png()  # no stripes of words no longer in the box
    w.controls["dims"].value = 4                # still nothing to draw
    assert w.image.value == placeholder_png()
    w.controls["words"].value = "unicorn"
    assert "unicorn" in w.message.value and w.image.value == placeholder_png()
    w.controls["words"].value = "queen"
    assert bytes(w.image.value).startswith(PNG) and w.image.value != placeholder_png()


def test_heatmap_long_unknown_text_says_it_was_cut_and_greys_the_picture(vectors):
    w = embedding_heatmap(vectors, words="king")
    w.controls["words"].value = "zebra " * 1000
    assert f"first {MAX_CHARS:,} characters" in w.message.value and "zebra" in w.message.value
    assert w.image.value == placeholder_png()


def test_chapter_02_pictures_are_shown_at_their_own_size(vectors):
    for w in (embedding_heatmap(vectors), analogy_explorer(vectors), positional_explorer()):
        assert w.image.layout.max_width == "none" and w.image.layout.width is None
        assert any(getattr(child, "children", ()) == (w.image,) for child in w.children)


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


def test_alibi_panel_has_the_dashed_curve_from_position_0():
    fig, (ax_pattern, ax_score) = plt.subplots(1, 2)
    _alibi(ax_pattern, ax_score, T=16, n_heads=4, position=5, head=1)
    dashed = [line for line in ax_score.get_lines() if line.get_linestyle() == "--"]
    chosen = [line for line in ax_score.get_lines() if "p=5" in line.get_label()]
    plt.close(fig)
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == list(range(16))
    # the two curves coincide where they overlap: the bias depends on the offset only
    offsets, bias = chosen[0].get_xdata(), chosen[0].get_ydata()
    from_zero = dict(zip(dashed[0].get_xdata(), dashed[0].get_ydata(), strict=True))
    assert all(abs(b - from_zero[k]) < 1e-6 for k, b in zip(offsets, bias, strict=True) if k >= 0)


def test_positional_explorer_failure_is_a_message(monkeypatch):
    w = positional_explorer(T=32, d_model=16)

    def broken(*args):
        raise ValueError("bad angle")

    monkeypatch.setattr(positional_module, "_rope", broken)
    w.controls["kind"].value = "RoPE"  # must not raise
    assert "Could not show" in w.message.value and "bad angle" in w.message.value
    assert w.image.value == placeholder_png()  # not the sinusoidal table under "RoPE"
    w.controls["kind"].value = "ALiBi"
    assert "slope" in w.message.value and w.image.value != placeholder_png()


def test_heatmap_reads_words_like_the_corpus_and_lists_unknowns_once(vectors):
    w = embedding_heatmap(vectors, words="king")
    w.controls["words"].value = "King, queen. zebra zebra ZEBRA"
    assert "2 words" in w.message.value
    assert w.message.value.count("zebra") == 1 and "king" not in w.message.value.split(":")[-1]


def test_heatmap_pathological_text_is_a_message(vectors):
    w = embedding_heatmap(vectors, words="king")
    w.controls["words"].value = SURROGATE + " queen"
    assert "queen" in w.message.value or "words x" in w.message.value
    for n_dims in (w.controls["dims"].min, w.controls["dims"].max):   # the slider's ends
        w.controls["dims"].value = n_dims
        assert f"x {n_dims} dimensions" in w.message.value and w.image.value != placeholder_png()
    w.controls["words"].value = "king " * 5000
    assert f"first {MAX_CHARS:,}" in w.message.value and "1 words" in w.message.value


def test_analogy_explorer_surrogate_and_huge_word_are_messages(vectors):
    w = analogy_explorer(vectors, k=3)
    w.controls["word"].value = SURROGATE  # used to raise out of the callback
    assert "not in the" in w.message.value and bytes(w.image.value).startswith(PNG)
    w.controls["c"].value = "x" * 10_000
    assert f"only the first {MAX_WORD}" in w.message.value
    width, height = png_size(w.image.value)
    assert width < 1500 and height < 1500, (width, height)


def test_analogy_explorer_drops_stray_single_letters(vectors):
    assert [w for w in ("p", "a", "i", "o", "s", "pp") if is_answer_word(w)] == ["a", "i", "o", "pp"]
    assert vectors.analogy("man", "woman", "king", k=1)[0][0] == "p"  # the plant works
    w = analogy_explorer(vectors, a="man", b="woman", c="king", k=3)
    assert "king : queen" in w.message.value


def test_analogy_explorer_greys_what_it_cannot_answer(vectors):
    w = analogy_explorer(vectors, k=3)
    w.controls["word"].value = "zebra"           # one panel left: drawn, the other greyed
    assert "zebra" in w.message.value and w.image.value != placeholder_png()
    w.controls["b"].value = ""                   # neither panel has an answer: no old bars
    assert "each of a, b and c" in w.message.value and "zebra" in w.message.value
    assert w.image.value == placeholder_png()
    w.controls["k"].value = 5                    # still nothing to draw
    assert w.image.value == placeholder_png()
    w.controls["c"].value = "y" * 100            # the cut is said even without a picture
    assert f"only the first {MAX_WORD}" in w.message.value
    w.controls["word"].value = "king"
    assert w.image.value != placeholder_png() and "nearest" not in w.message.value


def test_analogy_explorer_names_characters_the_font_lacks(vectors, monkeypatch):
    from utils.widgets import analogy_explorer as analogy_module

    titles = []
    real = analogy_module._bars
    monkeypatch.setattr(analogy_module, "_bars",
                        lambda ax, results, title: (titles.append(title), real(ax, results, title)))
    w = analogy_explorer(vectors, word="猫🙂", k=3)
    message = w.message.value
    for ch in "猫🙂":
        if not has_glyph(ch):                    # no CJK/emoji font on this machine
            assert f"U+{ord(ch):04X}" in message
    assert all(has_glyph(ch) for title in titles for ch in title if not ch.isspace())
