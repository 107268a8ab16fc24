"""Unit and property tests of the tokenizers: utils/pretokenize.py, utils/tokenizers.py,
utils/bpe.py and utils/bpe_tokenizer.py."""

from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utils.bpe import get_pair_counts, merge, train_bpe_fast, train_bpe_naive
from utils.bpe_tokenizer import BPETokenizer
from utils.data import load_corpus, train_val_split
from utils.pretokenize import split_chunks
from utils.tokenizers import CharTokenizer, WordTokenizer

# Hypothesis' default text strategy leaves out surrogates; allow every code point here.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60)


@pytest.fixture(scope="module")
def sample() -> str:
    """A slice of the corpus: big enough for real merges, small enough for the naive version."""
    train, _ = train_val_split(load_corpus())
    return train[:30_000]


@pytest.fixture(scope="module")
def trained(sample) -> BPETokenizer:
    tok = BPETokenizer(special_tokens=["<|endoftext|>"])
    tok.train(sample, vocab_size=400)
    return tok


# -- building blocks ----------------------------------------------------------------------
@given(any_text)
def test_chunks_join_back_to_the_text(text):
    assert "".join(split_chunks(text)) == text


def test_chunks_keep_leading_spaces_on_words():
    assert split_chunks("Is this a dagger  which I see") == [
        "Is", " this", " a", " dagger", " ", " which", " I", " see"]
    assert split_chunks("O'er\n\nthe 1623 folio...") == [
        "O", "'", "er", "\n", "\n", "the", " 1623", " folio", "..."]


def test_pair_counts_overlapping_and_empty():
    assert get_pair_counts([1, 1, 1]) == {(1, 1): 2}
    assert get_pair_counts([]) == {} and get_pair_counts([5]) == {}


