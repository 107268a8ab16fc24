"""The tokenizer playground driven from Python: set a control's value, check what it shows."""

import re

import ipywidgets
import pytest

from utils.widgets import tokenizer_playground as playground_module
from utils.widgets.display import placeholder_png
from utils.widgets.tokenizer_playground import DEFAULT_TEXT, MAX_CHARS, tokenizer_playground


@pytest.fixture(scope="module")
def playground():
    return tokenizer_playground(text="To be, or not to be", vocab_sizes=(300, 512))


def token_count(html: str, name: str) -> int:
    match = re.search(rf"<b>{re.escape(name)}</b>: (\d+) tokens", html)
    assert match, f"no panel {name!r} in the playground's HTML"
    return int(match.group(1))


def test_default_state_shows_three_panels_and_a_chart(playground):
    html = playground.outputs["html"].value
    assert token_count(html, "char") == len("To be, or not to be")
    assert token_count(html, "word") == 7  # To ·be , ·or ·not ·to ·be
    assert 0 < token_count(html, "BPE 512") < token_count(html, "char")
    assert isinstance(playground.outputs["image"], ipywidgets.Image)
    assert bytes(playground.outputs["image"].value).startswith(b"\x89PNG")


def test_typing_new_text_changes_pieces_and_chart(playground):
    before_html = playground.outputs["html"].value
    before_png = playground.outputs["image"].value
    playground.controls["text"].value = "Now is the winter of our discontent"
    assert playground.outputs["html"].value != before_html
    assert "winter" in playground.outputs["html"].value
    assert playground.outputs["image"].value != before_png


def test_vocab_size_choice_changes_the_bpe_panel(playground):
    playground.controls["text"].value = "Methinks the lady doth protest too much"
    playground.controls["vocab_size"].value = 300
    small = token_count(playground.outputs["html"].value, "BPE 300")
    playground.controls["vocab_size"].value = 512
    large = token_count(playground.outputs["html"].value, "BPE 512")
    assert large < small


def test_empty_text_shows_a_message_and_clears_the_chart(playground):
    playground.controls["text"].value = ""
    assert "Type some text" in playground.outputs["html"].value
    assert "Traceback" not in playground.outputs["html"].value
    assert playground.image.value == placeholder_png()  # no chart of the text that was there
    playground.controls["vocab_size"].value = 300         # still nothing to count
    assert playground.image.value == placeholder_png()
    playground.controls["vocab_size"].value = 512
    playground.controls["text"].value = "back again"
    assert playground.image.value != placeholder_png() and "back" in playground.message.value


def test_unknown_characters_show_a_message_and_bpe_still_works(playground):
    playground.controls["text"].value = "café 🙂 Zwölf"
    html = playground.outputs["html"].value
    assert "never seen in the corpus" in html and "unknown word" in html
    assert token_count(html, "BPE 512") > 0


def test_very_long_text_is_cut_with_a_message(playground):
    playground.controls["text"].value = "to be or not " * 1000
    html = playground.outputs["html"].value
    assert f"only the first {MAX_CHARS}" in html
    assert token_count(html, "char") == MAX_CHARS


def test_html_pieces_are_escaped(playground):
    playground.controls["text"].value = "<script>alert(1)</script>"
    assert "<script>" not in playground.outputs["html"].value


def test_characters_without_an_id_are_counted_and_shown(playground):
    playground.controls["text"].value = DEFAULT_TEXT  # ends in an emoji the corpus never has
    html = playground.outputs["html"].value
    missing = int(re.search(r"<b>char</b>: \d+ tokens \+ (\d+) character", html).group(1))
    assert token_count(html, "char") + missing == len(DEFAULT_TEXT)
    assert missing == 1 and "🙂" in html  # the emoji is shown, marked, not dropped


def test_lone_surrogate_is_shown_not_raised(playground):
    playground.controls["text"].value = "half an emoji: " + chr(0xD83D)
    html = playground.outputs["html"].value
    assert token_count(html, "BPE 512") > 0 and "Could not" not in html


def test_a_failing_tokenizer_is_a_message(playground, monkeypatch):
    def broken(*args):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(playground_module, "tokenize_all", broken)
    playground.controls["text"].value = "something new"  # must not raise
    html = playground.outputs["html"].value
    assert "Could not show" in html and "tokenizer exploded" in html
    assert playground.image.value == placeholder_png()  # the old chart does not stay


def test_chart_is_shown_at_its_own_size(playground):
    image = playground.image
    assert image.layout.max_width == "none" and image.layout.width is None
    assert playground.children[-1].children == (image,)  # in a box that scrolls, not shrinks
