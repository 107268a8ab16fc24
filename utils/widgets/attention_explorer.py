"""The attention explorer (chapter 03): click a token, see what it attends to.

A small, fixed-seed (untrained) attention head reads a sentence. Pick the query token with
the row of buttons; arcs from it to every key have a thickness proportional to the weight,
the bars give the numbers, and the bottom panel shows the value vectors and the output,
their weighted blend. The weights show the mechanics, not meaning: chapter 04 looks at heads
of a trained model.
"""

from __future__ import annotations

import re
import zlib

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Arc

from utils.attention import AttentionHead
from utils.widgets.display import (
    cap_text,
    clean_text,
    figure_to_png,
    guarded,
    message_html,
    widget_box,
)

EXAMPLES = [
    "The merchant chargeback rate is high",
    "The animal didn't cross the street because it was too tired",
    "The cat sat on the mat because the mat was warm",
]
MAX_TOKENS = 14
MAX_CHARS = 200    # of typed text: fourteen tokens of ordinary words fit easily
MAX_LABEL = 12     # characters of a token shown under the arcs; longer ones end in "…"
D_MODEL, D_HEAD = 16, 6


def tokenize(text: str) -> list[str]:
    """Split a sentence into words and punctuation.

    >>> tokenize("It's late, isn't it?")
    ["It's", 'late', ',', "isn't", 'it', '?']
    """
    return re.findall(r"[A-Za-z0-9']+|[^\sA-Za-z0-9']", text)


def short(token: str, limit: int = MAX_LABEL) -> str:
    """A token cut to `limit` characters for a label, so one long token can't swamp the figure.

    >>> short("chargeback"), short("antidisestablishmentarianism")
    ('chargeback', 'antidisesta…')
    """
    return token if len(token) <= limit else token[:limit - 1] + "…"