def test_merge_edge_cases():
    assert merge([], (1, 2), 9) == []
    assert merge([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge([3, 1, 2], (1, 2), 9) == [3, 9]
    assert merge([2, 1], (1, 2), 9) == [2, 1]


@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_merge_leaves_no_occurrence_of_a_distinct_pair(ids, a, b):
    out = merge(ids, (a, b), 99)
    if a != b:
        assert (a, b) not in set(pairwise(out))
    assert len(out) == len(ids) - out.count(99)


# -- character and word tokenizers ----------------------------------------------------------
def test_char_round_trip_and_unknown_character_is_named():
    tok = CharTokenizer(load_corpus())
    line = "To be, or not to be, that is the question:"
    assert tok.decode(tok.encode(line)) == line
    with pytest.raises(ValueError, match="'é'"):
        tok.encode("café")


def test_word_tokenizer_maps_unknown_words_to_unk():
    tok = WordTokenizer("the king is dead")
    ids = tok.encode("the queen is dead")
    assert ids[1] == 0 and 0 not in (ids[0], ids[2], ids[3])


# -- BPE -----------------------------------------------------------------------------------
def test_fast_training_learns_the_naive_merges(sample):
    tok = BPETokenizer()
    tok.train(sample, vocab_size=256 + 60)
    assert tok.merges == train_bpe_naive(sample, 60)
    assert list(tok.merges.values()) == list(range(256, 316))


@given(st.text(alphabet="ab c", max_size=40), st.integers(0, 12))
def test_fast_equals_naive_on_tiny_texts_with_many_ties(text, n_merges):
    tok = BPETokenizer()
    tok.train(text, vocab_size=256 + n_merges)
    assert tok.merges == train_bpe_naive(text, n_merges)


@given(st.lists(st.sampled_from(["ab", " ab", "ba", " c", "cc", "a", "\n"]), max_size=30),
       st.integers(0, 8))
def test_fast_trainer_on_chunk_counts_equals_naive_on_the_text(pieces, n_merges):
    text = "".join(pieces)
    assert train_bpe_fast(Counter(split_chunks(text)), n_merges) == train_bpe_naive(text, n_merges)


def test_ties_go_to_the_smallest_pair_of_ids():
    # 'ab', ' c' and 'cd' occur twice each: ' c' = (32, 99) has the smallest ids; the largest
    # pair, (99, 100), or the first one met, (97, 98), would be the other fixed rules.
    for train in (train_bpe_naive, lambda text, n: train_bpe_fast(Counter(split_chunks(text)), n)):
        assert train("ab ab cd cd", 1) == {(32, 99): 256}
        assert train("cd cd ab ab", 1) == {(32, 97): 256}   # now ' a' is the smallest


def test_training_stops_when_nothing_is_left_to_merge():
    tok = BPETokenizer()
    tok.train("ab", vocab_size=300)
    assert tok.merges == {(97, 98): 256} and tok.vocab_size == 257


@given(any_text)
def test_round_trip_every_string(trained, text):
    assert trained.decode(trained.encode(text)) == text


@pytest.mark.parametrize("text", ["", "🙂👍🏽", "e\u0301te\u0301", "naïve café", "\n\n  \t",
                                  "a<|endoftext|>b", "<|endoftext|><|endoftext|>",
                                  "lone \ud800 surrogate"])
def test_round_trip_edge_cases(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_special_token_is_one_id_after_the_merges(trained):
    eot = trained.special_tokens["<|endoftext|>"]
    assert eot == 256 + len(trained.merges) == trained.vocab_size - 1
    assert trained.encode("<|endoftext|>") == [eot]
    assert len(trained.encode_ordinary("<|endoftext|>")) > 1


def test_merges_shorten_the_text(trained, sample):
    assert len(trained.encode(sample)) < 0.7 * len(sample.encode("utf-8"))


def test_decode_of_a_cut_character_does_not_raise(trained):
    assert trained.decode(list("🙂".encode())[:2]) == "\ufffd"


def test_save_and_load_give_the_same_tokenizer(trained, tmp_path):
    path = tmp_path / "tok.json"
    trained.save(path)
    loaded = BPETokenizer.load(path)
    text = "Now is the winter of our discontent <|endoftext|> 🙂"
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    assert loaded.encode(text) == trained.encode(text)


def test_vocab_size_too_small_is_refused():
    with pytest.raises(ValueError, match="at least"):
        BPETokenizer(special_tokens=["<s>"]).train("abc", vocab_size=256)


def test_compression_close_to_hugging_face_bpe(sample):
    """Same text, same size: our tokens per character within 5% of Hugging Face's BPE."""
    pytest.importorskip("tokenizers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from bench_bpe import hf_tokens_per_char

    train, val = sample[:25_000], sample[25_000:]
    tok = BPETokenizer()
    tok.train(train, vocab_size=400)
    ours = len(tok.encode(val)) / len(val)
    theirs = hf_tokens_per_char(train, val, 400)
    assert ours == pytest.approx(theirs, rel=0.05)


def test_truncated_equals_a_shorter_training_run(trained, sample):
    shorter = BPETokenizer(special_tokens=["<|endoftext|>"])
    shorter.train(sample, vocab_size=300)
    cut = trained.truncated(300)
    assert cut.merges == shorter.merges and cut.special_tokens == shorter.special_tokens


def test_verbose_training_reports_each_merge(capsys):
    BPETokenizer().train("aaab aab", vocab_size=258, verbose=True)
    out = capsys.readouterr().out
    assert "merge    1/2" in out and "b'aa'" in out and "trained 2 merges" in out


# -- special tokens ------------------------------------------------------------------------
def test_training_never_merges_across_or_into_a_special_token():
    text = "ab<|endoftext|>cd<|endoftext|>" * 50 + "ab cd"
    tok = BPETokenizer(special_tokens=["<|endoftext|>"])
    tok.train(text, vocab_size=300)
    learned = [tok.vocab[i] for i in tok.merges.values()]
    # Only the text between the special tokens is trained on: chunks 'ab' x51, 'cd' x50,
    # ' cd' x1; then nothing is left to merge (no '<|', 'endoftext', '|>cd' ...).
    assert learned == [b"ab", b"cd", b" cd"]
    assert tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1}


def test_training_with_special_tokens_equals_training_on_the_pieces_between():
    pieces = ["the cat sat", " on the mat", "the hat"]
    with_specials = BPETokenizer(special_tokens=["<eot>", "<pad>"])
    with_specials.train("<eot>".join(pieces) + "<pad>", vocab_size=256 + 8 + 2)
    reference = {}
    for _ in range(8):  # the naive trainer on the pieces, pooled
        counts = {}
        chunks = [list(c.encode()) for p in pieces for c in split_chunks(p)]
        for new_id, pair in enumerate(reference, start=256):
            chunks = [merge(c, pair, new_id) for c in chunks]
        for c in chunks:
            get_pair_counts(c, counts)
        reference[max(counts, key=lambda p: (counts[p], -p[0], -p[1]))] = 256 + len(reference)
    assert with_specials.merges == reference


@pytest.mark.parametrize("allowed", ["none", set(), frozenset()])
def test_allowed_special_none_encodes_special_text_as_plain_text(trained, allowed):
    text = "a<|endoftext|>b"
    assert trained.encode(text, allowed_special=allowed) == trained.encode_ordinary(text)
    assert trained.special_tokens["<|endoftext|>"] not in trained.encode(text, allowed)
    assert trained.decode(trained.encode(text, allowed_special=allowed)) == text


def test_allowed_special_honours_only_the_named_tokens():
    tok = BPETokenizer(special_tokens=["<a>", "<b>"])
    a, b = tok.special_tokens["<a>"], tok.special_tokens["<b>"]
    assert tok.encode("<a><b>") == [a, b] == tok.encode("<a><b>", allowed_special="all")
    assert tok.encode("<a><b>", allowed_special={"<b>"}) == [*b"<a>", b]
    assert tok.encode("<a><b>", allowed_special=["<a>"]) == [a, *b"<b>"]


@pytest.mark.parametrize(("allowed", "message"), [
    ("<|endoftext|>", "the string"), ({"<|unknown|>"}, "not special tokens"),
    ("everything", "the string")])
def test_allowed_special_mistakes_are_refused(trained, allowed, message):
    with pytest.raises(ValueError, match=message):
        trained.encode("hi", allowed_special=allowed)


def test_longest_special_token_wins():
    tok = BPETokenizer(special_tokens=["<s>", "<s>!"])
    assert tok.encode("<s>!<s>") == [tok.special_tokens["<s>!"], tok.special_tokens["<s>"]]


def test_special_tokens_as_a_string_are_refused_not_split_into_characters():
    with pytest.raises(TypeError, match=r"\['<\|endoftext\|>'\]"):
        BPETokenizer(special_tokens="<|endoftext|>")


@pytest.mark.parametrize(("special_tokens", "message"), [
    ([""], "non-empty"), (["<s>", ""], "non-empty"), (["<s>", "<s>"], "repeated"),
    ([None], "non-empty"), (["<a>", "<b>", "<a>"], r"\['<a>'\]")])
def test_bad_special_tokens_are_refused(special_tokens, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer(special_tokens=special_tokens)
    with pytest.raises(ValueError, match=message):
        BPETokenizer.from_merges([], special_tokens)


# -- decoding ids that do not exist -----------------------------------------------------------
@pytest.mark.parametrize("bad_id", [-1, -300, 10**6])
def test_decode_of_an_id_out_of_range_names_it(trained, bad_id):
    for tok in (trained, CharTokenizer("abc"), WordTokenizer("a b c")):
        with pytest.raises(ValueError, match=rf"id {bad_id}\b"):
            tok.decode([0, bad_id])


def test_decode_of_the_first_id_past_the_end_names_it(trained):
    for tok in (trained, CharTokenizer("abc"), WordTokenizer("a b c")):
        with pytest.raises(ValueError, match=rf"id {tok.vocab_size}\b"):
            tok.decode([tok.vocab_size])
        tok.decode([tok.vocab_size - 1])  # the last id is fine


def test_decode_accepts_integer_like_ids_and_refuses_floats(trained):
    import torch

    assert trained.decode(torch.tensor([104, 105])) == "hi"
    assert CharTokenizer("hi").decode(torch.tensor([1, 0])) == "ih"
    with pytest.raises(TypeError, match="integers"):
        trained.decode([104.0])


# -- lone surrogates --------------------------------------------------------------------------
def test_training_accepts_lone_surrogates_like_encode():
    text = "ab\ud800 ab\ud800 ab\udfff"
    tok = BPETokenizer()
    tok.train(text, vocab_size=262)  # used to raise UnicodeEncodeError
    assert tok.merges == train_bpe_naive(text, 6)
    assert any(b"\xed" in tok.vocab[i] for i in tok.merges.values())  # surrogate bytes merged
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode("utf-8", "surrogatepass"))


# -- load: clear errors -----------------------------------------------------------------------
def _saved_text(trained, tmp_path):
    path = tmp_path / "tok.json"
    trained.save(path)
    return path.read_text()


@pytest.mark.parametrize(("make", "message"), [
    (lambda good: "", "is empty"),
    (lambda good: "  \n", "is empty"),
    (lambda good: good[: len(good) // 2], "truncated or corrupted"),
    (lambda good: good.replace('"merges": [[', '"merges": [[999999, ', 1), "corrupted"),
    (lambda good: good.replace('"merges"', '"merged"'), "missing entry 'merges'"),
    (lambda good: good.replace('"merges": [[', '"merges": [[1], [', 1), "merge 0 is"),
    (lambda good: good.replace('"special_tokens": ["<|endoftext|>"]',
                               '"special_tokens": "<|endoftext|>"'), "corrupted"),
    (lambda good: '{"model": {"type": "BPE"}}', "not a tokenizer saved by BPETokenizer.save"),
    (lambda good: "[1, 2, 3]", "not a tokenizer saved by BPETokenizer.save"),
])
def test_load_of_a_bad_file_names_the_file_and_the_problem(trained, tmp_path, make, message):
    bad = tmp_path / "bad.json"
    bad.write_text(make(_saved_text(trained, tmp_path)))
    with pytest.raises(ValueError, match=message) as error:
        BPETokenizer.load(bad)
    assert str(bad) in str(error.value)


def test_load_of_a_binary_file_names_the_file(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not valid JSON") as error:
        BPETokenizer.load(bad)
    assert str(bad) in str(error.value)


def test_bad_merges_are_refused_by_from_merges():
    with pytest.raises(ValueError, match="merge 1 joins ids 256 and 300"):
        BPETokenizer.from_merges([(1, 2), (256, 300)])
    with pytest.raises(ValueError, match="merge 0 is"):
        BPETokenizer.from_merges([(1, 2, 3)])
