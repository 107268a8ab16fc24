"""The causal property: changing tokens at positions >= cut never changes any output before cut.

Checked on chapter 05's GPT for every positional scheme, on the decoder of the
encoder-decoder, and on MultiHeadAttention's two paths. A model that peeked at the future
(a missing or off-by-one causal mask, a position scheme mixing future tokens in) fails.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.attention import MultiHeadAttention
from utils.encoder import EncoderDecoderConfig
from utils.encoder_decoder import EncoderDecoder
from utils.masks import causal_mask, sliding_window_mask
from utils.model import GPT, GPTConfig

VOCAB, BLOCK = 20, 12
MODELS: dict = {}


def gpt(pos: str) -> GPT:
    """One small model per positional scheme, built once (hypothesis calls many times)."""
    if pos not in MODELS:
        torch.manual_seed(0)
        MODELS[pos] = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2,
                                    n_embd=16, pos=pos)).eval()
    return MODELS[pos]


def change_from(ids: torch.Tensor, cut: int, seed: int) -> torch.Tensor:
    """ids with every token at position >= cut replaced by a different one."""
    changed = ids.clone()
    shift = torch.randint(1, VOCAB, changed[:, cut:].shape, generator=torch.Generator().manual_seed(seed))
    changed[:, cut:] = (changed[:, cut:] + shift) % VOCAB
    return changed


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "none"])
@settings(max_examples=15)
@given(data=st.data())
def test_gpt_future_tokens_never_change_past_logits(pos, data):
    T = data.draw(st.integers(2, BLOCK), label="T")
    cut = data.draw(st.integers(1, T - 1), label="cut")
    seed = data.draw(st.integers(0, 10_000), label="seed")
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))
    changed = change_from(ids, cut, seed + 1)
    model = gpt(pos)
    with torch.no_grad():
        before, _ = model(ids)
        after, _ = model(changed)
    assert torch.allclose(before[:, :cut], after[:, :cut], atol=1e-5), \
        f"pos={pos}: changing tokens from position {cut} on changed earlier logits"
    # ...and the property is not vacuous: the changed position itself does react.
    assert not torch.allclose(before[:, cut], after[:, cut], atol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "none"])
def test_gpt_with_an_extra_window_mask_stays_causal(pos):
    model = gpt(pos)
    ids = torch.randint(0, VOCAB, (1, BLOCK), generator=torch.Generator().manual_seed(1))
    changed = change_from(ids, 6, 2)
    mask = sliding_window_mask(BLOCK, 3)
    with torch.no_grad():
        before, _ = model(ids, mask=mask)
        after, _ = model(changed, mask=mask)
    assert torch.allclose(before[:, :6], after[:, :6], atol=1e-5)


@settings(max_examples=15)
@given(T=st.integers(2, 9), data=st.data())
def test_decoder_future_target_tokens_never_change_past_logits(T, data):
    cut = data.draw(st.integers(1, T - 1), label="cut")
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(vocab_size=VOCAB, d_model=16, n_heads=2,
                                                max_len=10)).eval()
    src = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(T))
    tgt = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(cut))
    with torch.no_grad():
        before, _ = model(src, tgt)
        after, _ = model(src, change_from(tgt, cut, T))
    assert torch.allclose(before[:, :cut], after[:, :cut], atol=1e-5)


@pytest.mark.parametrize("use_sdpa", [False, True])
@settings(max_examples=25)
@given(T=st.integers(2, 10), data=st.data())
def test_multi_head_attention_causal_paths_do_not_leak(use_sdpa, T, data):
    cut = data.draw(st.integers(1, T - 1), label="cut")
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, use_sdpa=use_sdpa).eval()
    x = torch.randn(1, T, 8)
    y = x.clone()
    y[:, cut:] = torch.randn(1, T - cut, 8)
    with torch.no_grad():
        for kwargs in ({"is_causal": True}, {"mask": causal_mask(T)}):
            assert torch.allclose(mha(x, **kwargs)[:, :cut], mha(y, **kwargs)[:, :cut], atol=1e-6)
