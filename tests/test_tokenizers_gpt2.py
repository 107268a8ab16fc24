"""GPT-2 compatibility: our pre-splitting against GPT-2's pattern, and GPT-2 style vocab.json +
merges.txt files (written here by Hugging Face's `tokenizers`, no download) read by our code."""

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.bpe_tokenizer import BPETokenizer
from utils.data import load_corpus, train_val_split
from utils.gpt2_vocab import load_gpt2_vocab
from utils.pretokenize import bytes_to_unicode, split_chunks

hf = pytest.importorskip("tokenizers")  # pinned in requirements.txt; installed by `make test`

# Strings where tokenizers tend to disagree.
HARD = [
    "I'm sure you'll see they're done; we'd've known it's his, isn't it", "I'M YOU'LL 'S 'Ll",
    "a   b\n\n\n  c \n", "   ", "\n", "1234567 3.14 2nd 10,000", "x² ½ Ⅻ ⅻ ³⁄₄ ①", "🙂👍🏽 🇬🇧 👨‍👩‍👧",
    "日本語のテキスト 中文 한국어", "café naïve e\u0301te Ωμέγα Привет", "\ttab\t\tbed \t x",
    "nbsp\u00a0x \u3000y \u2009z", "\x1c\x1d\x1e\x1f x", "_under_score__ a_b", "  leading",
    "trailing   ", "''' \"\" ``", "don't can't won't y'all", "∑∫√ ≈ ≠", "x\r\ny\r\n", "",
    "<|endoftext|>hello<|endoftext|> <|endoftext|>", "a<|endoftext|>", "ǅungla ǈ ꙮ",
]


def hf_pieces(text):
    """How Hugging Face's GPT-2 (ByteLevel) pre-tokenizer cuts `text`, as pieces of it."""
    pre = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    return [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]


# -- pre-splitting ------------------------------------------------------------------------
@pytest.mark.parametrize("text", HARD)
def test_chunks_equal_gpt2_pattern_on_hard_strings(text):
    assert split_chunks(text) == hf_pieces(text)


def test_numbers_are_not_letters():
    """The old pattern took ² ½ Ⅻ for letters (Python's \\w counts them); GPT-2 does not."""
    assert split_chunks("x² ½ Ⅻ") == ["x", "²", " ½", " Ⅻ"] == hf_pieces("x² ½ Ⅻ")
    assert split_chunks("a\x1cb") == ["a", "\x1c", "b"]  # a control character, not a space


