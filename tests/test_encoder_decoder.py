"""The encoder, masked-LM corruption and the encoder-decoder (utils/encoder_decoder.py)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from utils import encoder_decoder as ed
from utils.encoder_decoder import (
    BOS,
    EOS,
    IGNORE,
    PAD,
    Encoder,
    EncoderDecoder,
    EncoderDecoderConfig,
    MaskedLM,
    mask_tokens,
)
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
    monkeypatch.setattr(ed, "run_dir", lambda name: tmp_path)
    model, tok, info = ed.load_or_train_mlm(steps=30, verbose=False)
    first, last = info["losses"][0][1], info["losses"][-1][1]
    assert not info["loaded"] and last < first
    _, _, info2 = ed.load_or_train_mlm(steps=30, verbose=False)
    assert info2["loaded"] and info2["losses"] == info["losses"]
    _, val = ed.mlm_data(tok)
    assert 0.0 <= ed.fill_in_accuracy(model, val, tok.vocab_size, n_windows=8) <= 1.0


# ---- the encoder-decoder -----------------------------------------------------------------------


def test_source_padding_never_changes_the_decoder():
    model = EncoderDecoder(small()).eval()
    src = torch.randint(3, 12, (1, 5))
    tgt = torch.randint(3, 12, (1, 4))
    padded = torch.cat([src, torch.randint(0, 12, (1, 3))], dim=1)   # 3 junk padding tokens
    with torch.no_grad():
        alone, _ = model(src, tgt)
        batched, _ = model(padded, tgt, padding_mask([5], 8))
        unmasked, _ = model(padded, tgt)
    assert torch.allclose(alone, batched, atol=1e-5)
    assert not torch.allclose(alone, unmasked, atol=1e-3)            # the mask is what did it


def test_cross_attention_reads_the_source():
    model = EncoderDecoder(small()).eval()
    src, tgt = torch.randint(3, 12, (1, 5)), torch.randint(3, 12, (1, 4))
    other = src.clone()
    other[0, -1] = (other[0, -1] - 2) % 9 + 3
    with torch.no_grad():
        a, b = model(src, tgt)[0], model(other, tgt)[0]
    assert not torch.allclose(a[0, 0], b[0, 0])                      # even the first target step


def test_reverse_task_data():
    strings = ed.random_strings(200, torch.Generator().manual_seed(0))
    assert all(ed.MIN_LEN <= len(s) <= ed.MAX_LEN and not ed.is_held_out(s) for s in strings)
    held = ed.random_strings(50, torch.Generator().manual_seed(0), held_out=True)
    assert all(ed.is_held_out(s) for s in held) and not set(held) & set(strings)
    src, src_mask, tgt_in, targets = ed.reverse_batch(["abcd", "xyz"])
    assert ed.decode_letters(src[1]) == "xyz" and src[1, 3] == PAD
    assert src_mask[:, 0].tolist() == [[True] * 4, [True, True, True, False]]
    assert tgt_in[1].tolist()[:4] == [BOS] + ed.encode_letters("zyx")
    assert targets[1].tolist() == ed.encode_letters("zyx") + [EOS, IGNORE]
    with pytest.raises(ValueError, match="'A'"):
        ed.encode_letters("aAb")


def test_generate_stops_at_eos_and_reverse_strings_decodes():
    model = EncoderDecoder(ed.REVERSER).eval()
    src, src_mask, _, _ = ed.reverse_batch(["abcd", "efghijkl"])
    out = model.generate(src, src_mask, BOS, EOS, max_new_tokens=9)
    assert out.shape[0] == 2 and out.shape[1] <= 9
    assert all(isinstance(s, str) for s in ed.reverse_strings(model, ["abcd"]))


def test_the_trained_reverser_gets_held_out_strings_right():
    """The chapter's claim: >= 95 % exact match on strings it never trained on. Uses the
    cached model under runs/ when the chapter has trained it (else trains, ~30-60 s)."""
    model, info = ed.load_or_train_reverser(verbose=False)
    held = ed.random_strings(500, torch.Generator().manual_seed(123), held_out=True)
    assert ed.exact_match(model, held) >= 0.95
