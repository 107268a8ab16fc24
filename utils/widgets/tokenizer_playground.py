"""Tokenizer playground (chapter 01): type text, see it cut by char / word / BPE side by side.

    from utils.widgets.tokenizer_playground import tokenizer_playground
    from utils.widgets.display import show
    show(tokenizer_playground())
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.bpe_tokenizer import BPETokenizer, pretrained_bpe
from utils.data import load_corpus, train_val_split
from utils.tokenizers import CharTokenizer, WordTokenizer
from utils.widgets.display import (
    CannotShow,
    cap_text,
    clean_text,
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

DEFAULT_TEXT = "The unbelievable Rosencrantz spoke: 'tis nobler 🙂"
VOCAB_SIZES = (300, 512, 1024)
MAX_CHARS = 600  # longer text is cut: thousands of coloured spans would freeze the page
PALETTE = ("#fde2a7", "#c8e6c9", "#bbdefb", "#f8bbd0", "#d1c4e9", "#ffccbc")


@dataclass
class Tokenized:
    """One tokenizer's view of the text: pieces and ids (None for a piece the tokenizer
    cannot encode, which is shown but is not a token), and a note when something is off."""
    name: str
    pieces: list[str]
    ids: list[int | None]
    note: str = ""

    @property
    def n_tokens(self) -> int:
        return sum(i is not None for i in self.ids)

    @property
    def n_missing(self) -> int:
        return len(self.ids) - self.n_tokens


def _visible(piece: str) -> str:
    """Make whitespace visible: a space is drawn as '·', a newline as '↵'."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def _bpe_piece(tok: BPETokenizer, token_id: int) -> str:
    data = tok.token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character: show the raw bytes
        return "".join(f"<{b:02X}>" for b in data)


def _span(piece: str, token_id: int | None, colour: str) -> str:
    if token_id is None:  # a character the tokenizer has no id for: shown, but not a token
        style = "background:#fff;border:1px dashed #a94442;color:#a94442"
        title, label = "no id: never seen in the corpus", "?"
    else:
        style, title, label = f"background:{colour}", f"id {token_id}", str(token_id)
    return (f'<span title="{title}" style="{style};border-radius:3px;padding:1px 3px;margin:1px;'
            f'display:inline-block;font-family:monospace;white-space:pre">'
            f"{html.escape(_visible(piece))}"
            f'<sub style="color:#555;font-size:70%"> {label}</sub></span>')


def _spans(result: Tokenized) -> str:
    spans = "".join(_span(p, i, PALETTE[k % len(PALETTE)])
                    for k, (p, i) in enumerate(zip(result.pieces, result.ids, strict=True)))
    note = message_html(result.note, "warning") if result.note else ""
    missing = (f" + {result.n_missing} character(s) with no id" if result.n_missing else "")
    return (f'<div class="tokenizer-panel" style="flex:1;min-width:220px;padding:4px">'
            f"<b>{html.escape(result.name)}</b>: {result.n_tokens} tokens{missing}{note}"
            f"<div>{spans}</div></div>")


def _chart(results: list[Tokenized], n_chars: int) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 2.2))
    names = [r.name for r in results]
    counts = [r.n_tokens for r in results]
    bars = ax.bar(names, counts, color=PALETTE[: len(results)], edgecolor="#555")
    ax.bar_label(bars)
    missing = [r.n_missing for r in results]
    if any(missing):  # characters without an id, stacked on top so the bar still adds up
        ax.bar(names, missing, bottom=counts, color="white", edgecolor="#a94442", hatch="//",
               label="characters with no id")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"tokens needed for this text ({n_chars} characters)")
    ax.set_ylabel("tokens")
    ax.set_xlabel("tokenizer")
    ax.set_ylim(0, max([c + m for c, m in zip(counts, missing, strict=True)] + [1]) * 1.25)
    return figure_to_png(fig)


