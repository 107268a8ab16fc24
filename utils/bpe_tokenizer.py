"""BPETokenizer: byte-level byte-pair encoding as real models use it, GPT-2 style (chapter 01).

Ids 0..255 are the raw bytes, so every string is encodable; each merge learned by `train`
(with `utils.bpe.train_bpe_fast`) adds one id; special tokens come after the merges. It also
does what tokenizers of real models do: special tokens that training never merges into
(`encode(text, allowed_special=...)` decides whether they count in user text), streaming
(`encode_iterable(open(path))`), saving and loading, and ids of a vocabulary trained
elsewhere (`from_ids`; `utils.gpt2_vocab` reads GPT-2's vocab.json and merges.txt with it).
`pretrained_bpe` gives one trained on the course corpus, cached under runs/.

>>> tok = BPETokenizer()
>>> tok.train("low lower lowest low low", vocab_size=260)
>>> tok.decode(tok.encode("lowest 🙂")) == "lowest 🙂"
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path

from utils.bpe import Pair, merge, train_bpe_fast
from utils.pretokenize import split_chunks, utf8
from utils.tokenizers import checked_id


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

        The text is cut at each special token, which is dropped (so no merge spells one or
        reaches across one); the pieces are pre-split into chunks, each distinct chunk is
        counted once, and `train_bpe_fast` learns the merges from those counts: the same
        merges, in the same order, as `train_bpe_naive`. Ties between equally frequent pairs
        go to the smallest pair of ids (see `utils.bpe`).
        """
        n_merges = vocab_size - 256 - len(self.special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least 256 + {len(self.special_tokens)} "
                             f"special tokens, got {vocab_size}")
        splitter = self._special_splitter("all")
        pieces = splitter.split(text)[::2] if splitter else [text]
        chunk_counts = Counter(chunk for piece in pieces for chunk in split_chunks(piece))
        self._set_merges(train_bpe_fast(chunk_counts, n_merges, verbose))

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

    def state(self) -> dict:
        """The merges and special tokens as a JSON-ready dict (the vocabulary follows from
        them); `from_state` rebuilds the tokenizer. A tokenizer with another id layout (one
        from `utils.gpt2_vocab`) also stores its ids."""
        state = {"format": "course-bpe-v1", "special_tokens": list(self.special_tokens),
                 "merges": [[a, b] for a, b in self.merges]}
        if not self._course_layout():
            state["ids"] = {"bytes": self.byte_ids, "merges": list(self.merges.values()),
                            "special_tokens": list(self.special_tokens.values())}
        return state

    def save(self, path: str | Path) -> None:
        """Write `state()` as JSON."""
        # Write a temporary file, then rename: a reader in another process (parallel tests,
        # a second notebook) sees either no file or the whole file, never half of one.
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state()), encoding="utf-8")
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
        return cls.from_state(state, origin=str(path))

    @classmethod
    def from_state(cls, state: dict, origin: str = "the tokenizer state") -> BPETokenizer:
        """The tokenizer `state()` describes; a ValueError names `origin` and what is wrong."""
        if not isinstance(state, dict) or state.get("format") != "course-bpe-v1":
            raise ValueError(f"{origin} is not a tokenizer saved by BPETokenizer.save (it has no "
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
            raise ValueError(f"{origin} is a corrupted tokenizer file: {what}") from None

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
