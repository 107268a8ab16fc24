"""The bidirectional encoder and masked-LM corruption and training (utils/encoder.py)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from utils import encoder
from utils.encoder import IGNORE, Encoder, EncoderDecoderConfig, MaskedLM, mask_tokens
from utils.masks import padding_mask


def small(pos="learned", **kw):
    torch.manual_seed(0)
    return EncoderDecoderConfig(vocab_size=12, d_model=16, n_heads=2, max_len=10, pos=pos, **kw)


# ---- the encoder is bidirectional, and padding-proof -------------------------------------------


@pytest.mark.parametrize("pos", ["learned", "alibi"])
def test_encoder_sees_both_directions(pos):
    enc = Encoder(small(pos)).eval()
    ids = torch.randint(3, 12, (1, 6))
    later = ids.clone()
    later[0, 5] = (later[0, 5] + 1 - 3) % 9 + 3                     # change the last token
    with torch.no_grad():
        a, b = enc(ids), enc(later)
    assert not torch.allclose(a[0, 0], b[0, 0])                     # the first token noticed


@pytest.mark.parametrize("pos", ["learned", "alibi"])
@given(lengths=st.lists(st.integers(1, 8), min_size=1, max_size=4), seed=st.integers(0, 99))
def test_encoder_padding_never_changes_real_outputs(pos, lengths, seed):
    enc = Encoder(small(pos)).eval()
    g = torch.Generator().manual_seed(seed)
    S = max(lengths) + 1
    batch = torch.randint(0, 12, (len(lengths), S), generator=g)     # padding holds anything
    with torch.no_grad():
        out = enc(batch, mask=padding_mask(lengths, S))
        for b, n in enumerate(lengths):
            alone = enc(batch[b:b + 1, :n])
            assert torch.allclose(out[b, :n], alone[0], atol=1e-5)


def test_encoder_rejects_too_long_input_and_unknown_position_scheme():
    with pytest.raises(ValueError, match="max_len=10"):
        Encoder(small())(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="pos must be"):
        Encoder(small("rope"))


# ---- masked language modelling ---------------------------------------------------------------


def test_mask_tokens_follows_15_percent_and_80_10_10():
    ids = torch.randint(0, 50, (400, 250), generator=torch.Generator().manual_seed(0))
    inputs, targets = mask_tokens(ids, mask_id=99, n_ordinary=50,
                                  generator=torch.Generator().manual_seed(1))
    picked = targets != IGNORE
    assert abs(picked.float().mean().item() - 0.15) < 0.005
    assert torch.equal(targets[picked], ids[picked])                 # targets: the originals
    assert torch.equal(inputs[~picked], ids[~picked])                # the rest untouched
    masked = inputs[picked] == 99
    changed = (inputs[picked] != ids[picked]) & ~masked
    kept = inputs[picked] == ids[picked]
    assert abs(masked.float().mean().item() - 0.8) < 0.01
    # random replacements: 10 %, minus the 1 in 50 that drew the original token by chance
    assert abs(changed.float().mean().item() - 0.1 * 49 / 50) < 0.01
    assert abs(kept.float().mean().item() - (0.1 + 0.1 / 50)) < 0.01
    assert inputs.max() <= 99 and inputs[picked & (inputs != 99)].max() < 50


def test_mask_tokens_respects_can_mask_and_is_reproducible():
    ids = torch.arange(1000).view(10, 100) % 7
    can = torch.zeros_like(ids, dtype=torch.bool)
    can[:, :50] = True
    a = mask_tokens(ids, 9, 7, p=0.5, generator=torch.Generator().manual_seed(3), can_mask=can)
    b = mask_tokens(ids, 9, 7, p=0.5, generator=torch.Generator().manual_seed(3), can_mask=can)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[1][:, 50:] == IGNORE).all() and (a[1][:, :50] != IGNORE).any()


def test_masked_lm_loss_only_counts_picked_tokens():
    model = MaskedLM(small()).eval()
    ids = torch.randint(3, 12, (2, 8))
    targets = torch.full_like(ids, IGNORE)
    targets[0, 3] = ids[0, 3]
    logits, loss = model(ids, targets=targets)
    expected = torch.nn.functional.cross_entropy(logits[0, 3:4], ids[0, 3:4])
    assert torch.allclose(loss, expected)


def test_mlm_trains_a_little(monkeypatch, tmp_path):
    monkeypatch.setattr(encoder, "run_dir", lambda name: tmp_path)
    model, tok, info = encoder.load_or_train_mlm(steps=30, verbose=False)
    first, last = info["losses"][0][1], info["losses"][-1][1]
    assert not info["loaded"] and last < first
    _, _, info2 = encoder.load_or_train_mlm(steps=30, verbose=False)
    assert info2["loaded"] and info2["losses"] == info["losses"]
    _, val = encoder.mlm_data(tok)
    assert 0.0 <= encoder.fill_in_accuracy(model, val, tok.vocab_size, n_windows=8) <= 1.0
