"""LoRA explorer (chapter 10): rank and target layers against trainable parameters and loss.

Pick a rank and which linear layers of every block get an adapter. The parameter count and
the adapter's size are computed for any choice (r · (in + out) per wrapped layer, from the
shipped model's layer shapes); the loss comes from a sweep run once by
`data/build_lora_sweep.py` and shipped as `data/lora_sweep.json`, since training inside a
widget would take minutes. Choices the sweep did not run say so instead of guessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.lora import lora_parameter_count, matches_target
from utils.paths import DATA_DIR
from utils.widgets.display import (
    CannotShow,
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

SWEEP_PATH = DATA_DIR / "lora_sweep.json"
TITLE = "LoRA explorer: rank and target layers vs trainable parameters and loss"
RANKS = (1, 2, 4, 8, 16, 32, 64, 128)
# checkbox name -> what it is in the shipped model (the last part of the layer's name)
TARGETS = {"qkv": "attention qkv", "proj": "attention proj", "up": "MLP up", "down": "MLP down"}
RANK_SLIDER_WIDTH = f"{60 * (len(RANKS) - 1) + 100}px"   # the track plus label and readout
HEADER_BYTES = 100   # a safetensors file adds a JSON header: roughly this much per tensor


def load_sweep(path: Path | str = SWEEP_PATH) -> dict:
    """The precomputed sweep (see data/build_lora_sweep.py)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with "
                                "python data/build_lora_sweep.py (see data/README.md)")
    return json.loads(path.read_text())


def adapter_size(layers: dict[str, list[int]], targets: tuple[str, ...], rank: int) -> tuple[int, int]:
    """(trainable parameters, layers wrapped) for `rank` on the layers `targets` picks."""
    chosen = [shape for name, shape in layers.items()
              if any(matches_target(name, t) for t in targets)]
    return sum(lora_parameter_count(n_in, n_out, rank) for n_out, n_in in chosen), len(chosen)


def swept_label(sweep: dict, targets: tuple[str, ...]) -> str | None:
    """The sweep's name for this set of target layers, or None if it was not run."""
    for label, swept in sweep["target_sets"].items():
        if set(swept) == set(targets):
            return label
    return None


def sweep_result(sweep: dict, targets: tuple[str, ...], rank: int) -> dict | None:
    """The sweep's run for these targets and this rank, or None if it was not run."""
    label = swept_label(sweep, targets)
    runs = sweep["runs"].get(label, []) if label else []
    return next((run for run in runs if run["rank"] == rank), None)


def _kb(n_bytes: float) -> str:
    return f"{n_bytes / 1000:,.1f} kB"


def _plot(fig, left, right, sweep: dict, targets: tuple[str, ...], rank: int, trainable: int,
          run: dict | None) -> list[int]:
    """Left: trainable parameters vs rank; right: the sweep's validation loss vs rank."""
    layers, full = sweep["layers"], sweep["base"]["total"]
    counts = [adapter_size(layers, targets, r)[0] for r in RANKS]
    left.plot(RANKS, counts, "o-", color="tab:blue", label="LoRA on " + " + ".join(targets))
    left.plot([rank], [trainable], "o", color="tab:red", markersize=10, label=f"rank {rank}")
    left.axhline(full, color="black", linestyle="--", label=f"full fine-tuning ({full:,})")
    left.set(xscale="log", yscale="log", xlabel="rank r", ylabel="trainable parameters",
             title="What trains")
    left.set_xticks(RANKS, [str(r) for r in RANKS])
    left.legend(fontsize=8)

    for label, swept in sweep["runs"].items():
        selected = label == swept_label(sweep, targets)
        right.plot([r["rank"] for r in swept], [r["val_loss"] for r in swept], "o-",
                   linewidth=2.5 if selected else 1, alpha=1.0 if selected else 0.5,
                   label=f"LoRA on {label}")
    if run is not None:
        right.plot([rank], [run["val_loss"]], "o", color="tab:red", markersize=10,
                   label=f"rank {rank}")
    right.axhline(sweep["base"]["val_loss"], color="black", linestyle="--",
                  label="shipped model, not fine-tuned")
    right.set(xscale="log", xlabel="rank r", ylabel="validation loss (sonnets)",
              title=f"Loss after {sweep['settings']['steps']} steps (precomputed)")
    swept_ranks = sorted({r["rank"] for runs in sweep["runs"].values() for r in runs})
    right.set_xticks(swept_ranks, [str(r) for r in swept_ranks])
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # beside, not over
    fig.tight_layout()
    return swept_ranks


