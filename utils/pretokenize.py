"""Pre-tokenization: cut text into the chunks that BPE merges inside (chapter 01).

Before byte-pair encoding learns or applies a single merge, GPT-2 cuts the text with a regular
expression into chunks (a word with its leading space, a number, a run of punctuation, a run of
whitespace), so that no token ever spans two words. This module holds that step and the bytes
it leads to:

    split_chunks       GPT-2's pattern (written for Python's built-in `re`): text -> chunks
    utf8               a chunk's UTF-8 bytes, the alphabet of 256 that byte-level BPE starts from
    bytes_to_unicode   GPT-2's printable stand-in for each byte, how vocab files and Hugging
                       Face's ByteLevel pre-tokenizer write byte tokens (' the' as 'Ġthe')

`WordTokenizer` (utils.tokenizers) counts these chunks as words; `utils.bpe` merges inside them.

>>> chunks = split_chunks("Hark, who's there?")
>>> chunks, [len(utf8(c)) for c in chunks]
(['Hark', ',', ' who', "'s", ' there', '?'], [4, 1, 4, 2, 6, 1])
"""

from __future__ import annotations

import re
import unicodedata
from itertools import groupby

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
