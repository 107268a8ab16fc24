"""Small helpers every widget uses to show figures and messages.

Widgets show matplotlib figures as PNG bytes in an `ipywidgets.Image`, not through an
`Output` area: the picture is then plain widget state, which a test can read (`image.value`)
and a browser updates the same way, with or without a running notebook front end.
"""

from __future__ import annotations

import html
import io

import matplotlib.pyplot as plt

_COLOURS = {"info": "#31708f", "warning": "#8a6d3b", "error": "#a94442"}


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
