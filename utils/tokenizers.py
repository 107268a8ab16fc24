"""Tokenizers: turn text into the integers a model reads, and back (chapter 01).

Three tokenizers, from the simplest to the one real models use:

    CharTokenizer   one id per character seen in the training text
    WordTokenizer   one id per word seen in the training text, plus <unk> for the rest
    BPETokenizer    byte-level byte-pair encoding, GPT-2 style, trained from scratch

and the building blocks of BPE that the chapter writes step by step: `get_pair_counts`,
`merge`, `split_chunks` (GPT-2's pre-splitting pattern) and `train_bpe_naive` (the slow
reference that re-counts every pair of the whole text after each merge).

BPETokenizer also does what tokenizers of real models do: special tokens that training never
merges into (`encode(text, allowed_special=...)` decides whether they count in user text),
streaming (`encode_iterable(open(path))`), and ids of a vocabulary trained elsewhere
(`from_ids`; `utils.gpt2_vocab` reads GPT-2's vocab.json and merges.txt with it).

>>> tok = BPETokenizer()
>>> tok.train("low lower lowest low low", vocab_size=260)
>>> tok.decode(tok.encode("lowest 🙂")) == "lowest 🙂"
True
"""

from __future__ import annotations

import hashlib
import heapq
import json
import operator
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import groupby, pairwise
from pathlib import Path

Pair = tuple[int, int]