class _Tokenizers:
    """The char and word tokenizers and the cached BPEs, built once per process."""

    cache: dict[str, object] = {}

    @classmethod
    def get(cls, vocab_sizes: Sequence[int]) -> tuple[CharTokenizer, WordTokenizer,
                                                       dict[int, BPETokenizer]]:
        if "char" not in cls.cache:
            train_text, _ = train_val_split(load_corpus())
            cls.cache["char"] = CharTokenizer(train_text)
            cls.cache["word"] = WordTokenizer(train_text)
        for size in sorted(vocab_sizes, reverse=True):  # largest first: the rest are its prefixes
            if size not in cls.cache:
                cls.cache[size] = pretrained_bpe(size)  # trains once, then loads from runs/
        return (cls.cache["char"], cls.cache["word"],  # type: ignore[return-value]
                {s: cls.cache[s] for s in vocab_sizes})


def tokenize_all(text: str, char: CharTokenizer, word: WordTokenizer,
                 bpe: BPETokenizer) -> list[Tokenized]:
    """Cut `text` three ways. Never raises: what a tokenizer can't do becomes its note."""
    try:
        char_ids = char.encode(text)
        char_result = Tokenized("char", list(text), char_ids)
    except ValueError:
        unknown = sorted({c for c in text if c not in char.stoi})
        shown = " ".join(repr(c) for c in unknown[:8])
        char_result = Tokenized(
            "char", list(text), [char.stoi.get(c) for c in text],
            f"can't encode {len(unknown)} distinct character(s) never seen in the corpus: "
            f"{shown} (marked ? below: they get no id)")
    word_ids = word.encode(text)
    n_unk = word_ids.count(0)
    word_result = Tokenized("word", word.pieces(text), word_ids,
                            f"{n_unk} unknown word(s) became <unk> (id 0)" if n_unk else "")
    bpe_ids = bpe.encode(text)
    bpe_result = Tokenized(f"BPE {bpe.vocab_size}", [_bpe_piece(bpe, i) for i in bpe_ids],
                           bpe_ids)
    return [char_result, word_result, bpe_result]


def tokenizer_playground(text: str = DEFAULT_TEXT, vocab_sizes: Sequence[int] = VOCAB_SIZES,
                         max_chars: int = MAX_CHARS) -> widgets.VBox:
    """Build the playground: a text box, a BPE vocabulary choice, the pieces, a bar chart.

    The BPE tokenizers come from `pretrained_bpe`: the first time, the largest size is
    trained on the corpus's train split (about 2 s in all on a 2-core CPU) and the smaller
    ones are its first merges; all are cached in runs/tokenizers/. The callback only
    encodes. The returned VBox carries, for tests and curious readers:

    - `box.controls["text"]` (Textarea) and `box.controls["vocab_size"]` (Dropdown);
    - `box.outputs["html"]` (HTML: messages and the coloured pieces, each with its id; also
      `box.message`) and `box.outputs["image"]` (Image: PNG bar chart of the token counts;
      also `box.image`).

    Text longer than `max_chars` characters is cut, and the message says so. Empty text, or
    a tokenizer that fails, shows a message and replaces the chart by a grey placeholder.
    """
    start = time.perf_counter()
    char, word, bpes = _Tokenizers.get(vocab_sizes)
    load_s = time.perf_counter() - start

    text_box = widgets.Textarea(value=text, description="text",
                                continuous_update=False,
                                layout=widgets.Layout(width="95%", height="60px"))
    size = widgets.Dropdown(options=list(vocab_sizes), value=vocab_sizes[len(vocab_sizes) // 2],
                            description="BPE vocab")
    shown = widgets.HTML()
    image = picture_image()  # the chart at its own size, not stretched to the output

    @guarded(shown, "this text", picture=image)
    def update(_change=None) -> None:
        value, warning = cap_text(clean_text(text_box.value), max_chars, "text")
        if not value:  # nothing to count: the old chart would describe text no longer there
            raise CannotShow("Type some text above to see how each tokenizer cuts it.", "info")
        results = tokenize_all(value, char, word, bpes[size.value])
        panels = "".join(_spans(r) for r in results)
        shown.value = (warning + '<div style="display:flex;flex-wrap:wrap;gap:6px">'
                       + panels + "</div>")
        image.value = _chart(results, len(value))

    controls = {"text": text_box, "vocab_size": size}
    watch(controls, update)
    box = widget_box([widgets.HBox([text_box, size]), shown, scrolling(image)], controls,
                     outputs={"html": shown, "image": image}, image=image, message=shown)
    box.load_seconds = load_s
    return box
