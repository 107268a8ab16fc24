"""The head viewer (chapter 04): every head's attention matrix for one text, as in BertViz.

Pick a layer, type a text, and click the head buttons (coloured like their panels) to switch heads on and off;
the picture shows one T×T matrix per selected head (row = query character, column = key
character; the model is causal, so everything above the diagonal is zero).
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.attention_lm import AttentionLM, attention_maps
from utils.tokenizers import CharTokenizer
from utils.widgets.display import figure_to_png, message_html

HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f"]
OFF_COLOUR = "#bbbbbb"
MAX_CHARS = 40
DEFAULT_TEXT = "ROMEO: But soft, what light through"


def _label(ch: str) -> str:
    return {" ": "␣", "\n": "⏎"}.get(ch, ch)


def draw(maps: list[torch.Tensor], text: str, layer: int, heads: list[int]) -> bytes:
    """One heatmap per selected head of `layer`."""
    n = len(heads)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.9), squeeze=False)
    labels = [_label(c) for c in text]
    T = len(text)
    step = 1 if T <= 24 else 2  # keep the tick labels legible on longer texts
    for ax, h in zip(axes[0], heads, strict=True):
        w = maps[layer][h, :T, :T].numpy()
        ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", color=HEAD_COLOURS[h % len(HEAD_COLOURS)])
        ticks = list(range(0, T, step))
        ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=7, family="monospace")
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7, family="monospace")
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
    fig.suptitle("attention weights (darker = more weight)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # leave room so the title does not touch the panels
    return figure_to_png(fig)


def head_viewer(model: AttentionLM, tokenizer: CharTokenizer, text: str = DEFAULT_TEXT,
                layer: int = 0) -> widgets.VBox:
    """Build the viewer for a trained (or any) AttentionLM.

    Controls: `w.controls["text"]` (Text), `w.controls["layer"]` (Dropdown of layer numbers)
    and `w.controls["heads"]` (a list of ToggleButtons, one per head, all on at the start);
    outputs `w.image` (PNG) and `w.message` (HTML).

    >>> from utils.attention_lm import LMConfig
    >>> tok = CharTokenizer("abc ")
    >>> w = head_viewer(AttentionLM(LMConfig(tok.vocab_size, 16, 2, 2, 8)), tok, "abc")
    >>> before = w.image.value
    >>> w.controls["heads"][1].value = False
    >>> w.image.value != before
    True
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    limit = min(MAX_CHARS, model.cfg.block_size)
    box_text = widgets.Text(value=text, description="text", continuous_update=False,
                            layout=widgets.Layout(width="520px"))
    layer_pick = widgets.Dropdown(options=list(range(n_layers)), value=layer,
                                  description="layer")
    toggles = [widgets.ToggleButton(value=True, description=f"head {h}",
                                    layout=widgets.Layout(width="80px"),
                                    style={"text_color": HEAD_COLOURS[h % len(HEAD_COLOURS)],
                                           "font_weight": "bold"})
               for h in range(n_heads)]
    image, message = widgets.Image(format="png"), widgets.HTML()
    cache: dict[str, list[torch.Tensor]] = {}

    def update(_=None) -> None:
        raw = box_text.value
        if not raw:
            message.value = message_html("Type some text (a few words).", "warning")
            return
        unknown = sorted({c for c in raw if c not in tokenizer.stoi})
        if unknown:
            message.value = message_html(f"Not in the model's alphabet: {unknown}. Use "
                                         "characters that occur in the corpus.", "warning")
            return
        shown = raw[:limit]
        heads = [h for h, t in enumerate(toggles) if t.value]
        if not heads:
            message.value = message_html("All heads are off: click a head to show it.",
                                         "warning")
            return
        for h, t in enumerate(toggles):  # a switched-off head fades, as in BertViz
            t.style.text_color = HEAD_COLOURS[h % len(HEAD_COLOURS)] if t.value else OFF_COLOUR
        if shown not in cache:
            cache[shown] = attention_maps(model, tokenizer, shown)
        maps = cache[shown]
        image.value = draw(maps, shown, layer_pick.value, heads)
        prev = [maps[layer_pick.value][h].diagonal(-1).mean().item() if len(shown) > 1 else 0.0
                for h in range(n_heads)]
        best = max(range(n_heads), key=lambda h: prev[h])
        note = f"Showing the first {limit} characters. " if len(raw) > limit else ""
        message.value = message_html(
            f"{note}Layer {layer_pick.value}: mean weight on the previous character per head "
            f"{[round(p, 2) for p in prev]}; head {best} is the most 'previous-token'.",
            "warning" if note else "info")

    for control in [box_text, layer_pick, *toggles]:
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([box_text, layer_pick]), widgets.HBox(toggles), image,
                        message])
    box.controls = {"text": box_text, "layer": layer_pick, "heads": toggles}
    box.image, box.message = image, message
    return box
