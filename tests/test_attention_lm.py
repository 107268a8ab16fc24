"""The tiny attention-only language model of chapter 04: shapes, causality, training, caching."""

import pytest
import torch

from utils import attention_lm
from utils.attention_lm import AttentionLM, LMConfig, attention_maps, head_patterns, train
from utils.tokenizers import CharTokenizer


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return AttentionLM(LMConfig(vocab_size=12, d_model=16, n_heads=2, n_layers=2, block_size=10,
                                **kw))


def test_shapes_loss_and_weights():
    model = tiny()
    idx = torch.randint(0, 12, (3, 10))
    logits, loss, weights = model(idx, idx, need_weights=True)
    assert logits.shape == (3, 10, 12) and loss.shape == ()
    assert len(weights) == 2 and all(w.shape == (3, 2, 10, 10) for w in weights)
    assert model(idx)[2] is None


def test_causal_future_tokens_change_nothing_before_them():
    model = tiny().eval()
    a = torch.randint(0, 12, (1, 10))
    b = a.clone()
    b[0, 6:] = (b[0, 6:] + 1) % 12
    with torch.no_grad():
        la, _, wa = model(a, need_weights=True)
        lb, _, _ = model(b)
    torch.testing.assert_close(la[0, :6], lb[0, :6])
    assert all(torch.triu(w[0], diagonal=1).abs().max() == 0 for w in wa)


def test_without_mlp_and_too_long_input():
    model = tiny(mlp=False)
    assert model.layers[0].mlp is None
    try:
        model(torch.zeros(1, 11, dtype=torch.long))
    except ValueError as error:
        assert "block_size" in str(error)
    else:
        raise AssertionError("a sequence longer than block_size must be refused")


def test_training_learns_a_repeating_pattern():
    model = tiny()
    data = torch.arange(12).repeat(50)  # 0 1 2 ... 11 0 1 ...: next token is fully predictable
    losses = train(model, data, steps=60, batch_size=8)
    assert losses[-1][1] < 0.5 * losses[0][1]
    assert losses[-1][0] == 60 and not model.training


def test_training_runs_exactly_the_steps_asked():
    losses = train(tiny(), torch.arange(12).repeat(20), steps=7, log_every=3)
    assert [step for step, _ in losses] == [1, 4, 7]
    with pytest.raises(ValueError, match="steps"):
        train(tiny(), torch.arange(12).repeat(20), steps=0)


def test_training_is_reproducible():
    data = torch.arange(12).repeat(20)
    model_a, model_b = tiny(), tiny()
    assert train(model_a, data, steps=5) == train(model_b, data, steps=5)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_default_steps_are_a_fixed_count():
    assert attention_lm.default_steps(torch.device("cpu")) == 1890
    assert attention_lm.default_steps(torch.device("cuda")) == 3000


def test_head_patterns_and_maps():
    model = tiny()
    patterns = head_patterns(model, torch.randint(0, 12, (500,)), n_windows=4)
    assert set(patterns) == {"previous", "self", "first", "same char"}
    for score in patterns.values():
        assert score.shape == (2, 2) and (score >= 0).all() and (score <= 1 + 1e-6).all()
    tok = CharTokenizer("abcdefghijkl")
    maps = attention_maps(model, tok, "abcdefghijklabc")  # longer than block: truncated
    assert len(maps) == 2 and maps[0].shape == (2, 10, 10)


def test_load_or_train_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(attention_lm, "run_dir", lambda name: tmp_path)
    model, tok, info = attention_lm.load_or_train(steps=2, verbose=False)
    assert not info["loaded"] and info["steps"] == 2
    (path,) = tmp_path.glob("*.pt")
    assert "steps2" in path.name and f"v{tok.vocab_size}" in path.name
    assert torch.load(path, weights_only=True)["steps"] == 2
    again, _, info2 = attention_lm.load_or_train(steps=2, verbose=False)
    assert info2["loaded"] and info2["losses"] == info["losses"] and info2["steps"] == 2
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert tok.vocab_size == model.cfg.vocab_size


def test_a_cache_with_other_steps_is_retrained_not_loaded(tmp_path, monkeypatch):
    """The old bug: a model cut short by a time budget was stored under the full run's name."""
    monkeypatch.setattr(attention_lm, "run_dir", lambda name: tmp_path)
    attention_lm.load_or_train(steps=1, verbose=False)
    (short,) = tmp_path.glob("*.pt")
    asked = short.with_name(short.name.replace("steps1", "steps3"))
    short.rename(asked)  # a 1-step model under the 3-step name
    _, _, info = attention_lm.load_or_train(steps=3, verbose=False)
    assert not info["loaded"] and info["steps"] == 3 and info["losses"][-1][0] == 3
    assert torch.load(asked, weights_only=True)["steps"] == 3  # the bad file was replaced


def test_a_cache_without_recorded_steps_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setattr(attention_lm, "run_dir", lambda name: tmp_path)
    attention_lm.load_or_train(steps=1, verbose=False)
    (path,) = tmp_path.glob("*.pt")
    saved = torch.load(path, weights_only=True)
    del saved["steps"]  # what caches written before steps were recorded look like
    torch.save(saved, path)
    _, _, info = attention_lm.load_or_train(steps=1, verbose=False)
    assert not info["loaded"]
