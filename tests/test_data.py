import hashlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from utils.data import VAL_FRACTION, get_batch, load_corpus, train_val_split
from utils.paths import DATA_DIR

# Recorded in data/README.md; a changed corpus must be a deliberate, documented change.
SHAKESPEARE_SHA256 = "34761f28e3fef06991259c6e5a0c7fe6ffd91104a979980a6501c68dc262ddd3"
SONNETS_SHA256 = "f2ecba20803891f9b94b412c683c86fbefa643cd68787c10e6b77f7c8c363bbc"


def test_corpus_is_the_documented_file():
    text = load_corpus()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    assert SHAKESPEARE_SHA256 in (DATA_DIR / "README.md").read_text()
    assert text.startswith("HAMLET") and "\r" not in text and "\n\n\n" not in text


def test_sonnets_are_the_documented_file():
    sonnets = load_corpus("sonnets")
    assert hashlib.sha256(sonnets.encode("utf-8")).hexdigest() == SONNETS_SHA256
    assert SONNETS_SHA256 in (DATA_DIR / "README.md").read_text()
    assert sonnets.startswith("THE SONNETS\n") and "\r" not in sonnets and "\n\n\n" not in sonnets
    # The last of the 154 sonnets is there, and nothing of the plays leaked in.
    assert "\nCLIV\n" in sonnets and "HAMLET" not in sonnets


def test_sonnets_need_no_new_characters():
    # The shipped character tokenizer knows only the plays' characters: fine-tuning on the
    # sonnets must not need a single one it cannot encode.
    assert set(load_corpus("sonnets")) <= set(load_corpus())


def test_unknown_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="available"):
        load_corpus("war_and_peace")


@given(st.text(min_size=10, max_size=200))
def test_split_keeps_everything_in_order(text):
    train, val = train_val_split(text)
    assert train + val == text
    assert len(val) == len(text) - int(len(text) * (1 - VAL_FRACTION))


def test_split_validation_is_the_last_tenth():
    ids = torch.arange(1000)
    train, val = train_val_split(ids)
    assert torch.equal(val, torch.arange(900, 1000)) and torch.equal(train, torch.arange(900))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError):
        train_val_split("abc", fraction)


@given(st.integers(1, 8), st.integers(1, 16), st.integers(0, 50))
def test_batches_are_next_token_windows(batch_size, block_size, extra):
    data = torch.arange(block_size + 1 + extra) * 7
    x, y = get_batch(data, batch_size, block_size, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (batch_size, block_size)
    assert x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1] - x[:, -1], torch.full((batch_size,), 7))


def test_batches_reach_the_last_token():
    data = torch.arange(12)
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        _, y = get_batch(data, 4, 3, generator=gen)
        seen.update(y.flatten().tolist())
    assert 11 in seen and 0 not in seen  # 0 is never a target; the last token is


def test_batch_needs_more_data_than_block():
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(5), 2, 5)


@pytest.mark.parametrize(("batch_size", "block_size", "named"), [
    (2, 0, "block_size=0"), (2, -3, "block_size=-3"), (0, 4, "batch_size=0"),
    (-1, 4, "batch_size=-1")])
def test_batch_rejects_sizes_below_one(batch_size, block_size, named):
    with pytest.raises(ValueError, match=named):
        get_batch(torch.arange(100), batch_size, block_size)
