"""The corpus as plays and speeches (chapter 10).

`data/shakespeare.txt` is nine plays joined in a fixed order (data/prepare.py), each opening
with its title line. Fine-tuning tasks need more structure than a stream of characters:
*which play is this passage from?* and *who speaks this line?* need the play and the speaker
of every piece of text. This module recovers both from the layout of the text alone.

How the text is laid out (the Project Gutenberg editions, after prepare.py's clean-up): a
blank line separates *blocks*. A play is a title, a list of characters (front matter), then
blocks of four kinds:

    ACT I.                                  heading: starts with ACT/Act/SCENE/Scene, or is
    Scene I. Elsinore. A platform ...       THE PROLOGUE / EPILOGUE / SONG / THE END

    [Enter Horatio and Marcellus.]          stage direction: starts with "["

    Ber.                                    speech: a speaker line, then what is spoken
    Last night of all,                      (the speaker is written "Ber." in Hamlet,
    When yond same star ...                 "FIRST WITCH." in Macbeth, "THESEUS" in the Dream)

    What does this mean, my lord?           continuation: text with no speaker line, after a
                                            stage direction interrupted a speech

The rules, applied in order to every block after the front matter (which ends at the first
ACT heading, or at Romeo and Juliet's THE PROLOGUE):

1. A heading is not a speech, and it ends the current speaker (a new scene starts).
2. A stage direction is not a speech; the current speaker carries on after it.
3. A block of two or more lines whose first line looks like a name (not indented, at most
   four words, each capitalised or "and", no commas, under 30 characters) is a speech by that
   speaker. (Indented capitals such as "    CHORUS" or "      SONG" are part of a song.)
4. A one-line block that starts with a name already seen as a speaker in this play, then a
   space ("Osw. Ay, madam.") is a speech with its text on the speaker's line.
5. Any other block continues the current speaker's speech (it becomes a `Speech` of its own,
   with the same speaker); with no current speaker (right after a heading, e.g. the
   Tempest's epilogue) it is left out.

The speaker is kept as written, minus a final full stop and doubled spaces ("Ham", "FIRST WITCH", "Lady
Capulet"). A speech's `text` is exactly `corpus[start:end]`: the spoken lines as printed,
including any bracketed direction inside them ("[Aside.]"); `Speech.lines` drops those.

    >>> speeches = load_speeches()
    >>> first = speeches[0]
    >>> first.play, first.speaker, first.text
    ('Hamlet', 'Ber', "Who's there?")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from utils.data import VAL_FRACTION, load_corpus

# Short names in corpus order, with the title line that opens each play in the text.
TITLES = {
    "Hamlet": "HAMLET, PRINCE OF DENMARK",
    "Macbeth": "MACBETH",
    "King Lear": "THE TRAGEDY OF KING LEAR",
    "Othello": "OTHELLO, THE MOOR OF VENICE",
    "Romeo and Juliet": "ROMEO AND JULIET",
    "Julius Caesar": "JULIUS CAESAR",
    "The Tempest": "THE TEMPEST",
    "A Midsummer Night's Dream": "A MIDSUMMER NIGHT'S DREAM",
    "Twelfth Night": "TWELFTH NIGHT; OR, WHAT YOU WILL",
}
PLAYS = tuple(TITLES)
# The usual grouping: the first six are tragedies, the last three comedies (The Tempest is
# often called a romance; it ends in reconciliation, so it goes with the comedies).
GENRES = {play: "tragedy" for play in PLAYS[:6]} | {play: "comedy" for play in PLAYS[6:]}

_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene)\b|^(THE PROLOGUE|EPILOGUE|SONG|THE END)$")
_FRONT_MATTER_ENDS = re.compile(r"^(ACT|Act)\b|^THE PROLOGUE$")
_NAME_WORD = re.compile(r"^([A-Z0-9][A-Za-z'-]*\.?|and)$")


@dataclass(frozen=True)
class Speech:
    """One speech: who says it, in which play, and where it lies in the corpus.

    `text == load_corpus()[start:end]` (the lines after the speaker's name, as printed).
    """

    play: str
    speaker: str
    text: str
    start: int
    end: int

    @property
    def lines(self) -> list[str]:
        """The spoken lines, stripped, without lines that are wholly a stage direction."""
        return [line.strip() for line in self.text.split("\n")
                if line.strip() and not _is_direction(line.strip())]

    @property
    def split(self) -> str:
        """"train" or "val": the course's split the speech starts in (see `split_of`)."""
        return split_of(self.start)


def _is_direction(line: str) -> bool:
    return line.startswith("[") and line.endswith("]")


def looks_like_speaker(line: str) -> bool:
    """True for a line that can be a speaker's name: "Ham.", "FIRST WITCH.", "Lady Capulet".

    >>> [looks_like_speaker(s) for s in ["Mar. and Ber.", "THESEUS", "Hippolyta, I woo'd thee"]]
    [True, True, False]
    """
    words = line.split()
    return (0 < len(words) <= 4 and len(line) < 30 and line[0] not in " ["
            and not _HEADING.search(line) and all(_NAME_WORD.match(w) for w in words))


def _blocks(text: str, start: int, end: int):
    """Yield (offset, block) for each blank-line-separated block of text[start:end]."""
    for match in re.finditer(r"[^\n]+(?:\n[^\n]+)*", text[start:end]):
        yield start + match.start(), match.group()


@lru_cache(maxsize=4)
def play_spans(corpus: str | None = None) -> dict[str, tuple[int, int]]:
    """{play: (start, end)} character offsets of each play in the corpus, in corpus order.

    `start` is the play's title line; `end` is where the next play's title begins (minus the
    separating newline), or the end of the text.

    >>> spans = play_spans()
    >>> list(spans)[0], spans["Hamlet"][0]
    ('Hamlet', 0)
    """
    corpus = load_corpus() if corpus is None else corpus
    starts, search_from = [], 0
    for play, title in TITLES.items():
        match = re.compile(rf"(?:^|\n\n){re.escape(title)}\n").search(corpus, search_from)
        if match is None:
            raise ValueError(f"the title line {title!r} of {play} was not found in the corpus "
                             "(is data/shakespeare.txt the one data/prepare.py builds?)")
        start = match.start() + (0 if match.group().startswith(title) else 2)
        starts.append(start)
        search_from = start + len(title)
    ends = [s - 1 for s in starts[1:]] + [len(corpus)]
    return {play: (s, e) for play, s, e in zip(PLAYS, starts, ends, strict=True)}


def load_plays() -> dict[str, str]:
    """{play: its whole text (title, characters and all)} in corpus order.

    >>> plays = load_plays()
    >>> len(plays), plays["Macbeth"][:8]
    (9, 'MACBETH\\n')
    """
    corpus = load_corpus()
    return {play: corpus[s:e] for play, (s, e) in play_spans(corpus).items()}


def split_of(offset: int, corpus_length: int | None = None) -> str:
    """Which split of `utils.data.train_val_split` a character offset falls in.

    The shipped model was trained on "train" (the first 90 %); "val" is the rest.

    >>> split_of(0), split_of(1_100_000)
    ('train', 'val')
    """
    n = _corpus_length() if corpus_length is None else corpus_length
    if not 0 <= offset < n:
        raise ValueError(f"offset must be in [0, {n}), got {offset}")
    return "train" if offset < val_start(n) else "val"


@lru_cache(maxsize=1)
def _corpus_length() -> int:
    return len(load_corpus())


def val_start(corpus_length: int | None = None) -> int:
    """First character offset of the validation split (the same boundary as train_val_split)."""
    n = _corpus_length() if corpus_length is None else corpus_length
    return int(n * (1.0 - VAL_FRACTION))


def _play_speeches(corpus: str, play: str, start: int, end: int) -> list[Speech]:
    blocks = list(_blocks(corpus, start, end))
    first = next(i for i, (_, b) in enumerate(blocks) if _FRONT_MATTER_ENDS.search(b.split("\n")[0]))
    speakers_seen: set[str] = set()
    speeches, current = [], None
    for offset, block in blocks[first:]:
        head, _, rest = block.partition("\n")
        if _HEADING.search(head):
            current = None                                   # rule 1
        elif head.startswith("["):
            continue                                         # rule 2
        elif rest and looks_like_speaker(head):              # rule 3
            current = _name(head)
            speakers_seen.add(head)
            speeches.append(Speech(play, current, rest, offset + len(head) + 1, offset + len(block)))
        elif not rest and (said := _inline_speaker(head, speakers_seen)):   # rule 4
            current = _name(said)
            text_start = offset + len(said) + 1
            speeches.append(Speech(play, current, corpus[text_start:offset + len(block)],
                                   text_start, offset + len(block)))
        elif current is not None:                            # rule 5
            speeches.append(Speech(play, current, block, offset, offset + len(block)))
    return speeches


def _name(line: str) -> str:
    return " ".join(line.split()).rstrip(".")


def _inline_speaker(line: str, speakers: set[str]) -> str | None:
    return next((s for s in speakers if line.startswith(s + " ")), None)


@lru_cache(maxsize=1)
def _all_speeches() -> tuple[Speech, ...]:
    corpus = load_corpus()
    speeches = []
    for play, (start, end) in play_spans(corpus).items():
        speeches += _play_speeches(corpus, play, start, end)
    return tuple(speeches)


def load_speeches(play: str | None = None) -> list[Speech]:
    """Every speech of the corpus in order (or of one `play`), found by the rules above.

    >>> speeches = load_speeches("Macbeth")
    >>> speeches[0].speaker, speeches[0].lines
    ('FIRST WITCH', ['When shall we three meet again?', 'In thunder, lightning, or in rain?'])
    """
    if play is not None and play not in TITLES:
        raise ValueError(f"unknown play {play!r}; the plays are {list(PLAYS)}")
    return [s for s in _all_speeches() if play is None or s.play == play]


def play_of(offset: int) -> str:
    """The play a character offset of the corpus falls in.

    >>> play_of(0), play_of(len(load_corpus()) - 1)
    ('Hamlet', 'Twelfth Night')
    """
    for play, (start, end) in play_spans().items():
        if start <= offset < end + 1:
            return play
    raise ValueError(f"offset must be in [0, {_corpus_length()}), got {offset}")
