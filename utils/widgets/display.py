"""Small helpers every widget uses to show figures and messages.

Widgets show matplotlib figures as PNG bytes in an `ipywidgets.Image`, not through an
`Output` area: the picture is then plain widget state, which a test can read (`image.value`)
and a browser updates the same way, with or without a running notebook front end.
"""

from __future__ import annotations

import functools
import html
import io
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt

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


def guarded(message_area, what: str = "this setting") -> Callable:
    """Decorate a widget callback so that no exception ever reaches the learner as a traceback.

    Whatever the callback raises becomes an error message in `message_area` (an
    `ipywidgets.HTML`), naming the setting and the error; the widget stays usable. Every widget
    callback in the course goes through this one guard:

        @guarded(message)
        def update(_change=None):
            ...

    The wrapped function returns whatever the callback returned, or None after an error.
    """

    def decorate(callback: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(callback)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except Exception as error:  # a widget must survive any input: report, don't raise
                message_area.value = message_html(
                    f"Could not show {what}: {type(error).__name__}: {error}. "
                    "Try another value.", "error")
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
