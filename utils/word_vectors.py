"""Word vectors made from our own corpus by counting, in a few seconds on a CPU (chapter 02).

A transformer learns its embedding table by gradient descent, which takes a long training run
before the table means much. The same kind of geometry (similar words point the same way) can
be obtained in seconds from the classic recipe, which is what this module does:

1. split the corpus into lowercase words, dropping speaker names and stage directions;
2. keep the `vocab_size` most frequent words;
3. count how often each pair of words occurs within `window` words of each other
   (closer pairs count more: 1/distance);
4. turn counts into positive pointwise mutual information (PPMI): how much more often a pair
   occurs than chance predicts, floored at 0;
5. compress the [V, V] PPMI matrix to `dim` columns with a truncated SVD, and scale every row
   to unit length, so that a dot product is a cosine similarity.

`WordVectors.nearest` and `WordVectors.analogy` then answer "which words are like X?" and
"a is to b as c is to ?".
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass

import torch

from utils.paths import run_dir

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# A speaker tag is a short line such as "Ham." or "LADY MACBETH." right after a blank line
# (headings such as "ACT I." look the same and go too; a one-word reply "He." does not follow
# a blank line and stays).
SPEAKER = re.compile(r"[A-Z][A-Za-z' ]{0,24}\.")
STAGE = re.compile(r"\[[^\]]*\]")

# a : b :: c : expected. A mix of what a million words of Shakespeare can and cannot know.
ANALOGIES: list[tuple[str, str, str, str]] = [
    ("man", "woman", "king", "queen"),
    ("man", "woman", "lord", "lady"),
    ("man", "woman", "he", "she"),
    ("he", "she", "him", "her"),
    ("he", "she", "his", "her"),
    ("father", "mother", "son", "daughter"),
    ("brother", "sister", "father", "mother"),
    ("husband", "wife", "king", "queen"),
    ("he", "him", "i", "me"),
    ("he", "him", "they", "them"),
    ("i", "my", "thou", "thy"),
    ("i", "my", "he", "his"),
    ("i", "me", "thou", "thee"),
    ("you", "your", "thou", "thy"),
    ("thou", "art", "you", "are"),
    ("thou", "hast", "he", "hath"),
    ("thou", "dost", "he", "doth"),
    ("day", "night", "sun", "moon"),
    ("good", "better", "bad", "worse"),
    ("is", "was", "are", "were"),
]


def corpus_words(text: str) -> list[str]:
    """Lowercase words of a play text, without speaker tags and [stage directions].

    >>> corpus_words("Ham.\\nO, that this too too solid flesh would melt! [Exit.]")
    ['o', 'that', 'this', 'too', 'too', 'solid', 'flesh', 'would', 'melt']
    """
    kept, previous = [], ""
    for line in text.split("\n"):
        stripped = line.strip()
        if not (previous == "" and SPEAKER.fullmatch(stripped)):
            kept.append(line)
        previous = stripped
    return WORD.findall(STAGE.sub(" ", "\n".join(kept)).lower())


def cooccurrence(ids: torch.Tensor, vocab_size: int, window: int = 4) -> torch.Tensor:
    """Symmetric [V, V] counts of word pairs up to `window` apart, each weighted 1/distance.

    `ids` holds one vocabulary index per word, -1 for words outside the vocabulary (they
    still take up a place, so distances stay true).

    >>> cooccurrence(torch.tensor([0, 1, 0]), vocab_size=2, window=2)
    tensor([[1., 2.],
            [2., 0.]])
    """
    counts = torch.zeros(vocab_size * vocab_size)
    for distance in range(1, window + 1):
        left, right = ids[:-distance], ids[distance:]
        keep = (left >= 0) & (right >= 0)
        left, right = left[keep], right[keep]
        weight = torch.full((len(left),), 1.0 / distance)
        # flat index row * V + col: one index_add per direction instead of a Python loop
        counts.index_add_(0, left * vocab_size + right, weight)
        counts.index_add_(0, right * vocab_size + left, weight)
    return counts.view(vocab_size, vocab_size)


def ppmi(counts: torch.Tensor, alpha: float = 0.75) -> torch.Tensor:
    """Positive pointwise mutual information of a co-occurrence matrix.

    PMI(w, c) = log P(w, c) / (P(w) P(c)); negative values (pairs rarer than chance) are too
    noisy to trust at this corpus size, so they become 0. Raising context counts to `alpha`
    (0.75, as in word2vec) stops rare context words from getting huge scores.

    >>> ppmi(torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    tensor([[0.0000, 0.6931],
            [0.6931, 0.0000]])
    """
    total = counts.sum()
    p_word = counts.sum(dim=1, keepdim=True) / total
    context = counts.sum(dim=0, keepdim=True) ** alpha
    p_context = context / context.sum()
    with torch.no_grad():
        pmi = torch.log(counts / total) - torch.log(p_word) - torch.log(p_context)
    # log(0) = -inf for pairs never seen; those, and negatives, become 0
    return torch.nan_to_num(pmi, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0.0)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine of the angle between vectors along the last dimension (broadcasts).

    1 means same direction, 0 unrelated (orthogonal), -1 opposite. A zero vector gets 0.

    >>> cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    tensor([1., 0.])
    """
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return (a * b).sum(dim=-1) / norms.clamp_min(eps)


@dataclass
class WordVectors:
    """Unit-length word vectors with lookups by word.

    >>> wv = WordVectors(["a", "b", "c"], torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    >>> wv.nearest("a", k=2)
    [('b', 0.6), ('c', 0.0)]
    """

    words: list[str]
    vectors: torch.Tensor  # [V, dim], rows of unit length

    def __post_init__(self) -> None:
        self.index = {word: i for i, word in enumerate(self.words)}

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __len__(self) -> int:
        return len(self.words)

    def vector(self, word: str) -> torch.Tensor:
        if word not in self.index:
            raise KeyError(f"{word!r} is not among the {len(self)} words of this vocabulary")
        return self.vectors[self.index[word]]

    def nearest(self, query: str | torch.Tensor, k: int = 10,
                exclude: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        """The k words most cosine-similar to a word or a vector, best first.

        A word never counts as its own neighbour; `exclude` removes more words."""
        if isinstance(query, str):
            exclude = (*exclude, query)
            query = self.vector(query)
        scores = cosine_similarity(self.vectors, query)
        excluded = {self.index[word] for word in exclude if word in self.index}
        for i in excluded:
            scores[i] = -float("inf")
        top = scores.topk(min(k, len(self) - len(excluded)))
        return [(self.words[i], round(s, 4))
                for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def analogy(self, a: str, b: str, c: str, k: int = 5) -> list[tuple[str, float]]:
        """a is to b as c is to ...? The words nearest to b - a + c, the three excluded.

        The query words are excluded because b - a + c is usually closest to b or c
        themselves; every published analogy score does the same."""
        target = self.vector(b) - self.vector(a) + self.vector(c)
        return self.nearest(target, k=k, exclude=(a, b, c))


def build_word_vectors(text: str, vocab_size: int = 5000, window: int = 4, dim: int = 100,
                       seed: int = 0) -> WordVectors:
    """Count-based word vectors: co-occurrence -> PPMI -> truncated SVD -> unit rows.

    >>> wv = build_word_vectors("the king and the queen " * 20, vocab_size=4, dim=2)
    >>> sorted(wv.words), tuple(wv.vectors.shape)
    (['and', 'king', 'queen', 'the'], (4, 2))
    """
    words = corpus_words(text)
    vocab = [word for word, _ in Counter(words).most_common(vocab_size)]
    index = {word: i for i, word in enumerate(vocab)}
    ids = torch.tensor([index.get(word, -1) for word in words], dtype=torch.long)
    matrix = ppmi(cooccurrence(ids, len(vocab), window))
    dim = min(dim, len(vocab))
    # svd_lowrank draws a random projection: fix its seed so the vectors are repeatable
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        U, S, _ = torch.svd_lowrank(matrix, q=dim, niter=4)
    vectors = U * S.sqrt()  # split the singular values between words and contexts
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return WordVectors(vocab, vectors)


def load_word_vectors(vocab_size: int = 5000, window: int = 4, dim: int = 100,
                      corpus: str = "shakespeare") -> WordVectors:
    """Word vectors of a shipped corpus, built once (about 5 s) and cached under runs/."""
    from utils.data import load_corpus

    path = run_dir("word_vectors") / f"{corpus}_v{vocab_size}_w{window}_d{dim}.pt"
    if path.exists():
        saved = torch.load(path)
        return WordVectors(saved["words"], saved["vectors"])
    wv = build_word_vectors(load_corpus(corpus), vocab_size, window, dim)
    # write then rename, so a notebook running at the same time never reads half a file
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"words": wv.words, "vectors": wv.vectors}, partial)
    os.replace(partial, path)
    return wv


def evaluate_analogies(wv: WordVectors, questions: list[tuple[str, str, str, str]] = ANALOGIES,
                       k: int = 5) -> list[dict]:
    """Answer each a:b::c:? question; report the top answer, whether the expected word is
    first or in the top k, and, as a baseline, whether it is simply c's nearest neighbour."""
    rows = []
    for a, b, c, expected in questions:
        if any(word not in wv for word in (a, b, c, expected)):
            rows.append({"question": f"{a}:{b} :: {c}:?", "expected": expected,
                         "answer": "(unknown word)", "top1": False, "topk": False,
                         "baseline": False})
            continue
        answers = [word for word, _ in wv.analogy(a, b, c, k=k)]
        neighbour = wv.nearest(c, k=1, exclude=(a, b))[0][0]
        rows.append({"question": f"{a}:{b} :: {c}:?", "expected": expected,
                     "answer": answers[0], "top1": answers[0] == expected,
                     "topk": expected in answers, "baseline": neighbour == expected})
    return rows
