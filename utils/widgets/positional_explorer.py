"""Positional-encoding explorer: pick sinusoidal, RoPE or ALiBi; slide position and dimension.

Left: the pattern itself, with the chosen position and dimension marked. Right: the
attention score between a query at the chosen position and keys at every offset from it,
which is what the model actually feels. For all three schemes that curve depends on the
offset only, which the plot shows by overlaying the curve seen from position 0.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.embeddings import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    pair_frequencies,
    sinusoidal_positions,
)
from utils.widgets.display import (
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

KINDS = ("sinusoidal", "RoPE", "ALiBi")


def _sinusoidal(ax_pattern, ax_score, T: int, d: int, position: int, dim: int) -> str:
    table = sinusoidal_positions(T, d)
    ax_pattern.imshow(table.T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                      origin="lower")
    ax_pattern.axvline(position, color="k", lw=1)
    ax_pattern.axhline(dim, color="k", lw=1, ls=":")
    ax_pattern.set(title="sinusoidal table P[p, i] (red +1, blue -1)", xlabel="position p",
                   ylabel="dimension i")
    offsets = torch.arange(-position, T - position)
    ax_score.plot(offsets.numpy(), (table[position + offsets] @ table[position]).numpy(),
                  label=f"from p={position}")
    ax_score.plot(range(T), (table @ table[0]).numpy(), "--", label="from p=0")
    ax_score.set(title="P[p] . P[p+k] against offset k", xlabel="offset k", ylabel="dot product")
    period = 2 * torch.pi / pair_frequencies(d)[dim // 2].item()
    return (f"dimension {dim} is a {'sine' if dim % 2 == 0 else 'cosine'} with a period of "
            f"{period:.1f} positions; position {position} gets value "
            f"{table[position, dim].item():+.3f}.")


def _rope(ax_pattern, ax_score, T: int, d: int, position: int, dim: int) -> str:
    pair = dim // 2
    angles = torch.arange(T)[:, None] * pair_frequencies(d)[None, :]   # [T, d/2]
    ax_pattern.imshow(angles.cos().T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                      origin="lower")
    ax_pattern.axvline(position, color="k", lw=1)
    ax_pattern.axhline(pair, color="k", lw=1, ls=":")
    ax_pattern.set(title="cos of rotation angle p * w_i (red +1, blue -1)", xlabel="position p",
                   ylabel="dimension pair i")
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, d, generator=g), torch.randn(1, d, generator=g)
    keys = apply_rope(k.expand(T, d).contiguous())                     # key at every position
    query = apply_rope(q, torch.tensor([position]))
    offsets = torch.arange(-position, T - position)
    ax_score.plot(offsets.numpy(), (keys @ query.T).squeeze(1).numpy(),
                  label=f"query at p={position}")
    ax_score.plot(range(T), (keys @ apply_rope(q, torch.tensor([0])).T).squeeze(1).numpy(),
                  "--", label="query at p=0")
    ax_score.set(title="score q(p) . k(p+k), same q and k", xlabel="offset k", ylabel="score")
    degrees = torch.rad2deg(angles[position, pair]).item() % 360
    return (f"pair {pair} (dimensions {2 * pair}, {2 * pair + 1}) is rotated by {degrees:.1f} "
            f"degrees at position {position}; the curves coincide where they overlap.")


def _alibi(ax_pattern, ax_score, T: int, n_heads: int, position: int, head: int) -> str:
    biases = alibi_bias(n_heads, T)                    # [n_heads, T, T]
    bias = biases[head]
    image = ax_pattern.imshow(bias.numpy(), cmap="Blues_r", origin="upper")
    ax_pattern.axhline(position, color="r", lw=1)
    ax_pattern.figure.colorbar(image, ax=ax_pattern, fraction=0.046)
    ax_pattern.set(title=f"ALiBi bias of head {head}: -slope * |i - j|", xlabel="key j",
                   ylabel="query i")
    slopes = alibi_slopes(n_heads)
    offsets = torch.arange(-position, T - position)    # key j = position + k
    for h in range(n_heads):
        if h != head:
            ax_score.plot(offsets.numpy(), biases[h, position].numpy(),
                          lw=0.8, color="0.7",
                          label="other heads" if h == (1 if head == 0 else 0) else None)
    ax_score.plot(offsets.numpy(), bias[position].numpy(), lw=2.5, color="C3",
                  label=f"head {head}, query at p={position}")
    ax_score.plot(range(T), bias[0].numpy(), "--", color="k", lw=1, label="query at p=0")
    ax_score.set(title="bias added to the score q(p) . k(p+k)", xlabel="offset k",
                 ylabel="bias")
    return (f"head {head} of {n_heads} has slope {slopes[head].item():.4g}: a key "
            f"{T - 1} tokens away loses {slopes[head].item() * (T - 1):.2f} from its score.")


def positional_explorer(T: int = 64, d_model: int = 32, n_heads: int = 8) -> widgets.VBox:
    """Build the explorer. Controls are in `box.controls` ("kind", "position", "dim"); the
    figure is `box.image` (PNG bytes in `.value`), the caption `box.message` (HTML).

    For ALiBi the "dim" slider picks the head, since ALiBi has no dimensions to show. The
    figure is shown at its own size; if a setting cannot be drawn, the message says why and
    the figure is replaced by a grey placeholder.
    """
    kind = widgets.Dropdown(options=KINDS, value="sinusoidal", description="encoding")
    position = widgets.IntSlider(value=T // 4, min=0, max=T - 1, description="position",
                                 continuous_update=False)
    dim = widgets.IntSlider(value=0, min=0, max=d_model - 1, description="dimension",
                            continuous_update=False)
    image = picture_image()
    message = widgets.HTML()

    @guarded(message, "this setting", picture=image)
    def redraw(_change=None) -> None:
        # slider ranges follow the kind: heads for ALiBi, dimensions otherwise
        dim.max = n_heads - 1 if kind.value == "ALiBi" else d_model - 1
        dim.description = "head" if kind.value == "ALiBi" else "dimension"
        fig, (ax_pattern, ax_score) = plt.subplots(1, 2, figsize=(10, 3.6))
        try:
            if kind.value == "sinusoidal":
                text = _sinusoidal(ax_pattern, ax_score, T, d_model, position.value, dim.value)
            elif kind.value == "RoPE":
                text = _rope(ax_pattern, ax_score, T, d_model, position.value, dim.value)
            else:
                text = _alibi(ax_pattern, ax_score, T, n_heads, position.value, dim.value)
            ax_score.axvline(0, color="0.8", lw=0.8)
            ax_score.legend(loc="best", fontsize=8)
            fig.tight_layout()
        except Exception:
            plt.close(fig)  # don't leak the half-drawn figure; the guard shows the error
            raise
        image.value = figure_to_png(fig)
        message.value = message_html(text)

    controls = {"kind": kind, "position": position, "dim": dim}
    watch(controls, redraw)
    return widget_box([widgets.HBox([kind, position, dim]), scrolling(image), message], controls,
                      image=image, message=message)
