"""Tokenizers: turn text into the integers a model reads, and back (chapter 01).

Three tokenizers, from the simplest to the one real models use:

    CharTokenizer   one id per character seen in the training text
    WordTokenizer   one id per word seen in the training text, plus <unk> for the rest
    BPETokenizer    byte-level byte-pair encoding, GPT-2 style, trained from scratch

and the building blocks of BPE that the chapter writes step by step: `get_pair_counts`,
`merge`, `split_chunks` (the pre-splitting regex) and `train_bpe_naive` (the slow reference
that re-counts every pair of the whole text after each merge).

>>> tok = BPETokenizer()
>>> tok.train("low lower lowest low low", vocab_size=260)
>>> tok.decode(tok.encode("lowest 🙂")) == "lowest 🙂"
True
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

Pair = tuple[int, int]

# GPT-2 style pre-splitting, written with Python's built-in `re` (no `regex` module needed).
# In order of preference, a chunk is:
#   an English contraction suffix ('s 't 're 've 'm 'll 'd),
#   an optional space + a run of letters  ([^\W\d_] is "a word character but not a digit or _"),
#   an optional space + a run of digits,
#   an optional space + a run of anything else that is not whitespace (punctuation, emoji...),
#   whitespace not followed by a non-space (so the last space sticks to the next word),
#   any other whitespace.
# Every character falls into one of these classes, so the chunks always join back to the text.
SPLIT_PATTERN = re.compile(
    r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)


def split_chunks(text: str) -> list[str]:
    """Pre-split text into GPT-2 style chunks; BPE merges never cross a chunk boundary.

    >>> split_chunks("Hark, who's there? 42 ducats!")
    ['Hark', ',', ' who', "'s", ' there', '?', ' 42', ' ducats', '!']
    """
    return SPLIT_PATTERN.findall(text)


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
    """The most frequent pair; ties go to the smallest pair, so training is deterministic."""
    return max(counts, key=lambda p: (counts[p], -p[0], -p[1]))


def train_bpe_naive(text: str, n_merges: int) -> dict[Pair, int]:
    """The textbook algorithm: after every merge, re-count every pair in the whole text.

    Correct and short, but each merge costs a full pass over the text. It is kept as the
    reference that `BPETokenizer.train` must agree with, and as the benchmark's baseline.

    >>> train_bpe_naive("aaab aab", 2)  # 'aa' first; then four pairs tie, the smallest wins
    {(97, 97): 256, (32, 256): 257}
    """
    chunks = [list(c.encode("utf-8")) for c in split_chunks(text)]
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
        return "".join(self.chars[i] for i in ids)


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
        return "".join(self.words[i] for i in ids)


class BPETokenizer:
    """Byte-level byte-pair encoding, GPT-2 style.

    Ids 0..255 are the raw bytes, so every string is encodable; each merge learned by
    `train` adds one id for a frequent pair of neighbours; special tokens (if any) get the
    ids after the merges and always encode to a single id.

    >>> tok = BPETokenizer(special_tokens=["<|endoftext|>"])
    >>> tok.train("the cat the hat the bat", vocab_size=262)  # 5 merges + 1 special
    >>> [tok.vocab[i] for i in tok.merges.values()]
    [b'at', b'he', b'the', b' the', b' b']
    >>> tok.encode(" the<|endoftext|>")
    [259, 261]
    """

    def __init__(self, special_tokens: Sequence[str] = ()):
        self.merges: dict[Pair, int] = {}
        self.special_tokens: dict[str, int] = {}
        self._special_order = list(special_tokens)
        self._build()

    # -- vocabulary ------------------------------------------------------------------------
    def _build(self) -> None:
        """Derive the vocabulary and special-token ids from the merges (after train/load)."""
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        for (a, b), new_id in self.merges.items():  # dicts keep insertion = merge order
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        first = 256 + len(self.merges)
        self.special_tokens = {s: first + i for i, s in enumerate(self._special_order)}
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        self._special_re = (re.compile("(" + "|".join(
            re.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)) + ")")
            if self.special_tokens else None)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token's text, UTF-8 encoded)."""
        if token_id in self._special_ids:
            return self._special_ids[token_id].encode("utf-8")
        return self.vocab[token_id]

    # -- training --------------------------------------------------------------------------
    def train(self, text: str, vocab_size: int, verbose: bool = False) -> None:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        Same merges, in the same order, as `train_bpe_naive`, but much faster: it works on
        the distinct chunks with their counts, keeps the pair counts and an index from each
        pair to the chunks that contain it, and after a merge re-counts only those chunks.
        A heap finds the most frequent pair (ties: the smallest pair) without scanning all.
        """
        n_merges = vocab_size - 256 - len(self._special_order)
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least 256 + {len(self._special_order)} "
                             f"special tokens, got {vocab_size}")
        start = time.perf_counter()
        freqs = Counter(split_chunks(text))
        chunks = [list(c.encode("utf-8")) for c in freqs]
        weights = list(freqs.values())
        counts: dict[Pair, int] = {}
        where: dict[Pair, set[int]] = {}  # pair -> indices of the chunks that contain it
        for i, (chunk, w) in enumerate(zip(chunks, weights, strict=True)):
            get_pair_counts(chunk, counts, w)
            for pair in pairwise(chunk):
                where.setdefault(pair, set()).add(i)
        heap = [(-c, p) for p, c in counts.items()]
        heapq.heapify(heap)

        merges: dict[Pair, int] = {}
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
                self.merges = merges
                self._build()
                print(f"merge {len(merges):4d}/{n_merges}: {pair} -> {new_id} "
                      f"{self.vocab[new_id]!r} ({-neg} occurrences)")
        self.merges = merges
        self._build()
        if verbose:
            print(f"trained {len(merges)} merges in {time.perf_counter() - start:.2f} s")

    # -- encoding --------------------------------------------------------------------------
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply the merges to one chunk, always the earliest-learned merge first."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(chunk.encode("utf-8", errors="surrogatepass"))
        while len(ids) >= 2:
            pairs = set(pairwise(ids))
            pair = min(pairs, key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
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

    def encode(self, text: str) -> list[int]:
        """Encode text; each special token in it becomes its single id.

        >>> BPETokenizer().encode("hi!")  # untrained: one id per byte
        [104, 105, 33]
        """
        if self._special_re is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for part in self._special_re.split(text):
            if part in self.special_tokens:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Join the bytes of the ids and read them as UTF-8.

        An arbitrary id sequence may cut a character in half; those bytes become '�'.
        (`surrogatepass` lets even lone surrogates, legal in Python strings, round-trip.)
        """
        data = b"".join(self.token_bytes(i) for i in ids)
        try:
            return data.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace")

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the merges and special tokens as JSON (the vocabulary follows from them)."""
        state = {"format": "course-bpe-v1", "special_tokens": self._special_order,
                 "merges": [[a, b] for a, b in self.merges]}
        # Write a temporary file, then rename: a reader in another process (parallel tests,
        # a second notebook) sees either no file or the whole file, never half of one.
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        if state.get("format") != "course-bpe-v1":
            raise ValueError(f"{Path(path).name} is not a tokenizer saved by BPETokenizer.save")
        return cls.from_merges([tuple(p) for p in state["merges"]], state["special_tokens"])

    @classmethod
    def from_merges(cls, merges: Iterable[Pair], special_tokens: Sequence[str] = ()
                    ) -> BPETokenizer:
        """A tokenizer from an ordered list of merges: the i-th pair gets id 256 + i.

        >>> tok = BPETokenizer.from_merges([(104, 105), (32, 256)])  # 'h'+'i', ' '+'hi'
        >>> tok.encode("hi hi!"), tok.decode([257])
        ([256, 257, 33], ' hi')
        """
        tok = cls(special_tokens=special_tokens)
        tok.merges = {(a, b): 256 + i for i, (a, b) in enumerate(merges)}
        tok._build()
        return tok

    def truncated(self, vocab_size: int) -> BPETokenizer:
        """The tokenizer a shorter training run would have given: keep the first merges.

        Training is greedy, so the first k merges of a long run are exactly what a run
        stopped after k merges learns.
        """
        n_merges = vocab_size - 256 - len(self._special_order)
        return BPETokenizer.from_merges(list(self.merges)[:max(n_merges, 0)],
                                        self._special_order)


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
