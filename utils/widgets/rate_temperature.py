"""The "rate" temperature slider (chapter 03): which sharpness reproduces the page's weights?

The explainer page prints attention weights for "rate" over "The merchant chargeback rate is
high" next to raw scores. Plain softmax of those scores is much flatter than the printed
weights. Multiplying the scores by a factor c before the softmax (c = 1 / temperature) sharpens
the distribution; drag c and watch the bars approach the page's stars. Exercise 4 of the chapter
asks for such a c by computation, so the chapter shows the slider with `verdict=False`: bars and
stars only, no "within 0.02" message and no gap in the title, which would hand out the answer.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.checks.ch03 import PAGE_TOLERANCE, PAGE_WEIGHTS, RATE_SCORES, RATE_TOKENS
from utils.widgets.display import (
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)


def weights_at(c: float) -> torch.Tensor:
    """softmax(c · scores) for the page's six scores.

    >>> round(weights_at(1.0).max().item(), 3)
    0.234
    """
    return torch.softmax(c * torch.tensor(RATE_SCORES, dtype=torch.float64), dim=-1)


def draw(c: float, verdict: bool = True) -> tuple[bytes, str]:
    """The PNG and the message for one multiplier c; with `verdict=False` neither says how far
    the bars are from the stars."""
    weights = weights_at(c)
    page = torch.tensor(PAGE_WEIGHTS, dtype=torch.float64)
    gap = (weights - page).abs().max().item()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.bar(range(len(RATE_TOKENS)), weights.numpy(), color="tab:blue",
           label=f"softmax({c:.2f} × score)")
    ax.plot(range(len(RATE_TOKENS)), page.numpy(), "*", color="tab:red", markersize=14,
            label="the page's weights")
    ax.set_xticks(range(len(RATE_TOKENS)), RATE_TOKENS)
    ax.set_ylim(0, 0.6)
    ax.set_xlabel("key token (query: 'rate')")
    ax.set_ylabel("attention weight")
    gap_text = f": largest gap to the page {gap:.3f}" if verdict else ""
    ax.set_title(f"c = {c:.2f} (temperature {1 / c:.2f}){gap_text}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    if not verdict:
        text, level = (f"c = {c:.2f}: the bars are softmax(c × score), the stars the page's "
                       "weights. How close is close enough, and which c gets there, is for "
                       "exercise 4 to compute.", "info")
    elif gap <= PAGE_TOLERANCE:
        text, level = (f"c = {c:.2f}: every weight is within {PAGE_TOLERANCE} of the page's. "
                       "The page's numbers come from sharper scores than it shows.", "success")
    else:
        direction = "sharpen: increase c" if weights.max() < page.max() else "too sharp: lower c"
        text, level = (f"c = {c:.2f}: the largest gap to the page is {gap:.3f} ({direction}).",
                       "info")
    return figure_to_png(fig), message_html(text, level)


def rate_temperature(c: float = 1.0, verdict: bool = True) -> widgets.VBox:
    """Build the widget. Control: `w.controls["c"]` (FloatSlider, 0.25 to 6); outputs `w.image`
    (PNG) and `w.message` (HTML). `verdict=False` leaves out the largest gap and the message
    saying when every bar is within 0.02 of its star (the chapter uses it before exercise 4).
    A value that cannot be drawn shows why and greys the picture.

    >>> w = rate_temperature()
    >>> before = w.image.value
    >>> w.controls["c"].value = 3.0
    >>> w.image.value != before
    True
    """
    slider = widgets.FloatSlider(value=c, min=0.25, max=6.0, step=0.05, description="c",
                                 continuous_update=False, readout_format=".2f",
                                 layout=widgets.Layout(width="480px"))
    image, message = picture_image(), widgets.HTML()   # the picture at its own size

    @guarded(message, "this value of c", picture=image)
    def update(_=None) -> None:
        image.value, message.value = draw(slider.value) if verdict else draw(slider.value, verdict=False)

    controls = {"c": slider}
    watch(controls, update)
    return widget_box([slider, scrolling(image), message], controls, image=image, message=message)
