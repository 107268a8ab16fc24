"""The shipped checkpoint (data/checkpoints/) and the safetensors save/load in utils/pretrained.py."""

import json
import re

import pytest
import torch

from utils.data import load_corpus, train_val_split
from utils.model import GPT, GPTConfig
from utils.paths import DATA_DIR
from utils.pretrained import (
    PretrainedError,
    load_model_file,
    load_pretrained,
    pretrained_path,
    pretrained_record,
    save_pretrained,
)
from utils.tokenizers import CharTokenizer
from utils.trainer import split_loss


def readme_val_loss() -> float:
    text = (DATA_DIR / "README.md").read_text()
    match = re.search(r"whole held-out split[^|]*\|\s*\*\*(\d+\.\d+)\*\*", text)
    assert match, "data/README.md must state the shipped model's val loss on the whole split"
    return float(match.group(1))


def test_shipped_model_loads_and_is_small():
    model, tokenizer = load_pretrained("shakespeare-char")
    path = pretrained_path("shakespeare-char")
    assert path.stat().st_size <= 25 * 2**20
    assert isinstance(model, GPT) and not model.training
    assert tokenizer.chars == CharTokenizer(load_corpus()).chars
    assert model.config.vocab_size == tokenizer.vocab_size


def test_shipped_model_val_loss_is_what_data_readme_says():
    model, tokenizer = load_pretrained("shakespeare-char")
    _, val_ids = train_val_split(torch.tensor(tokenizer.encode(load_corpus())))
    loss = split_loss(model, val_ids, model.config.block_size)
    assert abs(loss - readme_val_loss()) <= 0.02, (loss, readme_val_loss())
    assert loss <= 1.75   # far below the bigram line (~2.5): a real trained model


def test_shipped_record_says_how_it_was_made():
    record = pretrained_record("shakespeare-char")
    assert record["command"].startswith("python -m utils.train --preset shakespeare-char")
    for key in ("machine", "steps", "final_train_loss", "final_val_loss", "history", "config"):
        assert key in record, key
    readme = (DATA_DIR / "README.md").read_text()
    assert record["command"] in readme and f"{record['final_val_loss']:.4f}" in readme


def _tiny(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8))
    tokenizer = CharTokenizer("abcde")
    path = save_pretrained(tmp_path / "tiny.safetensors", model, tokenizer, {"note": "test"})
    return model, path


def test_round_trip_keeps_weights_tokenizer_and_tied_embedding(tmp_path):
    model, path = _tiny(tmp_path)
    loaded, tokenizer, metadata = load_model_file(path)
    assert tokenizer.chars == list("abcde") and metadata["format"].startswith("transformers-course")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.lm_head.weight is loaded.embed.token.weight
    assert json.loads(path.with_suffix(".json").read_text())["note"] == "test"


def test_truncated_file_is_refused_with_its_name(tmp_path):
    _, path = _tiny(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PretrainedError, match="tiny.safetensors"):
        load_model_file(path)


def test_corrupted_weights_are_caught_by_the_checksum(tmp_path):
    _, path = _tiny(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-50] ^= 0xFF                                   # inside the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(PretrainedError, match="tiny.safetensors is corrupted"):
        load_model_file(path)


def test_corrupted_header_is_refused(tmp_path):
    _, path = _tiny(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[10:20] = b"\x00" * 10                          # inside the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(PretrainedError, match="tiny.safetensors"):
        load_model_file(path)


def test_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(PretrainedError, match="other.safetensors is a safetensors file but not"):
        load_model_file(other)
    pickle_file = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(2)}, pickle_file)
    with pytest.raises(PretrainedError, match="pickled.safetensors"):
        load_model_file(pickle_file)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model_file(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown pretrained model"):
        load_pretrained("gpt-5")


def test_shipped_draft_model_pairs_with_the_target_and_reproduces_its_recorded_loss():
    # chapter 09's speculative decoding: a small model with the target's tokenizer and context
    draft, tokenizer = load_pretrained("shakespeare-char-draft")
    target, target_tokenizer = load_pretrained("shakespeare-char")
    assert pretrained_path("shakespeare-char-draft").stat().st_size < 2**20       # < 1 MB
    assert tokenizer.chars == target_tokenizer.chars
    assert draft.config.block_size == target.config.block_size
    assert draft.get_num_params() < target.get_num_params() / 4
    record = pretrained_record("shakespeare-char-draft")
    assert record["command"].startswith("python -m utils.train --preset shakespeare-char-draft")
    _, val_ids = train_val_split(torch.tensor(tokenizer.encode(load_corpus())))
    loss = split_loss(draft, val_ids, draft.config.block_size)
    assert abs(loss - record["val_loss_whole_split"]) <= 0.02, (loss, record)
    # a trained draft: well below the bigram line (~2.5), above the target it serves
    assert split_loss(target, val_ids, target.config.block_size) < loss < 2.2
