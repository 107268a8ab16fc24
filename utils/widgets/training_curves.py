"""The live loss curve (chapter 07): a widget that is also the trainer's callback.

    curves = training_curves(reference={"bigram": 2.49, "uniform ln V": 4.33})
    show(curves)                                       # an empty chart, filled as we train
    train(model, train_ids, val_ids, config, callbacks=[curves.update])

Left: the training loss of every logged step (faint), its moving average, and the estimated
train and validation losses at each evaluation, against horizontal reference lines. Right:
the learning rate. Controls: `curves.controls["smoothing"]` (moving-average window, in
logged points), `curves.controls["log_y"]` (log scale), `curves.controls["references"]`
(show the reference lines). Outputs: `curves.image` (PNG), `curves.message` (HTML).
`curves.history` holds what was recorded (the same keys as `TrainResult.history`).

Redraws during training are throttled (at most one every `min_interval_s`, plus one at each
evaluation and at the end), so plotting never slows training noticeably. An event that lacks
a number it needs (a "train" event without `loss`) is left out whole and counted in the
message, so one broken event never leaves the history's lists of different lengths.
"""

from __future__ import annotations

import math
import time
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from utils.widgets.display import (
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

LOSS_KEYS = ("step", "loss", "lr", "eval_step", "train", "val")
NEEDED = {"train": ("step", "loss"), "eval": ("step", "train")}   # lr and val may be missing


def step_text(step: float) -> str:
    """An optimizer step as people write it: 100, not 100.0.

    >>> step_text(100.0), step_text(7)
    ('100', '7')
    """
    return str(int(step)) if float(step).is_integer() else f"{step:g}"


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (shorter at the start).

    >>> moving_average([1.0, 2.0, 3.0, 4.0], 2).tolist()
    [1.0, 1.5, 2.5, 3.5]
    """
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    sums = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (sums[idx] - sums[lo]) / (idx - lo)


def plot_history(history: dict[str, list], reference: dict[str, float] | None = None,
                 smoothing: int = 10, log_y: bool = False, title: str = "training curves"):
    """A matplotlib figure of a run's history (the widget draws this; so can a notebook)."""
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.8),
                                    gridspec_kw={"width_ratios": [3, 1]})
    steps, loss = history.get("step", []), history.get("loss", [])
    if steps:
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8,
                label="train loss (one batch)")
        if smoothing > 1:
            ax.plot(steps, moving_average(loss, smoothing), color="tab:blue", linewidth=1.6,
                    label=f"train loss, mean of last {smoothing}")
    if history.get("eval_step"):
        ax.plot(history["eval_step"], history["train"], "o-", color="tab:green", markersize=4,
                label="train (estimated)")
        val = history["val"]
        if any(math.isfinite(v) for v in val):
            ax.plot(history["eval_step"], val, "s-", color="tab:red", markersize=4,
                    label="validation (estimated)")
    colours = ["0.35", "tab:purple", "tab:orange", "tab:brown", "tab:olive"]
    for (name, value), colour in zip((reference or {}).items(), colours * 3, strict=False):
        ax.axhline(value, linestyle="--", linewidth=1, color=colour, label=f"{name}: {value:.2f}")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    if history.get("lr"):
        ax_lr.plot(steps, history["lr"], color="tab:orange", label="learning rate")
        ax_lr.legend(fontsize=7)
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("schedule")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    return fig


def summary(history: dict[str, list], reference: dict[str, float] | None = None) -> tuple[str, str]:
    """(text, level) describing where a run stands, for the widget's message line."""
    if not history.get("step") and not history.get("eval_step"):
        return "No steps recorded yet: pass `curves.update` to train(..., callbacks=[...]).", "info"
    parts, level = [], "info"
    if history.get("step"):
        last, step = history["loss"][-1], step_text(history["step"][-1])
        parts.append(f"step {step}: batch loss {last:.3f}")
        if not math.isfinite(last):
            return (f"step {step}: the loss is {last} — training diverged. "
                    "Lower the learning rate or turn on gradient clipping.", "error")
    if history.get("eval_step"):
        val = history["val"][-1]
        parts.append(f"at step {step_text(history['eval_step'][-1])} train {history['train'][-1]:.3f}, "
                     f"val {val:.3f} ({val / math.log(2):.2f} bits per token)")
        beaten = [name for name, v in (reference or {}).items() if val < v]
        if reference:
            parts.append("below: " + (", ".join(beaten) if beaten else "none of the reference lines yet"))
    return "; ".join(parts), level


