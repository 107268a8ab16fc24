"""Nearest neighbours and analogies over the corpus word vectors.

Type a word to see its nearest neighbours by cosine similarity, and three words a, b, c to
ask "a is to b as c is to ?" (the words nearest to b - a + c, the three themselves excluded).
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.widgets.display import (
    CannotShow,
    clean_text,
    figure_to_png,
    glyph_safe,
    guarded,
    message_html,
    missing_glyphs_note,
    picture_image,
    scrolling,
    watch,
    widget_box,
)
from utils.word_vectors import WordVectors

MAX_WORD = 30  # characters per box: no word of the vocabulary is longer, and titles stay short
SINGLE_LETTER_WORDS = {"a", "i", "o"}  # other one-letter "words" are debris such as "p" in "p's"


def _bars(ax, results: list[tuple[str, float]] | None, title: str) -> None:
    """Horizontal bars of (word, cosine), best first; `None` or no results greys the panel
    and points to the message, so no old bars stand under a word they do not belong to."""
    if not results:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, "no answer: see the message below", ha="center", va="center",
                color="#777777", transform=ax.transAxes)
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
    "k": how many answers); the figure is `box.image` (at its own size), messages
    `box.message`. An unknown or empty word greys its panel and the message says which word
    is missing; when neither panel can be drawn the figure is a grey placeholder. Each box is
    cut to MAX_WORD characters (the message says so); a character the plotting font lacks
    is drawn as □ in a title and named in the message."""
    style = {"description_width": "initial"}
    word_box = widgets.Text(value=word, description="neighbours of", style=style,
                            continuous_update=False)
    boxes = {name: widgets.Text(value=value, description=label, continuous_update=False,
                                layout=widgets.Layout(width="170px"))
             for name, value, label in (("a", a, "a"), ("b", b, "is to b"),
                                        ("c", c, "as c"))}
    k_slider = widgets.IntSlider(value=k, min=1, max=20, description="answers",
                                 continuous_update=False)
    image = picture_image()  # at its own size, not stretched to the output
    message = widgets.HTML()

    def read(box: widgets.Text, cuts: list[str]) -> str:
        typed = clean_text(box.value).strip().lower()
        if len(typed) > MAX_WORD:
            cuts.append(f"'{box.description}' has {len(typed):,} characters; only the first "
                        f"{MAX_WORD} are used.")
        return typed[:MAX_WORD]

    def answers_for(found: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return [(w, s) for w, s in found if is_answer_word(w)][:k_slider.value]

    @guarded(message, "this question", picture=image)
    def redraw(_change=None) -> None:
        notes, cuts = [], []
        query = read(word_box, cuts)
        a_, b_, c_ = (read(boxes[n], cuts) for n in ("a", "b", "c"))
        neighbours, answers = None, None  # None: that panel has no question it can answer
        extra = k_slider.value + 10  # room for the one-letter words filtered out
        if not query:
            notes.append("type a word")
        elif query not in vectors:
            notes.append(f"'{query}' is not in the {len(vectors)}-word vocabulary (lowercase "
                         "words from the plays)")
        else:
            neighbours = answers_for(vectors.nearest(query, k=extra))
        unknown = [w for w in (a_, b_, c_) if w and w not in vectors]
        if not (a_ and b_ and c_):
            notes.append("type a word in each of a, b and c")
        elif unknown:
            notes.append("not in the vocabulary: " + ", ".join(repr(w) for w in unknown))
        else:
            answers = answers_for(vectors.analogy(a_, b_, c_, k=extra))
            best = answers[0][0] if answers else "?"
            notes.append(f"{a_} : {b_} :: {c_} : {best}  (best answer)")
        if neighbours is None and answers is None:  # nothing left to draw: no stale bars
            raise CannotShow(" ".join(cuts + ["; ".join(notes)]), "warning")
        titles = [glyph_safe(f"nearest to '{query}'"), glyph_safe(f"{b_} - {a_} + {c_} =")]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.3 * k_slider.value + 2))
        _bars(ax1, neighbours, titles[0][0])
        _bars(ax2, answers, titles[1][0])
        fig.tight_layout()
        image.value = figure_to_png(fig)
        level = "info" if neighbours is not None and answers is not None else "warning"
        shown = "".join(message_html(cut, "warning") for cut in cuts)
        shown += message_html("; ".join(notes), level)
        missing = list(dict.fromkeys(titles[0][1] + titles[1][1]))
        if missing:
            shown += message_html(missing_glyphs_note(missing), "info")
        message.value = shown

    controls = {"word": word_box, **boxes, "k": k_slider}
    watch(controls, redraw)
    return widget_box([widgets.HBox([word_box, k_slider]), widgets.HBox(list(boxes.values())),
                       scrolling(image), message], controls, image=image, message=message)
