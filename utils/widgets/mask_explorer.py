"""The mask explorer (chapter 06): build a mask from toggles, see what it does to attention.

Three panels side by side for one sentence: the raw scores q·k/√d (made-up but fixed), the
masked scores (grey = -inf, nothing to see), and the softmax weights each query ends up with.
Toggle causal or bidirectional attention, pad the sentence on the right or the left, and
narrow the sliding window; a row with no visible key is flagged (its weights are all zero).
Padding tokens are labelled <pad> in grey italics; a word of the sentence that happens to be
spelled "<pad>" is an ordinary token and is labelled in quotes.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from utils.masks import (
    apply_mask,
    causal_mask,
    combine_masks,
    masked_softmax,
    padding_mask,
    sliding_window_mask,
)
from utils.widgets.display import (
    CannotShow,
    cap_text,
    clean_text,
    figure_to_png,
    glyph_safe,
    guarded,
    message_html,
    missing_glyphs_note,
    picture_image,
    scrolling,
)

DEFAULT_TEXT = "the cat sat on the mat"
MAX_WORDS = 12
MAX_PADDING = 4
PAD = "<pad>"


def scores_for(n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Fixed made-up scores [n, n] (the same for the same size), scaled like q·k/√d."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_tokens, n_tokens, generator=g) * 1.5


def build_mask(n_real: int, n_pad: int, causal: bool, side: str, window: int) -> torch.Tensor:
    """The [T, T] boolean mask (True = may attend) for one sequence of n_real + n_pad tokens.

    `window` = 0 means no window; otherwise each query sees `window` keys (causal) or
    `window - 1` on each side (bidirectional).
    """
    T = n_real + n_pad
    parts = [padding_mask([n_real], T, side=side)[0]]                  # [1, T] real keys
    if causal:
        parts.append(causal_mask(T))
    if window:
        parts.append(sliding_window_mask(T, window, causal=causal))
    return combine_masks(torch.ones(T, T, dtype=torch.bool), *parts)


def tick_label(token: str) -> str:
    """A word as a tick label: long words shortened, a word spelled like the padding token
    quoted (it is a real token), characters the font lacks drawn as □."""
    label = token if len(token) <= 10 else token[:9] + "…"
    if token == PAD:
        label = f"“{PAD}”"
    return glyph_safe(label)[0]


def mask_figure(tokens: list[str], mask: torch.Tensor, scores: torch.Tensor, title: str,
                padded: list[bool] | None = None) -> plt.Figure:
    """Scores, masked scores and weights, side by side. `padded[i]` marks the padding tokens
    (drawn as grey <pad> labels); without it no token is padding."""
    T = len(tokens)
    padded = padded or [False] * T
    labels = [PAD if pad else tick_label(token) for token, pad in zip(tokens, padded, strict=True)]
    weights = masked_softmax(scores, mask)
    masked = apply_mask(scores, mask)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    lim = float(scores.abs().max()) or 1.0
    shown = np.ma.masked_invalid(masked.numpy())                        # -inf -> blank
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#bbbbbb")
    panels = [(scores.numpy(), "RdBu_r", -lim, lim, "1. scores q·k/√d"),
              (shown, cmap, -lim, lim, "2. masked scores (grey = -inf)"),
              (weights.numpy(), "Blues", 0, 1, "3. softmax weights (rows sum to 1)")]
    for ax, (data, colours, lo, hi, name) in zip(axes, panels, strict=True):
        image = ax.imshow(data, cmap=colours, vmin=lo, vmax=hi)
        ax.set_title(name)
        ax.set_xticks(range(T), labels, rotation=60, fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):   # one per token, in order
            for tick, pad in zip(ticks, padded, strict=True):
                if pad:
                    tick.set_color("#888888")
                    tick.set_fontstyle("italic")
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                     label="weight" if colours == "Blues" else "score")
    empty = ~mask.any(-1)
    for row in torch.nonzero(empty).flatten().tolist():
        axes[2].text(T / 2 - 0.5, row, "no key: all zeros", ha="center", va="center",
                     fontsize=8, color="#a94442")
    missing = [ch for token in tokens for ch in glyph_safe(token)[1]]
    if missing:
        codes = ", ".join(dict.fromkeys(f"U+{ord(ch):04X}" for ch in missing))
        fig.text(0.01, 0.01, f"□ = glyph missing from the plotting font ({codes})",
                 fontsize=8, color="#a94442")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw(tokens: list[str], mask: torch.Tensor, scores: torch.Tensor, title: str,
         padded: list[bool] | None = None) -> bytes:
    """The three panels as PNG bytes (see `mask_figure`)."""
    return figure_to_png(mask_figure(tokens, mask, scores, title, padded))


def mask_explorer(text: str = DEFAULT_TEXT) -> widgets.VBox:
    """Build the explorer.

    Controls (in `w.controls`): "text" (Text: the words are the tokens, at most MAX_WORDS),
    "attention" (ToggleButtons: "causal" / "bidirectional"), "padding" (IntSlider: how many
    <pad> tokens to add), "side" (ToggleButtons: "right" / "left"), "window" (IntSlider: 0 =
    no window). Outputs: `w.image` (PNG of the three panels, at its own size) and `w.message`
    (HTML). An empty sentence replaces the picture by a grey placeholder.

    >>> w = mask_explorer()
    >>> before = w.image.value
    >>> w.controls["attention"].value = "bidirectional"
    >>> w.image.value != before
    True
    """
    text_box = widgets.Text(value=text, description="sentence", continuous_update=False,
                            layout=widgets.Layout(width="420px"))
    attention = widgets.ToggleButtons(options=["causal", "bidirectional"], value="causal",
                                      description="attention")
    padding = widgets.IntSlider(value=0, min=0, max=MAX_PADDING, description="padding",
                                continuous_update=False)
    side = widgets.ToggleButtons(options=["right", "left"], value="right", description="pad on")
    window = widgets.IntSlider(value=0, min=0, max=MAX_WORDS + MAX_PADDING, description="window",
                               continuous_update=False)
    image, message = picture_image(), widgets.HTML()

    @guarded(message, "the mask", picture=image)
    def update(_=None) -> None:
        words, warning = cap_text(clean_text(text_box.value).strip(), 200, "sentence")
        tokens = words.split()
        if not tokens:
            raise CannotShow("Type a sentence: its words are the tokens.")
        if len(tokens) > MAX_WORDS:
            tokens = tokens[:MAX_WORDS]
            warning = message_html(f"Only the first {MAX_WORDS} words are used.", "warning")
        if PAD in tokens:
            warning += message_html(f"“{PAD}” in the sentence is an ordinary word here (it is "
                                    "attended to like any other); only the padding slider adds "
                                    f"padding, labelled {PAD} in grey.", "info")
        missing = list(dict.fromkeys(ch for token in tokens for ch in glyph_safe(token)[1]))
        if missing:
            warning += message_html(missing_glyphs_note(missing), "info")
        n_real, n_pad = len(tokens), padding.value
        right = side.value == "right"
        tokens = tokens + [PAD] * n_pad if right else [PAD] * n_pad + tokens
        padded = [right and i >= n_real or not right and i < n_pad for i in range(len(tokens))]
        causal = attention.value == "causal"
        mask = build_mask(n_real, n_pad, causal, side.value, window.value)
        parts = [attention.value]
        if n_pad:
            parts.append(f"{n_pad} padding on the {side.value}")
        if window.value:
            parts.append(f"window {window.value}")
        image.value = draw(tokens, mask, scores_for(len(tokens)), " + ".join(parts), padded)
        empty = int((~mask.any(-1)).sum())
        text = (f"{int(mask.sum())} of {mask.numel()} query-key pairs may attend "
                f"({' + '.join(parts)}).")
        if empty:
            text += (f" {empty} padding quer{'y sees' if empty == 1 else 'ies see'} no key at "
                     "all: softmax(-inf, ..., -inf) would be NaN, so the library gives "
                     "all-zero weights.")
        message.value = warning + message_html(text, "warning" if empty else "info")

    for control in (text_box, attention, padding, side, window):
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([text_box, attention]), widgets.HBox([padding, side]),
                        window, scrolling(image), message])
    box.controls = {"text": text_box, "attention": attention, "padding": padding, "side": side,
                    "window": window}
    box.image, box.message = image, message
    return box
