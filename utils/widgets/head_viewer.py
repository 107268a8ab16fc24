"""The head viewer (chapter 04): every head's attention matrix for one text, as in BertViz.

Pick a layer, type a text, and click the head buttons (coloured like their panels) to switch
heads on and off; the picture shows one T×T matrix per selected head (row = query character,
column = key character; the model is causal, so everything above the diagonal is zero).
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.attention_lm import AttentionLM, attention_maps
from utils.tokenizers import CharTokenizer
from utils.widgets.display import (
    CannotShow,
    cap_text,
    clean_text,
    figure_to_png,
    glyph_safe,
    guarded,
    message_html,
    one_thread,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f"]
OFF_COLOUR = "#bbbbbb"
MAX_CHARS = 40
DEFAULT_TEXT = "ROMEO: But soft, what light through"


def _label(ch: str) -> str:
    """A character as a tick label: a space as ␣, a newline as ⏎, and a character the plotting
    font lacks as □ (the model's alphabet is the corpus's, which the font has)."""
    return glyph_safe({" ": "␣", "\n": "⏎"}.get(ch, ch))[0] or "□"


def draw(maps: list[torch.Tensor], text: str, layer: int, heads: list[int]) -> bytes:
    """One heatmap per selected head of `layer`, every character labelled on both axes."""
    T = len(text)
    labels = [_label(c) for c in text]
    # Longer texts get larger panels (and fewer per row) so that every label stays legible.
    size = max(3.6, 0.13 * T + 0.6)
    ncols = min(len(heads), 4 if T <= 24 else 2)
    nrows = math.ceil(len(heads) / ncols)
    height = (size + 0.3) * nrows + 0.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.6, height), squeeze=False)
    font = {"fontsize": 7 if T <= 24 else 6, "family": "monospace"}
    for i, (ax, h) in enumerate(zip(axes.flat[:len(heads)], heads, strict=True)):
        w = maps[layer][h, :T, :T].numpy()
        ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {h}", color=HEAD_COLOURS[h % len(HEAD_COLOURS)])
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        # Only the outer panels spell out the characters (the lowest panel of each column and
        # the first of each row): the same labels once, and the figure draws twice as fast.
        if i + ncols >= len(heads):
            ax.set_xticklabels(labels, **font)
            ax.set_xlabel("key (attended to)")
        else:
            ax.tick_params(labelbottom=False)
        if i % ncols == 0:
            ax.set_yticklabels(labels, **font)
            ax.set_ylabel("query")
        else:
            ax.tick_params(labelleft=False)
    for ax in axes.flat[len(heads):]:
        ax.axis("off")  # an odd number of heads leaves one panel empty
    fig.suptitle("attention weights (darker = more weight)", fontsize=10)
    # Fixed spacing (inner panels have no labels to make room for) rather than tight_layout,
    # which would measure every label once more; the saved PNG is trimmed to its content.
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=1 - 0.7 / height, wspace=0.12,
                        hspace=0.15)
    return figure_to_png(fig)


def head_viewer(model: AttentionLM, tokenizer: CharTokenizer, text: str = DEFAULT_TEXT,
                layer: int = 0) -> widgets.VBox:
    """Build the viewer for a trained (or any) AttentionLM.

    Controls: `w.controls["text"]` (Text), `w.controls["layer"]` (Dropdown of layer numbers)
    and `w.controls["heads"]` (a list of ToggleButtons, one per head, all on at the start);
    outputs `w.image` (PNG) and `w.message` (HTML). Text is cut to the model's context (at
    most MAX_CHARS characters), and the message says so. Empty text, characters outside the
    model's alphabet or every head switched off show a message and a grey placeholder in
    place of the picture; the picture is shown at its own size.

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
    image, message = picture_image(), widgets.HTML()   # the picture at its own size
    cache: dict[str, list[torch.Tensor]] = {}

    @guarded(message, "this text", picture=image)
    def update(_=None) -> None:
        for h, t in enumerate(toggles):  # a switched-off head fades, as in BertViz
            t.style.text_color = HEAD_COLOURS[h % len(HEAD_COLOURS)] if t.value else OFF_COLOUR
        typed = clean_text(box_text.value)
        shown, note = cap_text(typed, limit, "text")
        cut = (f" (The text has {len(typed):,} characters; only the first {limit} are read.)"
               if note else "")
        if not shown:
            raise CannotShow("Type some text (a few words).")
        unknown = sorted({c for c in shown if c not in tokenizer.stoi})
        if unknown:
            named = " ".join(repr(c) for c in unknown[:12]) + (" ..." if len(unknown) > 12 else "")
            raise CannotShow(f"Not in the model's alphabet: {named}. Use characters that occur "
                             f"in the corpus.{cut}")
        heads = [h for h, t in enumerate(toggles) if t.value]
        if not heads:
            raise CannotShow(f"All heads are off: click a head to show it.{cut}")
        if shown not in cache:
            with one_thread():  # one short text: a second thread only waits for a busy core
                cache[shown] = attention_maps(model, tokenizer, shown)
        maps = cache[shown]
        image.value = draw(maps, shown, layer_pick.value, heads)
        if len(shown) < 2:
            message.value = note + message_html(
                f"Layer {layer_pick.value}: type at least two characters to see which head "
                "looks at the previous one.")
            return
        prev = [maps[layer_pick.value][h].diagonal(-1).mean().item() for h in range(n_heads)]
        best = max(range(n_heads), key=lambda h: prev[h])
        verdict = (f"head {best} is the most 'previous-token'." if prev[best] > 0
                   else "no head looks at the previous character.")
        message.value = note + message_html(
            f"Layer {layer_pick.value}: mean weight on the previous character per head "
            f"{[round(p, 2) for p in prev]}; {verdict}")

    controls = {"text": box_text, "layer": layer_pick, "heads": toggles}
    watch(controls, update)
    return widget_box([widgets.HBox([box_text, layer_pick]), widgets.HBox(toggles),
                       scrolling(image), message], controls, image=image, message=message)
