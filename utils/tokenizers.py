"""Character and word tokenizers: the two simplest ways to turn text into ids (chapter 01).

    CharTokenizer   one id per character seen in the training text
    WordTokenizer   one id per word seen in the training text, plus <unk> for the rest

Both show a side of the trade-off the chapter measures: characters give a tiny vocabulary and
long sequences, words short sequences, a huge vocabulary and still unknown words. Byte-level
BPE, what real models use, sits in between: `utils.bpe` holds the algorithm and
`utils.bpe_tokenizer` the BPETokenizer built on it.

>>> CharTokenizer("to be").encode("be to")
[1, 2, 0, 4, 3]
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable

from utils.pretokenize import split_chunks


def checked_id(i, vocab_size: int) -> int:
    """`i` as a Python int, or a ValueError naming it if it is not an id of the vocabulary."""
    try:
        i = operator.index(i)  # accepts ints, numpy and 0-d torch integers; refuses 1.0, "3"
    except TypeError:
        raise TypeError(f"token ids must be integers, got {i!r}") from None
    if not 0 <= i < vocab_size:
        raise ValueError(f"id {i} is out of range: this vocabulary has ids 0..{vocab_size - 1}")
    return i


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order.

    A character it never saw raises a ValueError that names it: a character-level model
    has no embedding for it, and silently mapping it to something else would hide the
    problem (byte-level BPE, utils.bpe_tokenizer, has no such gap). Attributes: `chars`
    (id -> character) and `stoi` (character -> id).

    >>> tok = CharTokenizer("hello")
    >>> tok.vocab_size, tok.encode("hole"), tok.decode([1, 0])
    (4, [1, 3, 2, 0], 'he')
    >>> tok.encode("hi")
    Traceback (most recent call last):
    ...
    ValueError: character 'i' (U+0069) at position 1 is not in the vocabulary
    """

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as missing:
            ch = missing.args[0]
            raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) at position {text.index(ch)} "
                             "is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[checked_id(i, len(self.chars))] for i in ids)


class WordTokenizer:
    """One id per chunk (word, number, punctuation run) of the training text; id 0 is <unk>.

    Used to show the word-level trade-off: a huge vocabulary, and still unknown words.
    Chunks are cut with `split_chunks`, so ' king' and 'King' are different words.

    >>> tok = WordTokenizer("to be or not to be")
    >>> tok.words
    ['<unk>', ' be', ' not', ' or', ' to', 'to']
    >>> tok.encode("to be a king")
    [5, 1, 0, 0]
    >>> tok.decode(tok.encode("to be a king"))
    'to be<unk><unk>'
    """

    UNK = "<unk>"

    def __init__(self, text: str, min_count: int = 1):
        counts = Counter(split_chunks(text))
        self.words = [self.UNK] + sorted(w for w, c in counts.items() if c >= min_count)
        self.stoi = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, 0) for w in split_chunks(text)]

    def pieces(self, text: str) -> list[str]:
        """The chunks of `text` (what each id stands for, before <unk> replaces unknowns)."""
        return split_chunks(text)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.words[checked_id(i, len(self.words))] for i in ids)
