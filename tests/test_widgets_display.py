"""The helpers every widget shares: the guard, the text cap, the surrogate cleaner, wiring."""

import struct
import zlib

import ipywidgets
import matplotlib.pyplot as plt

from utils.widgets.display import (
    MISSING_GLYPH,
    CannotShow,
    cap_text,
    clean_text,
    figure_to_png,
    glyph_safe,
    guarded,
    has_glyph,
    missing_glyphs_note,
    picture_image,
    placeholder_png,
    scrolling,
    watch,
    widget_box,
)


def a_picture() -> bytes:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return figure_to_png(fig)


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


def test_cannot_show_puts_its_text_in_the_message_and_greys_the_picture():
    message, image = ipywidgets.HTML(), ipywidgets.Image(value=a_picture())
    table = ipywidgets.HTML("<b>old</b>")               # an output that is text, not an image

    @guarded(message, "the mask", picture=[image, table])
    def refuses():
        raise CannotShow("Type a sentence <here>.", "warning")

    assert refuses() is None
    assert "Type a sentence &lt;here&gt;." in message.value and "#8a6d3b" in message.value  # escaped
    assert "Could not show" not in message.value        # a refusal is said as it is
    assert image.value == placeholder_png() and table.value == ""


def test_any_other_error_greys_the_picture_too_and_never_raises():
    message, image = ipywidgets.HTML(), ipywidgets.Image(value=a_picture())

    @guarded(message, "this setting", picture=image)
    def breaks(_change=None):
        image.value = b"half-drawn"                      # whatever it left is replaced as well
        raise KeyError("n_heads")

    breaks({"new": 3})
    assert "Could not show this setting: KeyError" in message.value and "#a94442" in message.value
    assert image.value == placeholder_png()


def test_without_a_picture_the_guard_only_reports():
    message, image = ipywidgets.HTML(), ipywidgets.Image(value=a_picture())
    before = image.value

    @guarded(message)
    def refuses():
        raise CannotShow("nothing to draw")

    refuses()
    assert "nothing to draw" in message.value and image.value == before


def test_a_callback_that_works_leaves_message_and_picture_alone():
    message, image = ipywidgets.HTML("kept"), ipywidgets.Image(value=a_picture())
    before = image.value

    @guarded(message, picture=image)
    def works():
        return 42

    assert works() == 42 and message.value == "kept" and image.value == before


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each chunk, each checked against its CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def test_placeholder_is_a_valid_png_unlike_any_picture():
    data = placeholder_png()
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width > 3 * height > 0                        # a wide grey strip, not a figure
    assert data != a_picture() and placeholder_png() is data   # made once


def test_picture_image_keeps_its_natural_width_and_scrolls():
    image = picture_image()
    assert image.format == "png"
    assert image.layout.max_width == "none" and image.layout.width is None
    assert image.layout.align_self == "flex-start"       # not stretched across the VBox
    assert picture_image(height="200px").layout.height == "200px"
    box = scrolling(image)
    assert box.children == (image,) and box.layout.overflow == "auto"
    assert box.layout.max_width == "100%"


def test_glyph_safe_replaces_what_the_font_lacks_and_names_it():
    assert glyph_safe("cat sat") == ("cat sat", [])
    assert glyph_safe("\ue000x\ue000") == (f"{MISSING_GLYPH}x{MISSING_GLYPH}", ["\ue000"])
    assert glyph_safe("♥\ufe0f")[0] == glyph_safe("♥")[0]  # a variation selector is dropped
    for ch in "猫🙂":                                     # CJK and emoji
        shown, missing = glyph_safe(f"a{ch}b")
        assert shown == (f"a{ch}b" if has_glyph(ch) else f"a{MISSING_GLYPH}b")
        assert missing == ([] if has_glyph(ch) else [ch])
    note = missing_glyphs_note(["\ue000", "猫"])
    assert "U+E000" in note and "U+732B" in note and "cjk unified ideograph-732b" in note
    assert "and 2 more" in missing_glyphs_note([chr(0xE000 + i) for i in range(8)])
