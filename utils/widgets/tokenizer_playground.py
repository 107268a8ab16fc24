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

from utils.data import load_corpus, train_val_split
from utils.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer, pretrained_bpe
from utils.widgets.display import figure_to_png, message_html

DEFAULT_TEXT = "The unbelievable Rosencrantz spoke: 'tis nobler 🙂"
VOCAB_SIZES = (300, 512, 1024)
MAX_CHARS = 600  # longer text is cut: thousands of coloured spans would freeze the page
PALETTE = ("#fde2a7", "#c8e6c9", "#bbdefb", "#f8bbd0", "#d1c4e9", "#ffccbc")


@dataclass
class Tokenized:
    """One tokenizer's view of the text: pieces and ids, or a message when it can't."""
    name: str
    pieces: list[str]
    ids: list[int]
    note: str = ""


def _visible(piece: str) -> str:
    """Make whitespace visible: a space is drawn as '·', a newline as '↵'."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def _bpe_piece(tok: BPETokenizer, token_id: int) -> str:
    data = tok.token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # part of a multi-byte character: show the raw bytes
        return "".join(f"<{b:02X}>" for b in data)


def _spans(result: Tokenized) -> str:
    spans = "".join(
        f'<span title="id {i}" style="background:{PALETTE[k % len(PALETTE)]};'
        'border-radius:3px;padding:1px 3px;margin:1px;display:inline-block;'
        f'font-family:monospace;white-space:pre">{html.escape(_visible(p))}'
        f'<sub style="color:#555;font-size:70%"> {i}</sub></span>'
        for k, (p, i) in enumerate(zip(result.pieces, result.ids, strict=True)))
    note = message_html(result.note, "warning") if result.note else ""
    return (f'<div class="tokenizer-panel" style="flex:1;min-width:220px;padding:4px">'
            f"<b>{html.escape(result.name)}</b>: {len(result.ids)} tokens{note}"
            f"<div>{spans}</div></div>")


def _chart(results: list[Tokenized], n_chars: int) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 2.2))
    names = [r.name for r in results]
    counts = [len(r.ids) for r in results]
    bars = ax.bar(names, counts, color=PALETTE[: len(results)], edgecolor="#555")
    ax.bar_label(bars)
    ax.set_title(f"tokens needed for this text ({n_chars} characters)")
    ax.set_ylabel("tokens")
    ax.set_xlabel("tokenizer")
    ax.set_ylim(0, max(counts + [1]) * 1.25)
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
            "char", [c for c in text if c in char.stoi], [char.stoi[c] for c in text
                                                            if c in char.stoi],
            f"can't encode {len(unknown)} character(s) never seen in the corpus: {shown} "
            "(left out below)")
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
    - `box.outputs["html"]` (HTML: messages and the coloured pieces, each with its id)
      and `box.outputs["image"]` (Image: PNG bar chart of the token counts).
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
    image = widgets.Image(format="png", layout=widgets.Layout(width="420px"))

    def update(_change=None) -> None:
        value = text_box.value
        if not value:
            shown.value = message_html("Type some text above to see how each tokenizer "
                                       "cuts it.", "info")
            image.value = _chart([Tokenized(n, [], []) for n in
                                  ("char", "word", f"BPE {size.value}")], 0)
            return
        notes = []
        if len(value) > max_chars:
            notes.append(message_html(f"The text has {len(value)} characters; showing the "
                                      f"first {max_chars}.", "warning"))
            value = value[:max_chars]
        results = tokenize_all(value, char, word, bpes[size.value])
        panels = "".join(_spans(r) for r in results)
        shown.value = ("".join(notes) + '<div style="display:flex;flex-wrap:wrap;gap:6px">'
                       + panels + "</div>")
        image.value = _chart(results, len(value))

    text_box.observe(update, names="value")
    size.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([text_box, size]), shown, image])
    box.controls = {"text": text_box, "vocab_size": size}
    box.outputs = {"html": shown, "image": image}
    box.load_seconds = load_s
    return box
