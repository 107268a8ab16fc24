"""BPE training speed: incremental `BPETokenizer.train` against the naive rescan-per-merge.

    python bench/bench_bpe.py                 # train split of data/shakespeare.txt, vocab 512
    python bench/bench_bpe.py --chars 200000  # a quicker run on the first 200k characters

Prints a table: time of each algorithm, the speed-up (target: at least 20x), whether both
learned identical merges, and the compression (tokens per character on the validation split)
of our tokenizer and of Hugging Face's `tokenizers` BPE trained on the same text and size.
Record the numbers with date and machine in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform

from utils.bpe import train_bpe_naive
from utils.bpe_tokenizer import BPETokenizer
from utils.data import load_corpus, train_val_split
from utils.timing import stopwatch

TARGET_SPEEDUP = 20.0


def hf_tokens_per_char(train_text: str, val_text: str, vocab_size: int) -> float | None:
    """Train Hugging Face's byte-level BPE the same way; None when `tokenizers` is missing."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        return None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([train_text], trainer=trainer)
    return len(tok.encode(val_text).ids) / len(val_text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--chars", type=int, default=0, help="use only this many characters")
    args = parser.parse_args()

    train_text, val_text = train_val_split(load_corpus())
    if args.chars:
        train_text = train_text[: args.chars]
    n_merges = args.vocab_size - 256
    print(f"corpus: {len(train_text):,} training characters, vocab {args.vocab_size} "
          f"({n_merges} merges), {platform.processor() or platform.machine()}")

    with stopwatch() as fast_watch:
        fast = BPETokenizer()
        fast.train(train_text, args.vocab_size)
    with stopwatch() as naive_watch:
        naive_merges = train_bpe_naive(train_text, n_merges)
    fast_s, naive_s = fast_watch.seconds, naive_watch.seconds

    ratio = naive_s / fast_s
    identical = naive_merges == fast.merges
    ours = len(fast.encode(val_text)) / len(val_text)
    hf = hf_tokens_per_char(train_text, val_text, args.vocab_size)

    print(f"{'naive (rescan per merge)':<28}{naive_s:10.2f} s")
    print(f"{'incremental (ours)':<28}{fast_s:10.2f} s")
    print(f"{'speed-up':<28}{ratio:10.1f} x   target >= {TARGET_SPEEDUP:.0f}x: "
          f"{'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}")
    print(f"{'identical merges':<28}{str(identical):>10}")
    print(f"{'tokens/char, ours (val)':<28}{ours:10.4f}")
    print(f"{'tokens/char, HF BPE (val)':<28}" + (f"{hf:10.4f}" if hf else "   skipped"
                                                   " (tokenizers not installed)"))


if __name__ == "__main__":
    main()
