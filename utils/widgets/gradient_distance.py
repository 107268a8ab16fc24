"""Chapter 00's widget: how much of token 1 reaches position t, in an RNN and in attention."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.sequence_models import compare_gradients
from utils.widgets.display import figure_to_png, message_html

# Gradients below this are drawn at the floor: float64 cannot go much lower and a log axis
# cannot show zero.
FLOOR = 1e-300


def plot_gradient_decay(gradients: dict[str, torch.Tensor], position: int, ax=None):
    """Log-scale plot of |d output_t / d token 1| against t, with a marker at `position`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    t = torch.arange(1, len(gradients["rnn"]) + 1)
    for name, colour in (("rnn", "tab:red"), ("attention", "tab:blue")):
        ax.semilogy(t, gradients[name].clamp_min(FLOOR), color=colour,
                    label="RNN" if name == "rnn" else "attention")
    ax.axvline(position, color="grey", linestyle="--", label=f"position {position}")
    ax.set_xlabel("position t of the output")
    ax.set_ylabel("gradient reaching token 1 (log scale)")
    ax.set_title("How loudly token 1 is heard at position t")
    ax.legend(loc="lower left")
    return ax


def describe(gradients: dict[str, torch.Tensor], position: int) -> str:
    rnn = gradients["rnn"][position - 1].item()
    attention = gradients["attention"][position - 1].item()
    ratio = attention / max(rnn, FLOOR)
    return (f"At position {position}: RNN {rnn:.2e}, attention {attention:.2e} — attention hears "
            f"token 1 about {ratio:.1e}× more strongly.")


def gradient_distance_explorer(seq_len: int = 100, recurrent_scale: float = 0.9) -> widgets.VBox:
    """Sliders for sequence length, the position t to read, and the RNN's recurrent scale.

    The returned box has `.controls` (a dict of the three sliders by name: "seq_len",
    "position", "recurrent_scale"), `.image` (the plot as PNG) and `.readout` (HTML text).
    """
    controls = {
        "seq_len": widgets.IntSlider(value=seq_len, min=10, max=300, step=10,
                                     description="sequence length", continuous_update=False,
                                     style={"description_width": "initial"}),
        "position": widgets.IntSlider(value=min(50, seq_len), min=1, max=seq_len,
                                      description="position t", continuous_update=False,
                                      style={"description_width": "initial"}),
        "recurrent_scale": widgets.FloatSlider(value=recurrent_scale, min=0.5, max=1.5, step=0.05,
                                               description="RNN weight scale",
                                               continuous_update=False,
                                               style={"description_width": "initial"}),
    }
    image = widgets.Image(format="png")
    readout = widgets.HTML()
    cache: dict[tuple[int, float], dict[str, torch.Tensor]] = {}

    def gradients() -> dict[str, torch.Tensor]:
        # Recompute only when the models or the sequence change, not when t moves.
        key = (controls["seq_len"].value, round(controls["recurrent_scale"].value, 4))
        if key not in cache:
            cache.clear()
            cache[key] = compare_gradients(*key)
        return cache[key]

    def redraw(_change=None) -> None:
        controls["position"].max = controls["seq_len"].value  # also clamps position's value
        position = controls["position"].value
        try:
            grads = gradients()
        except Exception as error:  # a widget shows problems, it never raises into the page
            readout.value = message_html(f"Could not compute gradients: {error}", "error")
            return
        ax = plot_gradient_decay(grads, position)
        image.value = figure_to_png(ax.figure)
        readout.value = message_html(describe(grads, position))

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([*controls.values(), readout, image])
    box.controls, box.image, box.readout = controls, image, readout
    return box
