"""Use a byte-level BPE vocabulary trained elsewhere: GPT-2's own, or any in its file format.

GPT-2 (and Hugging Face's byte-level BPE, which writes the same files) keeps a tokenizer in
two text files:

    vocab.json   {"token": id, ...}: every token with its id. A token's bytes are written with
                 GPT-2's printable stand-ins (`bytes_to_unicode`), so " the" is "Ġthe".
    merges.txt   one merge per line, "left right" (e.g. "Ġ t"), in the order they were
                 learned; the first line may be a "#version: ..." comment.

`load_gpt2_vocab` turns them into our `BPETokenizer`, keeping their ids, so our `encode` gives
the ids the original does and a model trained with that tokenizer can read them. Tokens in
vocab.json that are neither a byte nor made by a merge (GPT-2's "<|endoftext|>") become
special tokens. The course never downloads anything; with internet access, GPT-2's own files
are at https://huggingface.co/openai-community/gpt2/resolve/main/vocab.json and .../merges.txt:

    tok = load_gpt2_vocab("vocab.json", "merges.txt")
    tok.encode("Hello world")          # [15496, 995], as GPT-2 reads it
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.bpe import Pair
from utils.bpe_tokenizer import BPETokenizer
from utils.pretokenize import bytes_to_unicode


def load_gpt2_vocab(vocab_path: str | Path, merges_path: str | Path) -> BPETokenizer:
    """A BPETokenizer with the tokens, ids and merges of GPT-2 style vocab.json + merges.txt.

    A ValueError names the file (and line) and what is wrong when the files do not fit.
    """
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    vocab = _read_vocab(vocab_path)
    stand_in = bytes_to_unicode()  # byte -> the character that writes it in vocab.json

    def id_of(token: str, where: str) -> int:
        if token not in vocab:
            raise ValueError(f"{where}: token {token!r} is not in {vocab_path}")
        return vocab[token]

    byte_ids = [id_of(stand_in[b], f"byte {b:#04x}") for b in range(256)]
    merges: dict[Pair, int] = {}
    made = {stand_in[b] for b in range(256)}  # tokens that bytes or merges account for
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{merges_path}, line {number}: expected two tokens separated by "
                             f"one space, got {line!r}")
        left, right = parts
        where = f"{merges_path}, line {number}"
        pair = (id_of(left, where), id_of(right, where))
        if pair not in merges:  # a repeated line would change nothing: the first one wins
            merges[pair] = id_of(left + right, where)
        made.add(left + right)
    special_tokens = {token: i for token, i in vocab.items() if token not in made}
    try:
        return BPETokenizer.from_ids(byte_ids, merges, special_tokens)
    except ValueError as error:
        raise ValueError(f"{vocab_path} and {merges_path} do not fit together: {error}") from None


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected GPT-2's vocab.json, "
                         'a JSON object {"token": id, ...}') from None
    if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()):
        raise ValueError(f'{path} is not a vocab.json: expected a JSON object {{"token": id}} '
                         "with non-negative integer ids")
    return vocab
