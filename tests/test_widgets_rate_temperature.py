"""Chapter 03's "rate" temperature slider, driven from Python."""

import html

from utils.widgets import rate_temperature as module
from utils.widgets.display import placeholder_png
from utils.widgets.rate_temperature import rate_temperature, weights_at


def test_plain_softmax_is_too_flat_and_the_slider_reaches_the_page():
    w = rate_temperature()
    assert "increase c" in w.message.value
    first = w.image.value
    w.controls["c"].value = 2.8
    assert w.image.value != first
    assert "within 0.02" in w.message.value and "#3c763d" in w.message.value


def test_too_sharp_says_so_and_weights_stay_a_distribution():
    w = rate_temperature(c=6.0)
    assert "too sharp" in html.unescape(w.message.value)
    for c in (0.25, 1.0, 2.8, 6.0):
        assert abs(weights_at(c).sum().item() - 1) < 1e-12


def test_failure_is_a_message(monkeypatch):
    w = rate_temperature()
    monkeypatch.setattr(module, "draw", lambda c: (_ for _ in ()).throw(RuntimeError("broke")))
    w.controls["c"].value = 2.0
    assert "Could not show" in w.message.value and "broke" in w.message.value
    assert w.image.value == placeholder_png()     # not the bars of c = 1 under c = 2
    monkeypatch.undo()
    for c in (6.0, 0.25):                         # the slider's ends still draw
        w.controls["c"].value = c
        assert f"c = {c:.2f}" in w.message.value and w.image.value != placeholder_png()


def test_picture_is_shown_at_its_own_size():
    w = rate_temperature(verdict=False)
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
    assert w.children[-2].children == (w.image,)