# GPT-2's pre-splitting pattern, as OpenAI wrote it for the `regex` module. In order of
# preference, a chunk is:
#   an English contraction suffix ('s 't 're 've 'm 'll 'd; lower case only, as in GPT-2),
#   an optional space + a run of letters           (\p{L}: any Unicode letter),
#   an optional space + a run of numbers           (\p{N}: digits, but also ² ½ Ⅻ ...),
#   an optional space + a run of anything else that is not whitespace (punctuation, emoji...),
#   whitespace not followed by a non-space (so the last space sticks to the next word),
#   any other whitespace.
# Every character falls into one of these classes, so the chunks always join back to the text.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Python's built-in `re` has no \p{L} or \p{N}, so they are spelled out below as ranges of code
# points read from `unicodedata`. Unicode puts no letters, numbers or spaces beyond U+3FFFF.
_LAST_CODE_POINT = 0x3FFFF
_ASTRAL = r"\U00010000-\U0010ffff"  # every code point above the Basic Multilingual Plane
# Unicode's White_Space list. Python's \s would add U+001C..U+001F, which GPT-2's \s does not.
_SPACE = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _code_point_ranges() -> dict[str, list[tuple[int, int]]]:
    """(first, last) of each run of code points, grouped by the first letter of their Unicode
    category: "L" letters, "N" numbers, "P" punctuation, ..."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for major, run in groupby(map(chr, range(_LAST_CODE_POINT + 1)),
                              key=lambda ch: unicodedata.category(ch)[0]):
        n = sum(1 for _ in run)
        ranges.setdefault(major, []).append((start, start + n - 1))
        start += n
    return ranges


def _compile_gpt2_pattern() -> re.Pattern:
    """GPT2_SPLIT_PATTERN for `re`: the same chunks as the `regex` module gives (tested).

    `re` checks a character against a class of characters below U+10000 with one table lookup,
    but against the ranges above it one by one; so each class is split into those two halves
    and the slow half is tried only for a character that is above U+10000 (the lookahead).
    """
    def class_body(ranges, low, high):
        return "".join(f"\\U{max(a, low):08x}-\\U{min(b, high):08x}"
                       for a, b in ranges if a <= high and b >= low)

    ranges = _code_point_ranges()
    letters, numbers = ranges["L"], ranges["N"]
    bmp = {"L": class_body(letters, 0, 0xFFFF), "N": class_body(numbers, 0, 0xFFFF)}
    astral = {"L": class_body(letters, 0x10000, _LAST_CODE_POINT),
              "N": class_body(numbers, 0x10000, _LAST_CODE_POINT)}
    letter = rf"(?:[{bmp['L']}]|(?=[{_ASTRAL}])[{astral['L']}])"
    number = rf"(?:[{bmp['N']}]|(?=[{_ASTRAL}])[{astral['N']}])"
    other = rf"(?:[^{_SPACE}{bmp['L']}{bmp['N']}{_ASTRAL}]|(?=[{_ASTRAL}])[^{astral['L']}{astral['N']}])"
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{letter}+| ?{number}+| ?{other}+"
                      rf"|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+")


SPLIT_PATTERN = _compile_gpt2_pattern()


def split_chunks(text: str) -> list[str]:
    """Pre-split text into GPT-2 style chunks; BPE merges never cross a chunk boundary.

    >>> split_chunks("Hark, who's there? 42 ducats!")
    ['Hark', ',', ' who', "'s", ' there', '?', ' 42', ' ducats', '!']
    >>> split_chunks("x² ½")  # ² and ½ are numbers, as in GPT-2
    ['x', '²', ' ½']
    """
    return SPLIT_PATTERN.findall(text)


def utf8(text: str) -> bytes:
    """The UTF-8 bytes of `text`, lone surrogates included.

    Python strings may hold a lone surrogate (half of a UTF-16 pair, e.g. from a broken file);
    strict UTF-8 refuses it. `surrogatepass` encodes it as its three bytes instead, so training
    and encoding accept every string and decoding gives it back.
    """
    return text.encode("utf-8", errors="surrogatepass")


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """The special tokens as a list, or a ValueError/TypeError saying what is wrong with them."""
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a list of strings, got the string "
                        f"{special_tokens!r}; write [{special_tokens!r}]")
    tokens = list(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"each special token must be a non-empty string, got {token!r}")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicates:
        raise ValueError(f"special tokens must be distinct; repeated: {duplicates}")
    return tokens


def checked_id(i, vocab_size: int) -> int:
    """`i` as a Python int, or a ValueError naming it if it is not an id of the vocabulary."""
    try:
        i = operator.index(i)  # accepts ints, numpy and 0-d torch integers; refuses 1.0, "3"
    except TypeError:
        raise TypeError(f"token ids must be integers, got {i!r}") from None
    if not 0 <= i < vocab_size:
        raise ValueError(f"id {i} is out of range: this vocabulary has ids 0..{vocab_size - 1}")
    return i


def get_pair_counts(ids: Sequence[int], counts: dict[Pair, int] | None = None,
                    weight: int = 1) -> dict[Pair, int]:
    """Count each pair of neighbouring ids (overlapping pairs count: [1, 1, 1] has two (1, 1)).

    Pass `counts` to add into an existing dict, `weight` to count a chunk that occurs many times.

    >>> get_pair_counts([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, scanning left to right, by `new_id`.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 9)
    [9, 3, 9]
    >>> merge([1, 1, 1], (1, 1), 9)  # left to right: the first two merge, the third is left
    [9, 1]
    """
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _best_pair(counts: dict[Pair, int]) -> Pair:
    """The most frequent pair. Ties go to the smallest pair, comparing the first ids, then the
    second: (32, 116) before (104, 101) before (104, 105). Any fixed rule would do; a fixed
    one makes training independent of dict order, so the fast and the naive trainer agree.
    (Other libraries break ties their own way, so on ties their merge order may differ.)"""
    return max(counts, key=lambda p: (counts[p], -p[0], -p[1]))


def train_bpe_naive(text: str, n_merges: int) -> dict[Pair, int]:
    """The textbook algorithm: after every merge, re-count every pair in the whole text.

    Correct and short, but each merge costs a full pass over the text. It is kept as the
    reference that `BPETokenizer.train` must agree with, and as the benchmark's baseline.

    >>> train_bpe_naive("aaab aab", 2)  # 'aa' first; then four pairs tie, the smallest wins
    {(97, 97): 256, (32, 256): 257}
    """
    chunks = [list(utf8(c)) for c in split_chunks(text)]
    merges: dict[Pair, int] = {}
    for i in range(n_merges):
        counts: dict[Pair, int] = {}
        for chunk in chunks:
            get_pair_counts(chunk, counts)
        if not counts:  # every chunk is a single token: nothing left to merge
            break
        pair = _best_pair(counts)
        merges[pair] = 256 + i
        chunks = [merge(chunk, pair, 256 + i) for chunk in chunks]
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, used to write byte tokens in vocab files.

    Printable bytes stand for themselves; the others (space, newline, control bytes) are
    shifted to characters from 256 on, which is why GPT-2 tokens show a space as 'Ġ'.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order.

    A character it never saw raises a ValueError that names it: a character-level model
    has no embedding for it, and silently mapping it to something else would hide the
    problem (the BPE tokenizer below has no such gap). Attributes: `chars` (id -> character)
    and `stoi` (character -> id).

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


class BPETokenizer:
    """Byte-level byte-pair encoding, GPT-2 style.

    Ids 0..255 are the raw bytes, so every string is encodable; each merge learned by
    `train` adds one id for a frequent pair of neighbours; special tokens (if any) get the
    ids after the merges and encode to a single id. Training never sees them: the text is
    cut at each special token first, so no merge spells one or reaches across one.
    (`from_ids` builds a tokenizer with another id layout, such as GPT-2's own.)

    >>> tok = BPETokenizer(special_tokens=["<|endoftext|>"])
    >>> tok.train("the cat the hat the bat", vocab_size=262)  # 5 merges + 1 special
    >>> [tok.vocab[i] for i in tok.merges.values()]
    [b'at', b'he', b'the', b' the', b' b']
    >>> tok.encode(" the<|endoftext|>")
    [259, 261]
    >>> tok.encode(" the<|endoftext|>", allowed_special="none")  # as plain text
    [259, 60, 124, 101, 110, 100, 111, 102, 116, 101, 120, 116, 124, 62]
    """

    def __init__(self, special_tokens: Sequence[str] = ()):
        self.byte_ids: list[int] = list(range(256))  # byte value -> id
        self.merges: dict[Pair, int] = {}             # (id, id) -> id of the pair, in merge order
        self.special_tokens: dict[str, int] = {
            s: 256 + i for i, s in enumerate(check_special_tokens(special_tokens))}
        self._build()

    # -- vocabulary ------------------------------------------------------------------------
    def _build(self) -> None:
        """Derive the vocabulary and lookups from byte_ids, merges and special_tokens, checking
        that they fit together (a corrupted file must fail here, not give wrong ids later)."""
        if len(self.byte_ids) != 256 or len(set(self.byte_ids)) != 256:
            raise ValueError("byte_ids must give 256 distinct ids, one for each byte value")
        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for rank, ((a, b), new_id) in enumerate(self.merges.items()):  # in merge order
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {rank} joins ids {a} and {b}, but no earlier token "
                                 "has one of these ids")
            token = self.vocab[a] + self.vocab[b]
            if self.vocab.setdefault(new_id, token) != token:
                raise ValueError(f"merge {rank} gives id {new_id} to {token!r}, which "
                                 f"already stands for {self.vocab[new_id]!r}")
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        check_special_tokens(list(self.special_tokens))
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        clash = set(self._special_ids) & set(self.vocab)
        if clash or len(self._special_ids) != len(self.special_tokens):
            raise ValueError(f"special token ids {sorted(self.special_tokens.values())} "
                             "must be distinct and unused by the other tokens")
        self._size = max([*self.vocab, *self._special_ids]) + 1
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """The number of ids (rows an embedding table needs): largest id + 1."""
        return self._size

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token's text, UTF-8 encoded)."""
        i = checked_id(token_id, self._size)
        if i in self._special_ids:
            return utf8(self._special_ids[i])
        if i not in self.vocab:
            raise ValueError(f"id {i} is not in the vocabulary")
        return self.vocab[i]

    def _allowed_specials(self, allowed_special: str | Collection[str]) -> list[str]:
        """The special tokens `encode` should honour: `allowed_special` is "all", "none", or a
        set of special tokens (the convention of OpenAI's tiktoken)."""
        if allowed_special == "all":
            allowed = list(self.special_tokens)
        elif allowed_special == "none":
            allowed = []
        elif isinstance(allowed_special, str):
            raise ValueError(f'allowed_special must be "all", "none" or a set of special '
                             f"tokens, got the string {allowed_special!r}")
        else:
            allowed = list(allowed_special)
            unknown = [s for s in allowed if s not in self.special_tokens]
            if unknown:
                raise ValueError(f"allowed_special names tokens that are not special tokens of "
                                 f"this tokenizer: {unknown}; it has {list(self.special_tokens)}")
        return allowed

    def _special_splitter(self, allowed_special: str | Collection[str]) -> re.Pattern | None:
        """A regex that finds the allowed special tokens in text (None when none are allowed).

        It has one group, so `split` returns [text, special, text, special, ..., text].
        """
        allowed = self._allowed_specials(allowed_special)
        if not allowed:
            return None
        # Longest first, so a special token that contains another one wins.
        return re.compile("(" + "|".join(re.escape(s) for s in sorted(allowed, key=len,
                                                                        reverse=True)) + ")")

    # -- training --------------------------------------------------------------------------
    def train(self, text: str, vocab_size: int, verbose: bool = False) -> None:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        Same merges, in the same order, as `train_bpe_naive`, but much faster: it works on
        the distinct chunks with their counts, keeps the pair counts and an index from each
        pair to the chunks that contain it, and after a merge re-counts only those chunks.
        A heap finds the most frequent pair without scanning all. Ties between equally
        frequent pairs go to the smallest pair of ids (see `_best_pair`).
        """
        n_merges = vocab_size - 256 - len(self.special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least 256 + {len(self.special_tokens)} "
                             f"special tokens, got {vocab_size}")
        start = time.perf_counter()
        splitter = self._special_splitter("all")
        # Cut the text at the special tokens and drop them: the pieces between are trained on.
        pieces = splitter.split(text)[::2] if splitter else [text]
        freqs = Counter(chunk for piece in pieces for chunk in split_chunks(piece))
        chunks = [list(utf8(c)) for c in freqs]
        weights = list(freqs.values())
        counts: dict[Pair, int] = {}
        where: dict[Pair, set[int]] = {}  # pair -> indices of the chunks that contain it
        for i, (chunk, w) in enumerate(zip(chunks, weights, strict=True)):
            get_pair_counts(chunk, counts, w)
            for pair in pairwise(chunk):
                where.setdefault(pair, set()).add(i)
        # Smallest (-count, pair) first: the most frequent pair, ties to the smallest pair.
        heap = [(-c, p) for p, c in counts.items()]
        heapq.heapify(heap)

        merges: dict[Pair, int] = {}
        vocab = {i: bytes([i]) for i in range(256)}  # only for the verbose printout
        while len(merges) < n_merges and heap:
            neg, pair = heapq.heappop(heap)
            if counts.get(pair) != -neg:  # stale entry: the count changed since it was pushed
                continue
            new_id = 256 + len(merges)
            merges[pair] = new_id
            changed: set[Pair] = set()
            for i in where.pop(pair, ()):
                old, w = chunks[i], weights[i]
                new = merge(old, pair, new_id)
                for p in pairwise(old):  # take the chunk's old pairs out ...
                    counts[p] -= w
                    changed.add(p)
                for p in pairwise(new):  # ... and put its new pairs in
                    counts[p] = counts.get(p, 0) + w
                    changed.add(p)
                old_pairs, new_pairs = set(pairwise(old)), set(pairwise(new))
                for p in old_pairs - new_pairs:
                    if p != pair:
                        where[p].discard(i)
                for p in new_pairs - old_pairs:
                    where.setdefault(p, set()).add(i)
                chunks[i] = new
            for p in changed:
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
                else:
                    del counts[p]
            if verbose:
                vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
                print(f"merge {len(merges):4d}/{n_merges}: {pair} -> {new_id} "
                      f"{vocab[new_id]!r} ({-neg} occurrences)")
        self._set_merges(merges)
        if verbose:
            print(f"trained {len(merges)} merges in {time.perf_counter() - start:.2f} s")

    def _set_merges(self, merges: dict[Pair, int]) -> None:
        """Adopt merges numbered 256, 257, ...; special tokens take the ids after them."""
        self.byte_ids = list(range(256))
        self.merges = merges
        first = 256 + len(merges)
        self.special_tokens = {s: first + i for i, s in enumerate(self.special_tokens)}
        self._build()

    # -- encoding --------------------------------------------------------------------------
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply the merges to one chunk, always the earliest-learned merge first."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = [self.byte_ids[b] for b in utf8(chunk)]
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: self._ranks.get(p, float("inf")))
            if pair not in self._ranks:
                break  # no pair of this chunk was ever merged
            ids = merge(ids, pair, self.merges[pair])
        if len(self._cache) < 100_000:
            self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ignoring special tokens (their text is encoded like any other text)."""
        ids: list[int] = []
        for chunk in split_chunks(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def encode(self, text: str, allowed_special: str | Collection[str] = "all") -> list[int]:
        """Encode text; each allowed special token in it becomes its single id.

        `allowed_special`: "all" (the default), "none" (special tokens in the text are
        encoded as plain text, which is safer for text from users: they cannot inject an
        end-of-text marker), or a set naming the special tokens to honour.

        >>> BPETokenizer().encode("hi!")  # untrained: one id per byte
        [104, 105, 33]
        """
        splitter = self._special_splitter(allowed_special)
        if splitter is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(splitter.split(text)):
            if i % 2:  # split() puts each special token it found between the other pieces
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_iterable(self, texts: Iterable[str],
                        allowed_special: str | Collection[str] = "all") -> Iterator[int]:
        """Encode a stream of text (the lines of an open file, say) lazily, id by id.

        Gives exactly `encode("".join(texts))` while holding only a little text at a time.
        The catch is the seams: a chunk or a special token may continue in the next piece
        ("can" + "'t", "<|endof" + "text|>"). So after each piece, only the text up to a
        point where more text cannot change the split is encoded; the rest waits.

        >>> tok = BPETokenizer()
        >>> list(tok.encode_iterable(["a\\n", " b"])) == tok.encode("a\\n b")
        True
        """
        specials = self._allowed_specials(allowed_special)
        splitter = self._special_splitter(allowed_special)
        pending = ""
        for text in texts:
            parts = splitter.split(pending + text) if splitter else [pending + text]
            for i, part in enumerate(parts[:-1]):  # each is followed by a special token: final
                yield from [self.special_tokens[part]] if i % 2 else self.encode_ordinary(part)
            chunks = split_chunks(parts[-1])
            n_final = self._final_chunks(parts[-1], chunks, specials)
            for chunk in chunks[:n_final]:
                yield from self._encode_chunk(chunk)
            pending = "".join(chunks[n_final:])
        yield from self.encode(pending, allowed_special)

    @staticmethod
    def _final_chunks(text: str, chunks: list[str], specials: list[str]) -> int:
        """How many of the leading chunks of `text` more text cannot change.

        The last two can change: a run of letters or spaces may go on, and "'" + "l" becomes
        "'ll" when the next "l" arrives. Earlier chunks cannot: the pattern never looks back,
        nor more than one character ahead. Also held back: an end of the text that may be
        the beginning of a special token ("<|endof").
        """
        partial = 0  # length of the longest end of `text` that begins a special token
        for special in specials:
            start = max(len(text) - len(special) + 1, 0)
            i = text.find(special[0], start)
            while i != -1 and not special.startswith(text[i:]):
                i = text.find(special[0], i + 1)
            if i != -1:
                partial = max(partial, len(text) - i)
        n = max(len(chunks) - 2, 0)
        held = sum(len(chunk) for chunk in chunks[n:])
        while n > 0 and held < partial:
            n -= 1
            held += len(chunks[n])
        return n

    def decode(self, ids: Iterable[int]) -> str:
        """Join the bytes of the ids and read them as UTF-8.

        An id outside the vocabulary raises a ValueError that names it. An arbitrary id
        sequence may cut a character in half; those bytes become '�'. (`surrogatepass` lets
        even lone surrogates, legal in Python strings, round-trip.)
        """
        data = b"".join(self.token_bytes(i) for i in ids)
        try:
            return data.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace")

    # -- persistence -----------------------------------------------------------------------
    def _course_layout(self) -> bool:
        """True when ids are bytes 0..255, then merges, then special tokens (what train makes)."""
        n = len(self.merges)
        return (self.byte_ids == list(range(256))
                and list(self.merges.values()) == list(range(256, 256 + n))
                and list(self.special_tokens.values()) == list(
                    range(256 + n, 256 + n + len(self.special_tokens))))

    def save(self, path: str | Path) -> None:
        """Write the merges and special tokens as JSON (the vocabulary follows from them).

        A tokenizer with another id layout (one from `utils.gpt2_vocab`) also stores its ids.
        """
        state = {"format": "course-bpe-v1", "special_tokens": list(self.special_tokens),
                 "merges": [[a, b] for a, b in self.merges]}
        if not self._course_layout():
            state["ids"] = {"bytes": self.byte_ids, "merges": list(self.merges.values()),
                            "special_tokens": list(self.special_tokens.values())}
        # Write a temporary file, then rename: a reader in another process (parallel tests,
        # a second notebook) sees either no file or the whole file, never half of one.
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save`; a ValueError names the file and what is wrong."""
        path = Path(path)
        raw = path.read_bytes()
        if not raw.strip():
            raise ValueError(f"{path} is empty, not a saved tokenizer")
        try:
            state = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}): the file is truncated or "
                             "corrupted, or not a tokenizer saved by BPETokenizer.save") from None
        if not isinstance(state, dict) or state.get("format") != "course-bpe-v1":
            raise ValueError(f"{path} is not a tokenizer saved by BPETokenizer.save (it has no "
                             '"format": "course-bpe-v1" entry); for GPT-2 style vocab.json and '
                             "merges.txt files use utils.gpt2_vocab.load_gpt2_vocab")
        try:
            merges = [tuple(pair) for pair in state["merges"]]
            if "ids" not in state:
                return cls.from_merges(merges, state["special_tokens"])
            ids = state["ids"]
            return cls.from_ids(ids["bytes"], dict(zip(merges, ids["merges"], strict=True)),
                                dict(zip(state["special_tokens"], ids["special_tokens"],
                                         strict=True)))
        except (KeyError, TypeError, ValueError) as error:
            what = f"missing entry {error}" if isinstance(error, KeyError) else str(error)
            raise ValueError(f"{path} is a corrupted tokenizer file: {what}") from None

    @classmethod
    def from_merges(cls, merges: Iterable[Pair], special_tokens: Sequence[str] = ()
                    ) -> BPETokenizer:
        """A tokenizer from an ordered list of merges: the i-th pair gets id 256 + i.

        >>> tok = BPETokenizer.from_merges([(104, 105), (32, 256)])  # 'h'+'i', ' '+'hi'
        >>> tok.encode("hi hi!"), tok.decode([257])
        ([256, 257, 33], ' hi')
        """
        tok = cls(special_tokens=special_tokens)
        merges = [tuple(pair) for pair in merges]
        for rank, pair in enumerate(merges):
            if len(pair) != 2 or not all(isinstance(i, int) for i in pair):
                raise ValueError(f"merge {rank} is {list(pair)}, not a pair of integer ids")
        tok._set_merges({pair: 256 + i for i, pair in enumerate(merges)})
        return tok

    @classmethod
    def from_ids(cls, byte_ids: Sequence[int], merges: dict[Pair, int],
                 special_tokens: dict[str, int]) -> BPETokenizer:
        """A tokenizer with any id layout: `byte_ids[b]` is the id of byte b, `merges` maps
        each pair of ids to the id of the merged token, in the order the merges were learned
        (two merges may make the same token, and then share its id), `special_tokens` maps
        each special token to its id. GPT-2's files give such a layout (utils.gpt2_vocab).

        >>> tok = BPETokenizer.from_ids(range(255, -1, -1), {(151, 150): 257}, {"<eot>": 256})
        >>> tok.encode("hi<eot>"), tok.decode([257, 256])  # 'h' is byte 104: id 255 - 104
        ([257, 256], 'hi<eot>')
        """
        tok = cls()
        tok.byte_ids, tok.merges, tok.special_tokens = list(byte_ids), dict(merges), dict(
            special_tokens)
        tok._build()
        return tok

    def truncated(self, vocab_size: int) -> BPETokenizer:
        """The tokenizer a shorter training run would have given: keep the first merges.

        Training is greedy, so the first k merges of a long run are exactly what a run
        stopped after k merges learns.
        """
        if not self._course_layout():
            raise ValueError("truncated() needs the ids train() gives (bytes, merges, special "
                             "tokens); this tokenizer has its own id layout")
        n_merges = vocab_size - 256 - len(self.special_tokens)
        return BPETokenizer.from_merges(list(self.merges)[:max(n_merges, 0)],
                                        list(self.special_tokens))


def pretrained_bpe(vocab_size: int, special_tokens: Sequence[str] = ()) -> BPETokenizer:
    """A BPE tokenizer trained on the course corpus's train split, cached under runs/.

    The first call for a size trains it (1-2 s for 256-768 merges on a 2-core CPU) and saves
    it to runs/tokenizers/; later calls load the file. The file name carries a hash of the
    training text and special tokens, so a changed corpus retrains.
    """
    from utils.data import load_corpus, train_val_split
    from utils.paths import run_dir

    train_text, _ = train_val_split(load_corpus())
    key = hashlib.sha1((train_text + "\0" + "\0".join(special_tokens)).encode()).hexdigest()[:10]
    path = run_dir("tokenizers") / f"bpe_shakespeare_{vocab_size}_{key}.json"
    if path.exists():
        return BPETokenizer.load(path)
    # Training is greedy, so a smaller vocabulary's merges are the first merges of a larger
    # one: if a larger size is cached, keep its first merges instead of training again.
    larger = sorted(path.parent.glob(f"bpe_shakespeare_*_{key}.json"),
                    key=lambda p: int(p.name.split("_")[2]))
    larger = [p for p in larger if int(p.name.split("_")[2]) > vocab_size]
    if larger:
        tok = BPETokenizer.load(larger[0]).truncated(vocab_size)
    else:
        tok = BPETokenizer(special_tokens=special_tokens)
        tok.train(train_text, vocab_size)
    tok.save(path)
    return tok