def draw(sweep: dict, targets: tuple[str, ...], rank: int) -> tuple[bytes, str]:
    """The two panels (PNG) and the message text for one choice of rank and targets."""
    layers, full = sweep["layers"], sweep["base"]["total"]
    trainable, n_layers = adapter_size(layers, targets, rank)
    run = sweep_result(sweep, targets, rank)
    settings = sweep["settings"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 3.6))
    try:
        swept_ranks = _plot(fig, left, right, sweep, targets, rank, trainable, run)
    except Exception:
        plt.close(fig)                   # a damaged sweep file: report it, leak no figure
        raise
    png = figure_to_png(fig)

    share = trainable / full
    if run is not None:
        size = f"adapter file {_kb(run['adapter_bytes'])} (measured)"
        loss = (f"After {settings['steps']} steps on the sonnets: train loss {run['train_loss']:.3f}, "
                f"validation loss {run['val_loss']:.3f} (the shipped model before fine-tuning: "
                f"{sweep['base']['val_loss']:.3f}).")
    else:
        size = f"adapter file ≈ {_kb(4 * trainable + 2 * n_layers * HEADER_BYTES)} (float32)"
        loss = (f"Loss: not in the sweep (it ran ranks {swept_ranks} on "
                f"{', '.join(sweep['target_sets'])}); the parameter count is exact.")
    # r (in + out) passes in · out once r > in · out / (in + out): ~100 for our layers
    saving = (f"{1 - share:.2%} fewer" if share <= 1 else
              "more than the whole model: at this rank the adapters outgrow the layers they adapt")
    text = (f"Rank {rank} on {' + '.join(targets)}: {n_layers} layers wrapped, {trainable:,} "
            f"trainable parameters = {share:.2%} of the model's {full:,} ({saving}); "
            f"{size}. {loss}")
    return png, text


def lora_explorer(sweep_path: Path | str = SWEEP_PATH, rank: int = 8,
                  targets: tuple[str, ...] = ("qkv", "proj")) -> widgets.VBox:
    """Build the explorer.

    Controls (`w.controls[...]`): "rank" (SelectionSlider over 1, 2, 4, ..., 128) and one
    Checkbox per layer type: "qkv", "proj", "up", "down". Outputs: `w.title` (HTML, the
    constant title text), `w.image` (PNG, at its own size; a grey placeholder while no layer
    is ticked) and `w.message` (HTML).

    >>> w = lora_explorer()
    >>> before = w.image.value
    >>> w.controls["rank"].value = 16
    >>> w.image.value != before
    True
    """
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"targets must be among {list(TARGETS)}, got {sorted(unknown)}")
    sweep = load_sweep(sweep_path)
    # 60 px per rank: on the default 124-px track a 70-px drag jumped from rank 8 to 128
    controls = {"rank": widgets.SelectionSlider(options=RANKS, value=rank, description="rank r",
                                                continuous_update=False,
                                                layout=widgets.Layout(width=RANK_SLIDER_WIDTH))}
    for name, label in TARGETS.items():
        controls[name] = widgets.Checkbox(value=name in targets, description=label)
    title = widgets.HTML(f"<b>{TITLE}</b>")
    image, message = picture_image(), widgets.HTML()

    @guarded(message, "this choice of rank and layers", picture=image)
    def update(_change=None) -> None:
        chosen = tuple(name for name in TARGETS if controls[name].value)
        if not chosen:
            raise CannotShow("Tick at least one kind of layer to put adapters on: with none, "
                             "nothing trains at any rank.")
        image.value, text = draw(sweep, chosen, controls["rank"].value)
        message.value = message_html(text)

    watch(controls, update)
    rows = [title, controls["rank"],
            widgets.HBox([controls[name] for name in TARGETS]), scrolling(image), message]
    return widget_box(rows, controls, title=title, image=image, message=message)
