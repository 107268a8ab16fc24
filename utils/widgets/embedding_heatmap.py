"""Embedding heatmap: one row per word, one column per dimension, red positive, blue negative.

Words used alike get similar stripes; the widget shows the cosine similarity of each word to
the first one next to the heatmap, so the eye can check what the colours suggest.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

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
from utils.word_vectors import WORD, WordVectors, cosine_similarity

DEFAULT_WORDS = "king queen lord lady thou thee day night"
MAX_WORDS = 20
MAX_CHARS = 400  # of typed text: twenty words with room to spare


def split_words(text: str) -> list[str]:
    """The distinct lowercase words of `text`, in order, cut the way the corpus was cut
    (so punctuation is dropped: "king," is "king").

    >>> split_words("King, queen; KING and the Queen's")
    ['king', 'queen', 'and', 'the', "queen's"]
    """
    return list(dict.fromkeys(WORD.findall(text.lower())))


def draw_heatmap(words: list[str], vectors: torch.Tensor, n_dims: int) -> bytes:
    """PNG of a [words, n_dims] heatmap on a symmetric red/blue scale, plus cosine to row 0."""
    shown = vectors[:, :n_dims].numpy()
    limit = max(float(abs(shown).max()), 1e-6)
    fig, (ax, ax_cos) = plt.subplots(1, 2, figsize=(10, 0.45 * len(words) + 1.5),
                                     gridspec_kw={"width_ratios": [5, 1]})
    image = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(range(len(words)), words)
    ax.set(title=f"word vectors: first {n_dims} of {vectors.shape[1]} dimensions",
           xlabel="dimension")
    fig.colorbar(image, ax=ax, fraction=0.03, label="value")
    cosines = cosine_similarity(vectors, vectors[0]).tolist()
    ax_cos.barh(range(len(words)), cosines, color=["C3" if c > 0 else "C0" for c in cosines])
    ax_cos.set_ylim(len(words) - 0.5, -0.5)
    ax_cos.set_yticks([])
    ax_cos.set(title=f"cosine to '{words[0]}'", xlim=(-1, 1), xlabel="cosine")
    fig.tight_layout()
    return figure_to_png(fig)


def embedding_heatmap(vectors: WordVectors, words: str = DEFAULT_WORDS,
                      n_dims: int = 32) -> widgets.VBox:
    """Build the heatmap widget over `vectors`. Controls are in `box.controls` ("words": a
    Text of space-separated words, "dims": how many dimensions to show); the figure is
    `box.image`, messages (unknown words, empty input, text cut to MAX_CHARS characters) go
    to `box.message`. Words are read as the corpus was (lowercase, punctuation dropped), and
    each is shown once (as ASCII words, which the plotting font always has). With no known
    word the heatmap is replaced by a grey placeholder: the old words' stripes would sit under
    a box that no longer names them."""
    text = widgets.Text(value=words, description="words", continuous_update=False,
                        layout=widgets.Layout(width="60%"))
    dims = widgets.IntSlider(value=min(n_dims, vectors.vectors.shape[1]), min=2,
                             max=vectors.vectors.shape[1], description="dimensions",
                             continuous_update=False)
    image = picture_image()  # at its own size, not stretched to the output
    message = widgets.HTML()

    @guarded(message, "these words", picture=image)
    def redraw(_change=None) -> None:
        typed, warning = cap_text(clean_text(text.value), MAX_CHARS, "text")
        asked = split_words(typed)
        known = [w for w in asked if w in vectors][:MAX_WORDS]
        unknown = [w for w in asked if w not in vectors]
        if not known:
            cut = f" Only the first {MAX_CHARS:,} characters were read." if warning else ""
            raise CannotShow(
                f"type some words from the corpus, e.g. '{DEFAULT_WORDS}'" + (
                    f" ({', '.join(unknown[:10])} not in the vocabulary)" if unknown else "")
                + cut, "warning")
        rows = torch.stack([vectors.vector(w) for w in known])
        image.value = draw_heatmap(known, rows, dims.value)
        notes = [f"{len(known)} words x {dims.value} dimensions"]
        if unknown:
            notes.append(f"not in the {len(vectors)}-word vocabulary: {', '.join(unknown)}")
        if len(asked) - len(unknown) > MAX_WORDS:
            notes.append(f"showing the first {MAX_WORDS} words")
        message.value = warning + message_html("; ".join(notes), "warning" if unknown else "info")

    controls = {"words": text, "dims": dims}
    watch(controls, redraw)
    return widget_box([widgets.HBox([text, dims]), scrolling(image), message], controls, image=image,
                      message=message)
