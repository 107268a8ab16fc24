"""The KV cache (utils.attention.KVCache, GPT.forward(kv_cache=...)) changes the cost of
generation, never its result: same logits, same greedy tokens, for every positional scheme."""

import pytest
import torch

from utils.attention import KVCache, MultiHeadAttention
from utils.generation import generate
from utils.model import GPT, GPTConfig

POSITIONS = ["learned", "rope", "alibi", "none"]


def make_model(pos: str, n_kv_head=None, block_size=16, seed=0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=23, block_size=block_size, n_layer=3, n_head=4, n_embd=32,
                       n_kv_head=n_kv_head, pos=pos)
    model = GPT(config).eval()
    with torch.no_grad():               # larger weights than the init, so positions matter
        for p in model.parameters():
            p.mul_(5.0 if p.dim() > 1 else 1.0)
    return model


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_prefill_then_decode_matches_a_full_forward(pos, n_kv_head):
    model = make_model(pos, n_kv_head)
    idx = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config.n_layer)
        pieces = [model(idx[:, :5], kv_cache=cache)[0]]          # prefill 5 tokens
        for t in range(5, 12):                                    # then one at a time
            pieces.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    cached = torch.cat(pieces, dim=1)
    assert cache.seq_len == 12
    assert torch.allclose(cached, full, atol=1e-5), (cached - full).abs().max()


@pytest.mark.parametrize("pos", POSITIONS)
def test_cached_greedy_generation_gives_the_same_tokens(pos):
    model = make_model(pos)
    idx = torch.randint(0, 23, (3, 4), generator=torch.Generator().manual_seed(2))
    # 30 new tokens: past block_size=16, so the cropped window and its rebuilt cache are used
    with_cache = generate(model, idx, 30, temperature=0, use_cache=True)
    without = generate(model, idx, 30, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache.shape == (3, 34)


@pytest.mark.parametrize("pos", POSITIONS)
def test_cached_sampling_gives_the_same_tokens_for_the_same_seed(pos):
    model = make_model(pos)
    idx = torch.zeros(1, 3, dtype=torch.long)
    runs = [generate(model, idx, 20, temperature=1.0, top_k=10, use_cache=cache,
                     generator=torch.Generator().manual_seed(7)) for cache in (True, False)]
    assert torch.equal(*runs)


def test_positions_matter_so_the_test_above_can_fail():
    # Feeding the newest token without its offset must give different logits: a cache that
    # forgot the position would be caught by the tests above.
    model = make_model("learned")
    idx = torch.randint(0, 23, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = KVCache(model.config.n_layer)
        model(idx[:, :7], kv_cache=cache)
        right = model(idx[:, 7:], kv_cache=cache)[0]
        wrong = model(idx[:, 7:], offset=0)[0]
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_cache_stores_only_the_kv_heads_and_counts_bytes():
    model = make_model("rope", n_kv_head=2)
    cache = KVCache(model.config.n_layer)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    assert cache.keys[0].shape == (1, 2, 6, 8)            # [B, n_kv_head, T, d_head]
    assert cache.num_bytes() == 3 * 2 * (1 * 2 * 6 * 8) * 4


def test_cache_beyond_block_size_and_bad_offset_raise():
    model = make_model("learned", block_size=8)
    cache = KVCache(model.config.n_layer)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="offset"):
            model(torch.zeros(1, 1, dtype=torch.long), kv_cache=KVCache(3), offset=2)


def test_attention_with_cache_matches_causal_attention_on_the_whole_sequence():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, 2, use_sdpa=True).eval()
    x = torch.randn(2, 7, 16)
    cache = KVCache(1)
    with torch.no_grad():
        full = mha(x, is_causal=True)
        parts = [mha(x[:, :3], is_causal=True, cache=cache)]
        parts += [mha(x[:, t:t + 1], is_causal=True, cache=cache) for t in range(3, 7)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-6)


@pytest.mark.parametrize("pos", POSITIONS)
def test_chunks_of_several_tokens_match_a_full_forward(pos):
    # Speculative decoding (utils.speculative) feeds several proposed tokens at once on top of
    # a cache: the causal mask must then be aligned bottom-right, for every positional scheme.
    model = make_model(pos, n_kv_head=2)
    idx = torch.randint(0, 23, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config.n_layer)
        pieces, start = [], 0
        for size in (3, 4, 1, 5, 2, 1):
            pieces.append(model(idx[:, start:start + size], kv_cache=cache)[0])
            start += size
    assert start == 16 and cache.seq_len == 16
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_llama_layout_with_multi_query_attention_caches_exactly():
    # RoPE + RMSNorm + SwiGLU, no biases, one key/value head shared by all four query heads
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32,
                       n_kv_head=1, pos="rope", norm="rms", mlp="swiglu", bias=False,
                       tie_weights=False)
    model = GPT(config).eval()
    idx = torch.randint(0, 23, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config.n_layer)
        pieces = [model(idx[:, :4], kv_cache=cache)[0]]
        pieces += [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(4, 10)]
    assert cache.keys[0].shape == (2, 1, 10, 8)           # one kv head
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    prompt = idx[:, :3]
    assert torch.equal(generate(model, prompt, 20, temperature=0, use_cache=True),
                       generate(model, prompt, 20, temperature=0, use_cache=False))
