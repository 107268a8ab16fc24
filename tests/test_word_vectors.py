"""Tests of utils/word_vectors.py: counting, PPMI, cosine similarity, neighbours, analogies."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from utils.word_vectors import (
    ANALOGIES,
    WordVectors,
    build_word_vectors,
    cooccurrence,
    corpus_words,
    cosine_similarity,
    evaluate_analogies,
    ppmi,
)


def test_corpus_words_drops_speakers_and_stage_directions():
    text = "Ham.\nTo be, or not to be.\nHe.\n\nKING.\n[Enter the Queen.] Thou'rt mad!"
    # "He." is speech (no blank line before it), "KING." after a blank line is a speaker
    assert corpus_words(text) == ["to", "be", "or", "not", "to", "be", "he", "thou'rt", "mad"]


def test_cooccurrence_is_symmetric_weighted_and_skips_unknown_words():
    ids = torch.tensor([0, 1, -1, 2])
    counts = cooccurrence(ids, vocab_size=3, window=2)
    assert torch.equal(counts, counts.T)
    assert counts[0, 1] == 1.0      # neighbours
    assert counts[1, 2] == 0.5      # two apart, across the unknown word
    assert counts[0, 2] == 0.0      # three apart: outside the window


def test_ppmi_is_non_negative_and_zero_for_unseen_pairs():
    counts = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, 0.0], [1.0, 0.0, 4.0]])
    scores = ppmi(counts)
    assert torch.all(scores >= 0) and torch.isfinite(scores).all()
    assert scores[1, 2] == 0 and scores[0, 0] == 0


# entries kept away from 0 so no row is (nearly) the zero vector, tested separately below
NONZERO = st.one_of(st.floats(-10, -0.125, width=32), st.floats(0.125, 10, width=32))


@given(arrays("float32", (4, 6), elements=NONZERO), st.floats(0.1, 100))
def test_cosine_similarity_is_scale_invariant_and_bounded(a, scale):
    a = torch.from_numpy(a)
    b = torch.roll(a, 1, dims=0)
    sim = cosine_similarity(a, b)
    assert sim.shape == (4,)
    assert torch.all(sim.abs() <= 1 + 1e-5)
    assert torch.allclose(cosine_similarity(a * scale, b), sim, atol=1e-4)


def test_cosine_similarity_of_zero_vector_is_zero():
    assert cosine_similarity(torch.zeros(3), torch.ones(3)).item() == 0.0


def small_vectors() -> WordVectors:
    words = ["king", "queen", "man", "woman", "apple"]
    vectors = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.2, 1.0, 0.1],
                            [0.2, -1.0, 0.1], [0.0, 0.0, 1.0]])
    return WordVectors(words, vectors / vectors.norm(dim=1, keepdim=True))


def test_nearest_excludes_the_word_itself():
    wv = small_vectors()
    found = [w for w, _ in wv.nearest("king", k=4)]
    assert "king" not in found and found[0] == "man" and len(found) == 4


def test_analogy_excludes_query_words():
    wv = small_vectors()
    answers = wv.analogy("man", "woman", "king", k=2)
    assert answers[0][0] == "queen"
    assert not {"man", "woman", "king"} & {w for w, _ in answers}


def test_unknown_word_raises_key_error_that_names_it():
    wv = small_vectors()
    try:
        wv.nearest("zebra")
    except KeyError as error:
        assert "zebra" in str(error)
    else:
        raise AssertionError("expected a KeyError")
    assert "zebra" not in wv and "king" in wv


def test_build_word_vectors_on_a_toy_corpus():
    text = ("the king rules the land . the queen rules the land . "
            "a dog eats the bone . a cat eats the fish . ") * 30
    wv = build_word_vectors(text, vocab_size=20, window=2, dim=5)
    assert wv.vectors.shape == (len(wv), 5)
    assert torch.allclose(wv.vectors.norm(dim=1), torch.ones(len(wv)), atol=1e-5)
    # words used in the same contexts end up close
    assert cosine_similarity(wv.vector("king"), wv.vector("queen")) > \
        cosine_similarity(wv.vector("king"), wv.vector("fish"))


def test_build_is_repeatable():
    text = "one two three two one four five one three " * 20
    a = build_word_vectors(text, vocab_size=5, dim=3, seed=1)
    b = build_word_vectors(text, vocab_size=5, dim=3, seed=1)
    assert torch.equal(a.vectors, b.vectors)


def test_evaluate_analogies_reports_rows_and_unknown_words():
    wv = small_vectors()
    rows = evaluate_analogies(wv, [("man", "woman", "king", "queen"),
                                   ("man", "woman", "zebra", "queen")], k=2)
    assert rows[0]["top1"] and rows[0]["topk"] and rows[0]["answer"] == "queen"
    assert rows[1]["answer"] == "(unknown word)" and not rows[1]["topk"]
    assert all(len(q) == 4 for q in ANALOGIES)