def test_every_character_falls_in_the_class_gpt2_gives_it():
    """Every code point Python's Unicode tables know, in a probe that splits differently for
    each class: 'a?1!?' gives ['a?', '1', '!', '?'] for a letter, ['a', '?1', '!', '?'] for a
    number, ['a', '?', '1', '!?'] for a symbol and ['a', '?', '1', '!', '?'] for a space."""
    known = [chr(cp) for cp in range(0x40000) if unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    assert len(known) > 140_000
    wrong = []
    for start in range(0, len(known), 64):
        block = known[start:start + 64]
        if split_chunks("".join(f"a{ch}1!{ch}\n" for ch in block)) != hf_pieces(
                "".join(f"a{ch}1!{ch}\n" for ch in block)):
            wrong += [f"U+{ord(ch):04X}" for ch in block
                      if split_chunks(f"a{ch}1!{ch}") != hf_pieces(f"a{ch}1!{ch}")]
    assert not wrong, f"{len(wrong)} characters split unlike GPT-2, e.g. {wrong[:10]}"


mixed_text = st.text(alphabet=st.characters(exclude_categories=("Cn", "Cs"), max_codepoint=0x3FFFF)
                     | st.sampled_from(list(" \n\t'sltrvmd1aA")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(mixed_text)
def test_chunks_equal_gpt2_pattern_on_random_text(text):
    assert split_chunks(text) == hf_pieces(text)


# -- training: ties go to the smallest pair, as in Hugging Face's BpeTrainer ------------------
def hf_trained_merges(text, n_merges):
    """The merges Hugging Face's byte-level BpeTrainer learns from `text`, as pairs of bytes."""
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = hf.trainers.BpeTrainer(vocab_size=256 + n_merges, show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(bytes(byte_of[ch] for ch in piece) for piece in pair) for pair in merges]


def our_trained_merges(text, n_merges):
    tok = BPETokenizer()
    tok.train(text, vocab_size=256 + n_merges)
    return [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc,!", max_size=50), st.integers(1, 10))
def test_ties_are_broken_as_hugging_face_does_where_the_byte_ids_agree(text, n_merges):
    """Printable ASCII bytes are numbered alike in both libraries (Hugging Face sorts its byte
    alphabet by the printable stand-ins, which are these bytes themselves), so with texts full
    of ties the same rule, the smallest pair of ids, gives the same merges in the same order."""
    assert our_trained_merges(text, n_merges) == hf_trained_merges(text, n_merges)


def test_ties_involving_a_space_are_broken_differently():
    """The space byte is our id 32 but Hugging Face's 'Ġ' sorts after the letters: in
    "ab ab cd cd" the pairs 'ab', ' c' and 'cd' tie; we merge ' c' first, they merge 'ab'."""
    assert our_trained_merges("ab ab cd cd", 2) == [(b" ", b"c"), (b"a", b"b")]
    assert hf_trained_merges("ab ab cd cd", 2) == [(b"a", b"b"), (b"c", b"d")]


# -- vocab.json + merges.txt from Hugging Face ---------------------------------------------
@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """A byte-level BPE trained by Hugging Face on our corpus (and the hard strings, so that
    some merges are of accented letters, CJK and emoji), saved as GPT-2 style files."""
    train, _ = train_val_split(load_corpus())
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=800, min_frequency=1, show_progress=False,
                                     special_tokens=["<|endoftext|>"],
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([train[:200_000], "\n".join(HARD) * 20], trainer=trainer)
    folder = tmp_path_factory.mktemp("hf_bpe")
    vocab_path, merges_path = tok.model.save(str(folder))
    return tok, vocab_path, merges_path


@pytest.fixture(scope="module")
def ours(hf_files):
    _, vocab_path, merges_path = hf_files
    return load_gpt2_vocab(vocab_path, merges_path)


def test_their_ids_are_kept(hf_files, ours):
    theirs, _, _ = hf_files
    assert ours.vocab_size == theirs.get_vocab_size() == 800
    assert ours.special_tokens == {"<|endoftext|>": theirs.token_to_id("<|endoftext|>")}
    assert ours.encode(" the") == [theirs.token_to_id("Ġthe")]
    assert ours.byte_ids != list(range(256))  # their bytes are numbered differently from ours


@pytest.mark.parametrize("text", HARD)
def test_encode_equals_hugging_face_on_hard_strings(hf_files, ours, text):
    theirs, _, _ = hf_files
    ids = theirs.encode(text).ids
    assert ours.encode(text) == ids
    assert ours.decode(ids) == text == theirs.decode(ids, skip_special_tokens=False)


def test_encode_equals_hugging_face_on_unseen_text(hf_files, ours):
    theirs, _, _ = hf_files
    _, val = train_val_split(load_corpus())
    assert ours.encode(val[:30_000]) == theirs.encode(val[:30_000]).ids


@settings(max_examples=200, deadline=None)
@given(mixed_text)
def test_encode_equals_hugging_face_on_random_text(hf_files, ours, text):
    theirs, _, _ = hf_files
    assert ours.encode(text) == theirs.encode(text).ids


def test_a_loaded_vocabulary_saves_and_loads_with_its_ids(ours, tmp_path):
    ours.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    text = "Now is the winter of our discontent <|endoftext|> 🙂 x²"
    assert again.encode(text) == ours.encode(text) and again.vocab == ours.vocab
    with pytest.raises(ValueError, match="id layout"):
        ours.truncated(300)


# -- hand-written files: unusual layouts and clear errors -------------------------------------
def write_files(folder, vocab, merges):
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges),
                                       encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def byte_vocab(first_id=0):
    return {ch: first_id + b for b, ch in enumerate(bytes_to_unicode().values())}


def test_two_merges_that_make_the_same_token_share_its_id(tmp_path):
    vocab = {**byte_vocab(), "ab": 256, "bc": 257, "abc": 258, "<eot>": 300}
    tok = load_gpt2_vocab(*write_files(tmp_path, vocab, ["a b", "b c", "ab c", "a bc"]))
    assert tok.encode("abc") == [258] and tok.encode("xbc") == [vocab["x"], 257]
    assert tok.special_tokens == {"<eot>": 300} and tok.vocab_size == 301
    assert tok.decode([258, 300]) == "abc<eot>"
    with pytest.raises(ValueError, match="id 299"):  # a gap in the ids is no token
        tok.decode([299])


@pytest.mark.parametrize(("vocab", "merges", "message"), [
    ({**byte_vocab(), "ab": 256}, ["a b", "a"], r"merges.txt, line 3: expected two tokens"),
    ({**byte_vocab(), "ab": 256}, ["a  b"], r"merges.txt, line 2: expected two tokens"),
    ({**byte_vocab(), "ab": 256}, ["a b", "ab zz"], r"merges.txt, line 3: token 'zz' is not"),
    (byte_vocab(), ["a b"], r"merges.txt, line 2: token 'ab' is not in .*vocab.json"),
    ({k: v for k, v in byte_vocab().items() if k != "Ġ"}, [], r"byte 0x20: token 'Ġ'"),
    ({**byte_vocab(), "ab": 5}, ["a b"], "do not fit together: merge 0 gives id 5"),
    ({**byte_vocab(), "<s>": 7}, [], "do not fit together: special token ids"),
])
def test_files_that_do_not_fit_are_named_with_the_problem(tmp_path, vocab, merges, message):
    with pytest.raises(ValueError, match=message):
        load_gpt2_vocab(*write_files(tmp_path, vocab, merges))


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1', "not valid JSON"), ("[1, 2]", "not a vocab.json"),
    ('{"a": "1"}', "not a vocab.json"), ('{"a": -1}', "not a vocab.json"), ("", "not valid JSON")])
def test_a_bad_vocab_json_is_named(tmp_path, text, message):
    vocab_path, merges_path = write_files(tmp_path, byte_vocab(), [])
    vocab_path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        load_gpt2_vocab(vocab_path, merges_path)
    assert str(vocab_path) in str(error.value)
