"""The helpers every widget shares: the guard, the text cap, the surrogate cleaner, wiring."""

import ipywidgets

from utils.widgets.display import cap_text, clean_text, guarded, watch, widget_box


def test_guard_turns_an_exception_into_a_message_and_passes_results_through():
    message = ipywidgets.HTML()

    @guarded(message, "the answer")
    def fails(value):
        raise ZeroDivisionError(f"cannot divide {value}")

    @guarded(message, "the answer")
    def works(value):
        return value * 2

    assert fails(3) is None
    assert "Could not show the answer" in message.value and "cannot divide 3" in message.value
    assert works(4) == 8


def test_cap_text_cuts_and_says_so():
    text, warning = cap_text("x" * 50, 20, "sentence")
    assert text == "x" * 20 and "50 characters" in warning and "first 20" in warning
    assert cap_text("short", 20) == ("short", "")


def test_clean_text_replaces_lone_surrogates_only():
    assert clean_text("a\ud83d") == "a\ufffd"
    assert clean_text("a🙂é") == "a🙂é"
    clean_text("\udfff" * 3).encode("utf-8")  # encodable now


def test_watch_runs_now_and_on_every_change_and_box_carries_its_parts():
    slider, toggles = ipywidgets.IntSlider(), [ipywidgets.ToggleButton(), ipywidgets.ToggleButton()]
    calls = []
    watch({"n": slider, "toggles": toggles}, lambda _change=None: calls.append(slider.value))
    slider.value = 5
    toggles[1].value = True
    assert calls == [0, 5, 5]
    image = ipywidgets.Image()
    box = widget_box([slider, image], {"n": slider}, image=image)
    assert box.controls["n"] is slider and box.image is image and list(box.children) == [slider, image]
