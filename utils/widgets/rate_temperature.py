"""The "rate" temperature slider (chapter 03): which sharpness reproduces the page's weights?

The explainer page prints attention weights for "rate" over "The merchant chargeback rate is
high" next to raw scores. Plain softmax of those scores is much flatter than the printed
weights. Multiplying the scores by a factor c before the softmax (c = 1 / temperature) sharpens
the distribution; drag c and watch the bars meet the page's stars. Exercise 4 of the chapter
asks for such a c by computation; this slider shows it by eye.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.checks.ch03 import PAGE_TOLERANCE, PAGE_WEIGHTS, RATE_SCORES, RATE_TOKENS
from utils.widgets.display import figure_to_png, guarded, message_html, watch, widget_box


def weights_at(c: float) -> torch.Tensor:
    """softmax(c · scores) for the page's six scores.

    >>> round(weights_at(1.0).max().item(), 3)
    0.234
    """
    return torch.softmax(c * torch.tensor(RATE_SCORES, dtype=torch.float64), dim=-1)


def draw(c: float) -> tuple[bytes, str]:
    """The PNG and the message for one multiplier c."""
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
    ax.set_title(f"c = {c:.2f} (temperature {1 / c:.2f}): largest gap to the page {gap:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    if gap <= PAGE_TOLERANCE:
        text, level = (f"c = {c:.2f}: every weight is within {PAGE_TOLERANCE} of the page's. "
                       "The page's numbers come from sharper scores than it shows.", "success")
    else:
        direction = "sharpen: increase c" if weights.max() < page.max() else "too sharp: lower c"
        text, level = (f"c = {c:.2f}: the largest gap to the page is {gap:.3f} ({direction}).",
                       "info")
    return figure_to_png(fig), message_html(text, level)


def rate_temperature(c: float = 1.0) -> widgets.VBox:
    """Build the widget. Control: `w.controls["c"]` (FloatSlider, 0.25 to 6); outputs `w.image`
    (PNG) and `w.message` (HTML).

    >>> w = rate_temperature()
    >>> before = w.image.value
    >>> w.controls["c"].value = 3.0
    >>> w.image.value != before
    True
    """
    slider = widgets.FloatSlider(value=c, min=0.25, max=6.0, step=0.05, description="c",
                                 continuous_update=False, readout_format=".2f",
                                 layout=widgets.Layout(width="480px"))
    image, message = widgets.Image(format="png"), widgets.HTML()

    @guarded(message, "this value of c")
    def update(_=None) -> None:
        image.value, message.value = draw(slider.value)

    controls = {"c": slider}
    watch(controls, update)
    return widget_box([slider, image, message], controls, image=image, message=message)
