"""Small helpers every widget uses to show figures and messages.

Widgets show matplotlib figures as PNG bytes in an `ipywidgets.Image`, not through an
`Output` area: the picture is then plain widget state, which a test can read (`image.value`)
and a browser updates the same way, with or without a running notebook front end.

A widget never shows a picture that contradicts its controls: when a callback cannot draw the
current setting it raises `CannotShow` (or any error), and `guarded(message, picture=image)`
shows the message and replaces the old picture by a grey placeholder (`placeholder_png()`).
Pictures are shown at their own size (`picture_image()`, `scrolling()`), not stretched to
the output's width, and labels go through `glyph_safe` so a character the plotting font
lacks is drawn as a visible □ with its code point named, never as a silent box.
"""

from __future__ import annotations

import functools
import html
import io
import unicodedata
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
from matplotlib import font_manager

from utils.device import one_thread  # noqa: F401  (widgets run their redraws on one thread)

_COLOURS = {"info": "#31708f", "success": "#3c763d", "warning": "#8a6d3b", "error": "#a94442"}


def figure_to_png(fig: plt.Figure, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes and close it (so callbacks don't leak figures)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def message_html(text: str, level: str = "info") -> str:
    """A coloured one-line message for a widget's HTML area (escapes the text)."""
    colour = _COLOURS.get(level, _COLOURS["info"])
    return f'<div style="color:{colour};font-family:sans-serif">{html.escape(text)}</div>'


class CannotShow(Exception):
    """Raised by a widget callback when the controls describe nothing that can be drawn
    (an empty sentence, no layer ticked, heads that do not divide d_model).

    `guarded` shows `text` at `level` ("warning" or "error") and clears the picture, so the
    old picture never stays next to a message that contradicts it.
    """

    def __init__(self, text: str, level: str = "warning") -> None:
        super().__init__(text)
        self.text, self.level = text, level


@functools.lru_cache(maxsize=1)
def placeholder_png() -> bytes:
    """A grey box that stands where the picture was, while the controls cannot be drawn."""
    fig = plt.figure(figsize=(6.0, 1.0))
    fig.patch.set_facecolor("#eeeeee")
    fig.text(0.5, 0.5, "no picture for these settings: see the message below",
             ha="center", va="center", color="#777777", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)
    return buffer.getvalue()


def clear_picture(picture) -> None:
    """Replace what `picture` shows: an Image gets the grey placeholder, an HTML or Text
    area (generated text, a table) is emptied. `picture` may be a widget or a list of them."""
    import ipywidgets

    for widget in _each_control(picture):
        if isinstance(widget, ipywidgets.Image):
            widget.value = placeholder_png()
        elif widget is not None:
            widget.value = ""


def guarded(message_area, what: str = "this setting", picture=None) -> Callable:
    """Decorate a widget callback so that no exception ever reaches the learner as a traceback.

    Whatever the callback raises becomes an error message in `message_area` (an
    `ipywidgets.HTML`), naming the setting and the error; the widget stays usable. A callback
    that cannot draw the current setting raises `CannotShow(text, level)`: its text is shown
    as it is. In both cases `picture` (the widget's Image, or a list of the outputs that
    depend on the controls) is cleared, so what stays on screen never contradicts the
    controls. Every widget callback in the course goes through this one guard:

        @guarded(message, picture=image)
        def update(_change=None):
            if not text.value:
                raise CannotShow("Type a sentence.")
            ...

    The wrapped function returns whatever the callback returned, or None after an error.
    """

    def decorate(callback: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(callback)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except CannotShow as refusal:
                message_area.value = message_html(refusal.text, refusal.level)
            except Exception as error:  # a widget must survive any input: report, don't raise
                message_area.value = message_html(
                    f"Could not show {what}: {type(error).__name__}: {error}. "
                    "Try another value.", "error")
            if picture is not None:
                clear_picture(picture)
            return None

        return run

    return decorate


def cap_text(text: str, limit: int, what: str = "text") -> tuple[str, str]:
    """Cut `text` to `limit` characters for a widget; return the text and a warning message
    (HTML, empty when nothing was cut) that says so, so no input can make a redraw slow.

    >>> cap_text("abcdef", 4)[0]
    'abcd'
    >>> cap_text("abc", 4)
    ('abc', '')
    """
    if len(text) <= limit:
        return text, ""
    return text[:limit], message_html(
        f"The {what} has {len(text):,} characters; only the first {limit:,} are used.", "warning")


def clean_text(text: str) -> str:
    """Replace lone surrogates (which Python strings allow but UTF-8 cannot encode) by U+FFFD,
    so a pasted half of an emoji shows as � instead of breaking the widget.

    >>> clean_text("a" + chr(0xD800) + "b") == "a" + chr(0xFFFD) + "b"
    True
    """
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def picture_image(**layout: Any):
    """An `ipywidgets.Image` shown at the picture's own size.

    ipywidgets stretches an image to the width of its VBox (flex `align-items: stretch`) and
    caps it at `max-width: 100%`: a 700-px figure is blown up and a 1,300-px one shrunk until
    its labels are unreadable. Here the image keeps its natural width; put it in
    `scrolling(image)` so a picture wider than the output scrolls instead of shrinking.
    """
    import ipywidgets

    style = dict(max_width="none", align_self="flex-start", flex="0 0 auto") | layout
    return ipywidgets.Image(format="png", layout=ipywidgets.Layout(**style))


def scrolling(image):
    """A box as wide as the output that scrolls sideways when `image` is wider."""
    import ipywidgets

    return ipywidgets.Box([image], layout=ipywidgets.Layout(overflow="auto", max_width="100%",
                                                            flex="0 0 auto"))


# Fonts that cover what DejaVu Sans lacks (CJK, emoji), used when the machine has them.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK", "WenQuanYi Zen Hei",
                  "Droid Sans Fallback", "Noto Sans Symbols2", "Noto Emoji", "Symbola")
MISSING_GLYPH = "□"


@functools.lru_cache(maxsize=1)
def label_fonts() -> tuple[str, ...]:
    """The font families matplotlib should try for labels: DejaVu Sans, then any installed
    fallback (pass as `fontfamily=list(label_fonts())`)."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed))


@functools.lru_cache(maxsize=1)
def _label_font_files() -> tuple:
    from matplotlib.ft2font import FT2Font

    files = []
    for family in label_fonts():
        path = font_manager.findfont(font_manager.FontProperties(family=family),
                                     fallback_to_default=False)
        files.append(FT2Font(path))
    return tuple(files)


@functools.lru_cache(maxsize=4096)
def has_glyph(ch: str) -> bool:
    """Whether one of `label_fonts()` can draw the character `ch`."""
    return any(font.get_char_index(ord(ch)) for font in _label_font_files())


def glyph_safe(text: str) -> tuple[str, list[str]]:
    """`text` with every character the plotting fonts cannot draw replaced by □, and the list
    of those characters (so the widget can name them). Variation selectors, which only pick
    an emoji's style, are dropped.

    >>> glyph_safe("cat")
    ('cat', [])
    >>> glyph_safe("a\ue000b")                  # a private-use character: no font draws it
    ('a□b', ['\ue000'])
    """
    shown, missing = [], []
    for ch in text:
        if "\ufe00" <= ch <= "\ufe0f":
            continue
        if ch.isspace() or has_glyph(ch):
            shown.append(ch)
        else:
            shown.append(MISSING_GLYPH)
            if ch not in missing:
                missing.append(ch)
    return "".join(shown), missing


def missing_glyphs_note(missing: list[str]) -> str:
    """One sentence naming the characters drawn as □ (for the widget's message; the browser's
    fonts can show them even where matplotlib's cannot)."""
    named = ", ".join(f"{ch} (U+{ord(ch):04X}{_char_name(ch)})" for ch in missing[:6])
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    return (f"{MISSING_GLYPH} in the picture marks a character the plotting font has no glyph "
            f"for: {named}{more}.")


def _char_name(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f" {name.lower()}" if name else ""


def _first_image(widget) -> bytes | None:
    """Depth-first search for the first ipywidgets.Image inside a widget tree."""
    import ipywidgets

    if isinstance(widget, ipywidgets.Image):
        return widget.value
    for child in getattr(widget, "children", ()):
        found = _first_image(child)
        if found:
            return found
    return None


def show(widget, picture: bytes | None = None) -> None:
    """Display a widget together with a static PNG of its current state, in one output.

    JupyterLab renders the live widget; GitHub, nbviewer and HTML exports don't run widgets
    and fall back to the picture, so a reader of the rendered notebook still sees the demo.
    `picture` defaults to the first `Image` inside the widget.
    """
    import base64

    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    png = picture if picture is not None else _first_image(widget)
    if png:
        bundle["image/png"] = base64.b64encode(png).decode("ascii")
    display(bundle, raw=True)


def _each_control(controls) -> list:
    """The widgets in `controls` (a dict, list or single widget; nested lists allowed)."""
    if isinstance(controls, dict):
        controls = list(controls.values())
    if not isinstance(controls, list | tuple):
        return [controls]
    return [widget for item in controls for widget in _each_control(item)]


def watch(controls, callback: Callable[..., Any]) -> None:
    """Call `callback` whenever the value of any widget in `controls` changes, and once now
    to draw the first picture. Decorate the callback with `guarded` first."""
    for control in _each_control(controls):
        control.observe(callback, names="value")
    callback()


def widget_box(rows: list, controls: dict, **outputs: Any):
    """Stack `rows` in a VBox that carries `controls` and each named output as attributes,
    so tests and curious readers can reach them: `box.controls["text"]`, `box.image`, ..."""
    import ipywidgets

    box = ipywidgets.VBox(rows)
    box.controls = controls
    for name, widget in outputs.items():
        setattr(box, name, widget)
    return box