class ToyModel:
    """A random but fixed vector per word (seeded by the word itself, so the same word gets
    the same vector in every sentence; the vectors carry no meaning and no spelling), a small
    position signal, and one AttentionHead with seed 0."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.head = AttentionHead(D_MODEL, D_HEAD).eval()
        with torch.no_grad():  # a larger query/key scale makes the (random) pattern visible
            self.head.W_Q.weight.mul_(3.0)
        self.positions = torch.randn(64, D_MODEL, generator=torch.Generator().manual_seed(seed))

    @staticmethod
    def embed_word(word: str) -> torch.Tensor:
        # a checksum of the lowercased word picks the random seed: fixed, but arbitrary
        g = torch.Generator().manual_seed(zlib.crc32(word.lower().encode()))
        return torch.randn(D_MODEL, generator=g)

    @torch.no_grad()
    def __call__(self, tokens: list[str]):
        x = torch.stack([self.embed_word(t) for t in tokens]) + 0.3 * self.positions[:len(tokens)]
        out, weights = self.head(x)
        return weights, self.head.W_V(x), out


def draw(tokens: list[str], query: int, model: ToyModel) -> bytes:
    """Arcs, weight bars and the value/output heatmap for one query position."""
    weights, values, out = model(tokens)
    w = weights[query].numpy()
    T = len(tokens)
    fig, (arcs, bars, blend) = plt.subplots(
        3, 1, figsize=(max(7, 0.75 * T), 7.5), gridspec_kw={"height_ratios": [2, 1.4, 1.6]})
    for j, wj in enumerate(w):  # one arc from the query to every key
        if j == query:
            arcs.add_patch(plt.Circle((j, 0.25), 0.18, fill=False, lw=0.5 + 12 * wj,
                                      color="tab:red", alpha=0.3 + 0.7 * wj))
            continue
        centre, width = (query + j) / 2, abs(query - j)
        arcs.add_patch(Arc((centre, 0), width, 0.6 * width, theta1=0, theta2=180,
                           lw=0.5 + 12 * wj, color="tab:red", alpha=0.3 + 0.7 * wj))
    for j, token in enumerate(tokens):
        arcs.text(j, -0.15, short(token), ha="center", va="top", rotation=30,
                  fontweight="bold" if j == query else "normal",
                  color="tab:red" if j == query else "black")
    arcs.set_xlim(-0.7, T - 0.3)
    arcs.set_ylim(-1.0, 0.3 * max(query, T - 1 - query, 1) + 0.4)
    arcs.axis("off")
    arcs.set_title(f"query = {short(tokens[query])!r}: arc thickness = attention weight")
    bars.bar(range(T), w, color=["tab:red" if j == query else "tab:blue" for j in range(T)])
    bars.set_xticks(range(T), [short(t) for t in tokens], rotation=30)
    bars.set_ylim(0, 1)
    bars.set_xlabel("key token")
    bars.set_ylabel("weight")
    bars.set_title("weights of this query over every key (they sum to 1)")
    grid = torch.cat([values, out[query:query + 1]]).numpy()
    limit = np.abs(grid).max()
    image = blend.imshow(grid.T, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    fig.colorbar(image, ax=blend, label="feature value (red +, blue −)")
    blend.axvline(T - 0.5, color="black", lw=2)
    blend.set_xticks(range(T + 1), [f"v({short(t, 8)})" for t in tokens] + ["output"], rotation=30)
    blend.set_ylabel("feature")
    blend.set_title("value vectors (columns) and the output = Σ weight × value")
    fig.tight_layout()
    return figure_to_png(fig)


def attention_explorer(text: str = EXAMPLES[1], query: int | None = None) -> widgets.VBox:
    """Build the explorer. Controls: `w.controls["example"]` (Dropdown of sentences),
    `w.controls["text"]` (Text, any sentence) and `w.controls["query"]` (ToggleButtons, one per
    token, value = the token's position); outputs `w.image` (PNG) and `w.message` (HTML).
    Typed text is cut to MAX_CHARS characters and MAX_TOKENS tokens (the message says so), and
    long tokens are shortened in the labels.

    >>> w = attention_explorer("The merchant chargeback rate is high")
    >>> before = w.image.value
    >>> w.controls["query"].value = 0
    >>> w.image.value != before
    True
    """
    model = ToyModel()
    example = widgets.Dropdown(options=EXAMPLES + ["(type your own)"],
                               value=text if text in EXAMPLES else "(type your own)",
                               description="sentence")
    box_text = widgets.Text(value=text, description="text", continuous_update=False,
                            layout=widgets.Layout(width="600px"))
    buttons = widgets.ToggleButtons(options=[("?", 0)], description="query",
                                    style={"button_width": "auto"})
    image, message = widgets.Image(format="png"), widgets.HTML()
    state = {"tokens": [], "note": ""}

    @guarded(message, "this query")
    def redraw(_=None) -> None:
        tokens = state["tokens"]
        if state.get("busy") or not tokens or buttons.value is None:
            return
        image.value = draw(tokens, buttons.value, model)
        weights, _, _ = model(tokens)
        top = weights[buttons.value].argsort(descending=True)[:3].tolist()
        ranking = ", ".join(f"{short(tokens[j])!r} {weights[buttons.value, j]:.2f}" for j in top)
        message.value = state["note"] + message_html(
            f"{len(tokens)} tokens; {short(tokens[buttons.value])!r} attends most to {ranking}. "
            "(Untrained head: the mechanics, not meaning.)")

    @guarded(message, "this sentence")
    def set_text(_=None) -> None:
        typed, note = cap_text(clean_text(box_text.value), MAX_CHARS, "sentence")
        tokens = tokenize(typed)
        if not tokens:
            message.value = message_html("Type a sentence (at least one word).", "warning")
            return
        if len(tokens) > MAX_TOKENS:
            tokens = tokens[:MAX_TOKENS]
            note += message_html(f"Only the first {MAX_TOKENS} tokens are shown. Shorten the "
                                 "sentence to see all of it.", "warning")
        state["tokens"], state["note"] = tokens, note
        wanted = min(query if query is not None else len(tokens) - 1, len(tokens) - 1)
        if "it" in [t.lower() for t in tokens] and query is None:
            wanted = [t.lower() for t in tokens].index("it")
        state["busy"] = True  # set options and value together, then draw once
        try:
            buttons.options = [(short(t), j) for j, t in enumerate(tokens)]
            buttons.value = wanted
        finally:
            state["busy"] = False
        redraw()

    @guarded(message, "this example")
    def pick_example(change) -> None:
        if change["new"] in EXAMPLES:
            box_text.value = change["new"]

    buttons.observe(redraw, names="value")
    box_text.observe(set_text, names="value")
    example.observe(pick_example, names="value")
    set_text()
    return widget_box([example, box_text, buttons, image, message],
                      {"example": example, "text": box_text, "query": buttons},
                      image=image, message=message)