class _Live:
    """The callback side: records events and redraws, throttled."""

    def __init__(self, history: dict[str, list], redraw, min_interval_s: float) -> None:
        self.history, self.redraw, self.min_interval_s = history, redraw, min_interval_s
        self.last_draw = 0.0
        self.ignored: dict[str, int] = {}     # "train event without 'loss'" -> how many

    def record(self, kind: str, event: dict[str, Any]) -> None:
        """Append one event's numbers to every list at once, or none of them."""
        lacking = [key for key in NEEDED[kind] if event.get(key) is None]
        if lacking:
            why = f"{kind} event without {' or '.join(repr(k) for k in lacking)}"
            self.ignored[why] = self.ignored.get(why, 0) + 1
            return
        if kind == "train":
            row = {"step": int(event["step"]), "loss": float(event["loss"]),
                   "lr": float(event.get("lr", math.nan))}
        else:
            row = {"eval_step": int(event["step"]), "train": float(event["train"]),
                   "val": float(event.get("val", math.nan))}
        for key, value in row.items():             # all conversions done: nothing half-added
            self.history[key].append(value)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in NEEDED:
            self.record(kind, event)
        now = time.monotonic()
        if kind in ("eval", "end") or now - self.last_draw >= self.min_interval_s:
            self.last_draw = now
            self.redraw()


def training_curves(history: dict[str, list] | None = None,
                    reference: dict[str, float] | None = None, smoothing: int = 10,
                    title: str = "training curves", min_interval_s: float = 2.0) -> widgets.VBox:
    """Build the widget; `history` (e.g. `TrainResult.history`) shows a finished run.

    >>> w = training_curves({"step": [1, 2, 3], "loss": [4.0, 3.0, 2.5], "lr": [1e-3] * 3,
    ...                      "eval_step": [3], "train": [2.5], "val": [2.7]})
    >>> before = w.image.value
    >>> w.controls["log_y"].value = True
    >>> w.image.value != before
    True
    """
    recorded = {key: list((history or {}).get(key, [])) for key in LOSS_KEYS}
    smooth = widgets.IntSlider(value=max(1, min(50, smoothing)), min=1, max=50,
                               description="smoothing", continuous_update=False,
                               layout=widgets.Layout(width="320px"))
    log_y = widgets.Checkbox(value=False, description="log scale")
    show_refs = widgets.Checkbox(value=True, description="reference lines")
    image, message = picture_image(), widgets.HTML()
    live: _Live | None = None

    @guarded(message, "the training curves", picture=image)
    def update_view(_=None) -> None:
        refs = reference if show_refs.value else None
        image.value = figure_to_png(plot_history(recorded, refs, smooth.value, log_y.value, title))
        text, level = summary(recorded, reference)
        message.value = message_html(text, level)
        if live is not None and live.ignored:
            ignored = "; ".join(f"{n} {why}" for why, n in live.ignored.items())
            message.value += message_html(f"Left out: {ignored} (the trainer's events carry "
                                          "step, loss and lr; evaluations step, train and val).",
                                          "warning")

    controls = {"smoothing": smooth, "log_y": log_y, "references": show_refs}
    watch(controls, update_view)
    box = widget_box([widgets.HBox([smooth, log_y, show_refs]), scrolling(image), message],
                     controls, image=image, message=message)
    box.history = recorded
    live = _Live(recorded, update_view, min_interval_s)
    box.update = guarded(message, "the training curves", picture=image)(live)
    return box
