"""The attention explorer (chapter 03): click a token, see what it attends to.

Two models can be explored:

* "trained" (the default): the course's trained GPT (chapter 07's shipped checkpoint, a
  character-level model of Shakespeare). Pick a layer and a head; tokens are characters.
  These heads have learned something, measured in chapter 03 with
  `utils.head_analysis.word_landmarks`: layer 1 head 1 jumps back to the last space (the start
  of the current word), later heads keep their weight inside the current word; no head puts
  more than about a third of its weight on the previous character alone.
* "toy": one small, fixed-seed, untrained head reading words with random vectors. Its
  weights show the mechanics (a query scored against every key, a softmax, a blend of
  values), not meaning.

Pick the query token with the row of buttons; arcs from it to every key have a thickness
proportional to the weight, the bars give the numbers, and the bottom panel shows the value
vectors and the output, their weighted blend.
"""

from __future__ import annotations

import re
import zlib

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Arc

from utils.attention import AttentionHead, split_heads
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
    widget_box,
)

EXAMPLES = [
    "The merchant chargeback rate is high",
    "The animal didn't cross the street because it was too tired",
    "The cat sat on the mat because the mat was warm",
]
LINES = [   # for the trained character model: lines in the style it was trained on
    "To be, or not to be, that is the question",
    "ROMEO: But soft, what light through yonder window breaks?",
    "The cat sat on the mat because the mat was warm",
]
MAX_TOKENS = 14
MAX_CHARACTERS = 48   # characters the trained model reads (one query button each)
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
    A space is drawn as ␣ (a character model's tokens are often spaces).

    >>> short("chargeback"), short("antidisestablishmentarianism"), short(" ")
    ('chargeback', 'antidisesta…', '␣')
    """
    if token == " ":
        return "␣"
    return token if len(token) <= limit else token[:limit - 1] + "…"


def label(token: str, limit: int = MAX_LABEL) -> str:
    """`short(token)` as the figure draws it: a character the plotting font lacks (a CJK
    character, an emoji) becomes a visible □, which the message names."""
    return glyph_safe(short(token, limit))[0]


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

    def split(self, text: str) -> list[str]:
        return tokenize(text)


class TrainedModel:
    """One head of the trained GPT (chapter 07's checkpoint), reading characters.

    `layer` and `head` choose which head; `__call__` returns that head's attention weights
    [T, T], its value vectors [T, d_head] and its output [T, d_head] (weights @ values),
    recomputed from the layer's input so the value panel shows what the head really blends.
    """

    def __init__(self) -> None:
        from utils.pretrained import load_pretrained  # the checkpoint loads only when asked for

        self.model, self.tokenizer = load_pretrained("shakespeare-char")
        self.model.eval()
        self.n_layer, self.n_head = self.model.config.n_layer, self.model.config.n_head
        self.layer, self.head = 0, 0

    def split(self, text: str) -> list[str]:
        unknown = sorted(set(text) - set(self.tokenizer.chars))
        if unknown:
            raise ValueError("the trained model only knows the 76 characters of the corpus; "
                             f"not {''.join(unknown)[:20]!r}")
        return list(text)

    @torch.no_grad()
    def __call__(self, tokens: list[str]):
        ids = torch.tensor([self.tokenizer.encode("".join(tokens))])
        out = self.model(ids, return_hidden=True, return_attention=True)
        block = self.model.blocks[self.layer]
        _, _, v = block.attn._project(block.norm1(out.hidden_states[self.layer]), None)
        values = split_heads(v, block.attn.n_kv_heads)[0, self.head]      # [T, d_head]
        weights = out.attentions[self.layer][0, self.head]                 # [T, T]
        return weights, values, weights @ values


def draw(tokens: list[str], query: int, model) -> bytes:
    """Arcs, weight bars and the value/output heatmap for one query position."""
    weights, values, out = model(tokens)
    w = weights[query].numpy()
    T = len(tokens)
    per_token = 0.75 if isinstance(model, ToyModel) else 0.32   # characters are narrow
    fig, (arcs, bars, blend) = plt.subplots(
        3, 1, figsize=(min(max(7, per_token * T), 14), 7.5),
        gridspec_kw={"height_ratios": [2, 1.4, 1.6]})
    for j, wj in enumerate(w):  # one arc from the query to every key
        if j == query:
            arcs.add_patch(plt.Circle((j, 0.25), 0.18, fill=False, lw=0.5 + 12 * wj,
                                      color="tab:red", alpha=0.3 + 0.7 * wj))
            continue
        centre, width = (query + j) / 2, abs(query - j)
        arcs.add_patch(Arc((centre, 0), width, 0.6 * width, theta1=0, theta2=180,
                           lw=0.5 + 12 * wj, color="tab:red", alpha=0.3 + 0.7 * wj))
    for j, token in enumerate(tokens):
        arcs.text(j, -0.15, label(token), ha="center", va="top", rotation=30,
                  fontweight="bold" if j == query else "normal",
                  color="tab:red" if j == query else "black")
    arcs.set_xlim(-0.7, T - 0.3)
    arcs.set_ylim(-1.0, 0.3 * max(query, T - 1 - query, 1) + 0.4)
    arcs.axis("off")
    where = "" if isinstance(model, ToyModel) else f"layer {model.layer}, head {model.head}: "
    arcs.set_title(f"{where}query = {label(tokens[query])!r} (position {query}): "
                   "arc thickness = attention weight")
    bars.bar(range(T), w, color=["tab:red" if j == query else "tab:blue" for j in range(T)])
    bars.set_xticks(range(T), [label(t) for t in tokens], rotation=30)
    bars.set_ylim(0, 1)
    bars.set_xlabel("key token")
    bars.set_ylabel("weight")
    bars.set_title("weights of this query over every key (they sum to 1)")
    grid = torch.cat([values, out[query:query + 1]]).numpy()
    limit = np.abs(grid).max()
    image = blend.imshow(grid.T, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    fig.colorbar(image, ax=blend, label="feature value (red +, blue −)")
    blend.axvline(T - 0.5, color="black", lw=2)
    labels = [f"v({label(t, 8)})" for t in tokens] if isinstance(model, ToyModel) else \
        [label(t) for t in tokens]
    blend.set_xticks(range(T + 1), labels + ["output"], rotation=30)
    blend.set_ylabel("feature")
    blend.set_title("value vectors (columns) and the output = Σ weight × value")
    fig.tight_layout()
    return figure_to_png(fig)


def attention_explorer(text: str | None = None, query: int | None = None,
                       model: str = "trained") -> widgets.VBox:
    """Build the explorer for the trained character model (`model="trained"`) or the untrained
    word-level toy head (`model="toy"`).

    Controls: `w.controls["example"]` (Dropdown of sentences), `w.controls["text"]` (Text, any
    sentence), `w.controls["query"]` (ToggleButtons, one per token, value = its position), and
    for the trained model `w.controls["layer"]` and `w.controls["head"]` (Dropdowns); outputs
    `w.image` (PNG) and `w.message` (HTML). Typed text is cut to MAX_CHARS characters, then to
    MAX_TOKENS words (toy) or MAX_CHARACTERS characters (trained), and the message says so;
    characters the trained model does not know are a message, not an error. While the text
    cannot be shown (empty, unknown characters) the picture is a grey placeholder and there
    are no query buttons; the picture is shown at its own size, a character the plotting font
    lacks drawn as □ and named in the message.

    >>> w = attention_explorer("The merchant chargeback rate is high", model="toy")
    >>> before = w.image.value
    >>> w.controls["query"].value = 0
    >>> w.image.value != before
    True
    """
    if model not in ("trained", "toy"):
        raise ValueError(f"model must be 'trained' or 'toy', got {model!r}")
    net = TrainedModel() if model == "trained" else ToyModel()
    examples = LINES if model == "trained" else EXAMPLES
    text = examples[0 if model == "trained" else 1] if text is None else text
    limit = MAX_CHARACTERS if model == "trained" else MAX_TOKENS
    unit = "characters" if model == "trained" else "tokens"
    example = widgets.Dropdown(options=examples + ["(type your own)"],
                               value=text if text in examples else "(type your own)",
                               description="sentence")
    box_text = widgets.Text(value=text, description="text", continuous_update=False,
                            layout=widgets.Layout(width="600px"))
    buttons = widgets.ToggleButtons(options=[("?", 0)], description="query",
                                    style={"button_width": "auto"})
    layer = widgets.Dropdown(options=list(range(getattr(net, "n_layer", 1))), value=0,
                             description="layer", layout=widgets.Layout(width="160px"))
    head = widgets.Dropdown(options=list(range(getattr(net, "n_head", 1))), value=0,
                            description="head", layout=widgets.Layout(width="160px"))
    image, message = picture_image(), widgets.HTML()   # the picture at its own size
    state = {"tokens": [], "note": ""}

    def forget_sentence() -> None:
        """No sentence to show: no query buttons of the old one (the guard greys the picture).
        The row is also hidden: the browser's ToggleButtons keeps its old buttons when the
        options become empty (it only redraws for a non-empty list)."""
        state["tokens"], state["note"], state["busy"] = [], "", True
        try:
            buttons.options = []
            buttons.layout.display = "none"
        finally:
            state["busy"] = False

    @guarded(message, "this query", picture=image)
    def redraw(_=None) -> None:
        tokens = state["tokens"]
        if state.get("busy") or not tokens or buttons.value is None:
            return
        if model == "trained":
            net.layer, net.head = layer.value, head.value
        image.value = draw(tokens, buttons.value, net)
        weights, _, _ = net(tokens)
        top = weights[buttons.value].argsort(descending=True)[:3].tolist()
        ranking = ", ".join(f"{short(tokens[j])!r} (position {j}) {weights[buttons.value, j]:.2f}"
                            for j in top)
        what = (f"Layer {net.layer}, head {net.head} of the trained model (causal: a character "
                "sees only itself and the characters before it)." if model == "trained"
                else "(Untrained head: the mechanics, not meaning.)")
        missing = list(dict.fromkeys(ch for t in tokens for ch in glyph_safe(short(t))[1]))
        glyphs = message_html(missing_glyphs_note(missing), "info") if missing else ""
        message.value = state["note"] + message_html(
            f"{len(tokens)} {unit}; {short(tokens[buttons.value])!r} attends most to {ranking}. "
            + what) + glyphs

    @guarded(message, "this sentence", picture=image)
    def set_text(_=None) -> None:
        if example.value != box_text.value:  # the dropdown names the sentence shown, or none
            example.value = box_text.value if box_text.value in examples else "(type your own)"
        typed, note = cap_text(clean_text(box_text.value), MAX_CHARS, "sentence")
        if model == "trained":
            typed = typed.replace("\n", " ")
        try:
            tokens = net.split(typed) if typed.strip() else []
        except ValueError as error:
            forget_sentence()
            raise CannotShow(f"{error}. Type letters, digits, spaces and ordinary "
                             "punctuation.") from None
        if not tokens:
            forget_sentence()
            raise CannotShow("Type a sentence (at least one word).")
        if len(tokens) > limit:
            tokens = tokens[:limit]
            note += message_html(f"Only the first {limit} {unit} are shown. Shorten the "
                                 "sentence to see all of it.", "warning")
        state["tokens"], state["note"] = tokens, note
        wanted = min(query if query is not None else len(tokens) - 1, len(tokens) - 1)
        if model == "toy" and "it" in [t.lower() for t in tokens] and query is None:
            wanted = [t.lower() for t in tokens].index("it")
        state["busy"] = True  # set options and value together, then draw once
        try:
            buttons.options = [(short(t), j) for j, t in enumerate(tokens)]
            buttons.value = wanted
            buttons.layout.display = None
        finally:
            state["busy"] = False
        redraw()

    @guarded(message, "this example", picture=image)
    def pick_example(change) -> None:
        if change["new"] in examples:
            box_text.value = change["new"]

    buttons.observe(redraw, names="value")
    layer.observe(redraw, names="value")
    head.observe(redraw, names="value")
    box_text.observe(set_text, names="value")
    example.observe(pick_example, names="value")
    set_text()
    controls = {"example": example, "text": box_text, "query": buttons}
    rows = [example, box_text]
    if model == "trained":
        controls.update(layer=layer, head=head)
        rows.append(widgets.HBox([layer, head]))
    return widget_box(rows + [buttons, scrolling(image), message], controls, image=image,
                      message=message)
