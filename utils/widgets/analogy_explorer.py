"""Nearest neighbours and analogies over the corpus word vectors.

Type a word to see its nearest neighbours by cosine similarity, and three words a, b, c to
ask "a is to b as c is to ?" (the words nearest to b - a + c, the three themselves excluded).
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.widgets.display import (
    cap_text,
    clean_text,
    figure_to_png,
    guarded,
    message_html,
    watch,
    widget_box,
)
from utils.word_vectors import WordVectors

MAX_WORD = 30  # characters per box: no word of the vocabulary is longer, and titles stay short
SINGLE_LETTER_WORDS = {"a", "i", "o"}  # other one-letter "words" are debris such as "p" in "p's"


def _bars(ax, results: list[tuple[str, float]], title: str) -> None:
    if not results:
        ax.text(0.5, 0.5, "no answer: see the message below", ha="center", va="center",
                transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return
    words, scores = zip(*results, strict=True)
    ax.barh(range(len(words)), scores, color="C0")
    ax.set_yticks(range(len(words)), words)
    ax.invert_yaxis()  # best first, at the top
    ax.set(title=title, xlabel="cosine similarity", xlim=(min(0.0, min(scores)), 1.0))


def is_answer_word(word: str) -> bool:
    """Whether `word` may be shown as an answer: single letters other than a, i, o are the
    leftovers of cut-off words (the "p" of "p's"), not answers a reader can use.

    >>> [w for w in ("queen", "p", "i") if is_answer_word(w)]
    ['queen', 'i']
    """
    return len(word) > 1 or word in SINGLE_LETTER_WORDS


def analogy_explorer(vectors: WordVectors, word: str = "king", a: str = "man",
                     b: str = "woman", c: str = "king", k: int = 8) -> widgets.VBox:
    """Build the explorer. Controls are in `box.controls` ("word", "a", "b", "c": Text,
    "k": how many answers); the figure is `box.image`, messages `box.message`. An unknown
    word leaves its panel empty and says which word is missing; each box is cut to
    MAX_WORD characters (the message says so)."""
    style = {"description_width": "initial"}
    word_box = widgets.Text(value=word, description="neighbours of", style=style,
                            continuous_update=False)
    boxes = {name: widgets.Text(value=value, description=label, continuous_update=False,
                                layout=widgets.Layout(width="170px"))
             for name, value, label in (("a", a, "a"), ("b", b, "is to b"),
                                        ("c", c, "as c"))}
    k_slider = widgets.IntSlider(value=k, min=1, max=20, description="answers",
                                 continuous_update=False)
    image = widgets.Image(format="png")
    message = widgets.HTML()

    def read(box: widgets.Text, warnings: list[str]) -> str:
        text, warning = cap_text(clean_text(box.value).strip().lower(), MAX_WORD, "word")
        if warning:
            warnings.append(warning)
        return text

    def missing(*words: str) -> list[str]:
        return [w for w in words if w not in vectors]

    def answers_for(found: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return [(w, s) for w, s in found if is_answer_word(w)][:k_slider.value]

    @guarded(message, "this question")
    def redraw(_change=None) -> None:
        notes, level, warnings = [], "info", []
        query = read(word_box, warnings)
        a_, b_, c_ = (read(boxes[n], warnings) for n in ("a", "b", "c"))
        neighbours, answers = [], []
        extra = k_slider.value + 10  # room for the one-letter words filtered out
        if not query or missing(query):
            notes.append(f"'{query}' is not in the {len(vectors)}-word vocabulary (lowercase "
                         "words from the plays)" if query else "type a word")
            level = "warning"
        else:
            neighbours = answers_for(vectors.nearest(query, k=extra))
        unknown = missing(a_, b_, c_)
        if unknown:
            notes.append("not in the vocabulary: " + ", ".join(repr(w) for w in unknown))
            level = "warning"
        else:
            answers = answers_for(vectors.analogy(a_, b_, c_, k=extra))
            best = answers[0][0] if answers else "?"
            notes.append(f"{a_} : {b_} :: {c_} : {best}  (best answer)")
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.3 * k_slider.value + 2))
        _bars(ax1, neighbours, f"nearest to '{query}'")
        _bars(ax2, answers, f"{b_} - {a_} + {c_} =")
        fig.tight_layout()
        image.value = figure_to_png(fig)
        message.value = "".join(warnings) + message_html("; ".join(notes), level)

    controls = {"word": word_box, **boxes, "k": k_slider}
    watch(controls, redraw)
    return widget_box([widgets.HBox([word_box, k_slider]), widgets.HBox(list(boxes.values())),
                       image, message], controls, image=image, message=message)
