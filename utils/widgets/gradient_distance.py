"""Chapter 00's widget: how much of token 1 reaches position t, in an RNN and in attention."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.sequence_models import compare_gradients
from utils.widgets.display import (
    figure_to_png,
    guarded,
    message_html,
    one_thread,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

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
    ax.set_ylabel("‖∂ output_t / ∂ token 1‖ (log scale)")
    ax.set_title("How loudly token 1 is heard at position t")
    ax.legend(loc="lower left")
    return ax


def describe(gradients: dict[str, torch.Tensor], position: int) -> str:
    """One sentence comparing the two models at `position`, the stronger one named first."""
    rnn = gradients["rnn"][position - 1].item()
    attention = gradients["attention"][position - 1].item()
    numbers = f"At position {position}: RNN {rnn:.2e}, attention {attention:.2e}"
    if rnn <= FLOOR and attention <= FLOOR:
        return f"{numbers}: neither model hears token 1 here."
    if attention >= rnn:
        stronger, weaker, ratio = "attention", "the RNN", attention / max(rnn, FLOOR)
    else:
        stronger, weaker, ratio = "the RNN", "attention", rnn / max(attention, FLOOR)
    return f"{numbers}: {stronger} hears token 1 about {ratio:.3g}× more strongly than {weaker}."


def gradient_distance_explorer(seq_len: int = 100, recurrent_scale: float = 0.9) -> widgets.VBox:
    """Sliders for sequence length, the position t to read, and the RNN's recurrent scale.

    The returned box has `.controls` (a dict of the three sliders by name: "seq_len",
    "position", "recurrent_scale"), `.image` (the plot as PNG) and `.readout` (HTML text, also
    reachable as `.message`). The gradients are recomputed only when the length or the scale
    changes (under 1 s at length 300 on a 2-core CPU), not when t moves. If they cannot be
    computed, the readout says why and the plot is replaced by a grey placeholder.
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
    image = picture_image()  # at its own size, not stretched to the output
    readout = widgets.HTML()
    cache: dict[tuple, torch.Tensor] = {}

    def gradients() -> dict[str, torch.Tensor]:
        # Recompute only what changed: moving t needs nothing new, and the attention model does
        # not depend on the RNN's scale.
        length, scale = controls["seq_len"].value, round(controls["recurrent_scale"].value, 4)
        wanted = {"rnn": ("rnn", length, scale), "attention": ("attention", length)}
        missing = tuple(name for name, key in wanted.items() if key not in cache)
        if missing:
            with one_thread():
                computed = compare_gradients(length, scale, models=missing)
            for name in missing:
                cache[wanted[name]] = computed[name]
        for key in [key for key in cache if key not in wanted.values()]:
            del cache[key]  # keep only the current curves
        return {name: cache[key] for name, key in wanted.items()}

    @guarded(readout, "this setting", picture=image)
    def redraw(_change=None) -> None:
        clamped = controls["position"].value > controls["seq_len"].value
        controls["position"].max = controls["seq_len"].value  # also clamps position's value
        if clamped:
            return  # clamping moved the position slider, and that change has redrawn already
        position = controls["position"].value
        grads = gradients()
        ax = plot_gradient_decay(grads, position)
        image.value = figure_to_png(ax.figure)
        readout.value = message_html(describe(grads, position))

    watch(controls, redraw)
    # `message` is the same HTML as `readout`: every widget of the course has a `.message`
    return widget_box([*controls.values(), readout, scrolling(image)], controls, image=image,
                      readout=readout, message=readout)


RECALL_STYLE = {"mean": ("tab:grey", "s--", "no attention (mean of embeddings)"),
                "rnn": ("tab:red", "o-", "RNN"), "attention": ("tab:blue", "o-", "attention")}


def plot_recall_accuracy(distances: list[int], accuracy: dict[str, list[float]], n_symbols: int = 8,
                         ax=None):
    """Accuracy of recalling the first token against its distance, one line per model in
    `accuracy` ("mean", "rnn", "attention")."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    for name, values in accuracy.items():
        colour, style, label = RECALL_STYLE[name]
        ax.plot(distances, values, style, color=colour, label=label)
    ax.axhline(1 / n_symbols, color="grey", linestyle=":", label=f"guessing (1/{n_symbols})")
    ax.set_xscale("log")
    ax.minorticks_off()                       # only the distances we trained at are labelled
    ax.set_xticks(distances, [str(d) for d in distances])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("distance from the first token to the question")
    ax.set_ylabel("accuracy on 1,000 fresh rows")
    ax.set_title("Recall the first token, after training")
    ax.legend(loc="center right", fontsize=8)   # the upper right and lower left hold lines
    return ax
