"""BPETokenizer.encode_iterable: the ids of `encode` on the whole text, from a stream of pieces."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.bpe_tokenizer import BPETokenizer
from utils.data import load_corpus, train_val_split

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    train, _ = train_val_split(load_corpus())
    tok = BPETokenizer(special_tokens=[EOT, "<|im_start|>"])
    tok.train(train[:30_000], vocab_size=400)
    return tok


def cut(text, positions):
    """`text` cut into pieces at the given positions."""
    bounds = [0, *sorted(p % (len(text) + 1) for p in positions), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# Seams that a naive line-by-line encode gets wrong: a contraction, a run of letters, digits
# or spaces, a special token and a space-before-word continued in the next piece.
@pytest.mark.parametrize("pieces", [
    ["I wi", "ll"], ["you'", "ll go"], ["you'l", "l go"], ["can'", "t"], ["12", "34"],
    ["a  ", "  b"], ["a\n", "\n", "\n b"], ["x<|endof", "text|>y"], ["x<", "|", "endoftext|", ">"],
    ["<|im_", "start|>hi<|endoftext", "|>"], ["end ", "<|endoftext|>"], ["", "", "ab", ""],
    ["é", "\u0301"], ["🙂", "👍🏽"], [" ", "'", "s"], ["'", "ve"], []])
def test_seams_between_pieces(tok, pieces):
    assert list(tok.encode_iterable(pieces)) == tok.encode("".join(pieces))


# Pieces made of the fragments seams are made of, glued together at random.
special_heavy = st.lists(st.sampled_from(
    ["a", "b", " ", "\n", "'", "l", "s", "1", "é", "🙂", "<", "|", ">", EOT, "<|im_start|>",
     "<|endof", "text|>"]), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(special_heavy, max_size=6))
def test_any_cut_gives_the_ids_of_the_whole_text(tok, pieces):
    assert list(tok.encode_iterable(pieces)) == tok.encode("".join(pieces))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80), st.lists(st.integers(0, 80), max_size=8))
def test_any_text_cut_anywhere(tok, text, positions):
    pieces = cut(text, positions)
    assert list(tok.encode_iterable(pieces)) == tok.encode(text)
    for allowed in ("none", {EOT}):
        assert list(tok.encode_iterable(pieces, allowed)) == tok.encode(text, allowed)


def test_a_file_read_line_by_line(tok, tmp_path):
    text = load_corpus()[:200_000] + f"\n{EOT}\n  indented\n\n\n" + "x" * 50
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    with path.open(encoding="utf-8", newline="") as lines:
        assert list(tok.encode_iterable(lines)) == tok.encode(text)


def test_ids_come_before_the_stream_ends(tok):
    """Lazy: the first ids arrive after the first few lines, not after the whole input."""
    pulled = []

    def lines():
        for i in range(1000):
            pulled.append(i)
            yield f"line {i} of the stream\n"

    stream = tok.encode_iterable(lines())
    next(stream)
    assert len(pulled) <= 2


# Run in a fresh process, so that its peak memory is the streaming's alone.
MEASURE = """
import resource, sys
from utils.bpe_tokenizer import BPETokenizer

tok = BPETokenizer.load(sys.argv[1])

def stream(path):
    with open(path, encoding="utf-8") as lines:
        return sum(1 for _ in tok.encode_iterable(lines))

def peak_kib():
    try:  # Linux: this program's own peak. (ru_maxrss may still hold the parent's, from fork.)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except OSError:  # macOS: no /proc, and ru_maxrss is in bytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

n_small = stream(sys.argv[2])  # also fills the tokenizer's per-chunk cache
before = peak_kib()
n_big = stream(sys.argv[3])
print(n_small, n_big, before, peak_kib())
"""


def test_memory_does_not_grow_with_the_input(tok, tmp_path):
    """Streaming a 3.5 MB file after a 1.1 MB one raises the process's peak memory by less
    than 2 MiB: neither the text nor its 800k ids are ever held whole."""
    corpus = load_corpus()
    small, big, saved = tmp_path / "small.txt", tmp_path / "big.txt", tmp_path / "tok.json"
    small.write_text(corpus, encoding="utf-8")
    big.write_text(corpus * 3, encoding="utf-8")
    tok.save(saved)
    run = subprocess.run([sys.executable, "-c", MEASURE, str(saved), str(small), str(big)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    n_small, n_big, before_kib, after_kib = map(int, run.stdout.split())
    assert n_big == 3 * n_small > 250_000
    assert big.stat().st_size > 3_000_000
    assert after_kib - before_kib < 2048, f"peak memory grew by {after_kib - before_kib} KiB"
