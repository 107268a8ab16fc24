"""The KV-cache memory calculator, checked against sizes worked out by hand and against the
bytes a real `KVCache` holds."""

import pytest
import torch

from utils.attention import KVCache
from utils.kv_memory import (
    GIB,
    MODELS,
    AttentionSpec,
    format_table,
    kv_cache_bytes,
    kv_cache_table,
    mla_cache_bytes,
    shipped_spec,
    shrink_factor,
)


def test_hand_computed_sizes():
    # Llama 3 8B at 8,192 tokens in fp16: 2 x 32 x 8 x 128 x 8192 x 2 B = 2**30 B
    assert kv_cache_bytes(32, 8, 128, 8192, batch=1, bytes_per_value=2) == GIB
    # GPT-2 small, one token, fp32: 2 x 12 x 12 x 64 x 4 = 73,728 B
    assert kv_cache_bytes(12, 12, 64, 1, bytes_per_value=4) == 73_728
    # batch and dtype scale linearly; dtype names work too
    assert kv_cache_bytes(2, 3, 4, 5, batch=6, bytes_per_value="int8") == 2 * 2 * 3 * 4 * 5 * 6
    assert kv_cache_bytes(2, 3, 4, 5, bytes_per_value=0.5) == 2 * 3 * 4 * 5
    assert kv_cache_bytes(4, 4, 4, 0) == 0
    # DeepSeek-V3's MLA: (512 + 64) values x 61 layers x 2 bytes per token
    assert mla_cache_bytes(61, 512, 64, 1) == 576 * 61 * 2
    assert mla_cache_bytes(61, 512, 64, 131072) / GIB == pytest.approx(8.578125)


def test_the_formula_matches_a_real_cache():
    n_layer, B, h_kv, T, d = 3, 2, 2, 7, 8
    cache = KVCache(n_layer)
    for layer in range(n_layer):
        cache.update(layer, torch.zeros(B, h_kv, T, d), torch.zeros(B, h_kv, T, d))
    assert cache.num_bytes() == kv_cache_bytes(n_layer, h_kv, d, T, B, bytes_per_value=4)


def test_model_table_values():
    llama_405b = MODELS["Llama 3.1 405B"]
    assert llama_405b.attention == "GQA"
    assert llama_405b.cache_bytes() == 2 * 126 * 8 * 128 * 131072 * 2
    assert MODELS["Llama 3.1 70B"].cache_bytes() / GIB == 40
    assert MODELS["Llama 3 8B"].context == 8192 and MODELS["Llama 3.1 8B"].context == 131072
    assert MODELS["GPT-2 small"].attention == "MHA"
    # a sliding window caps the cache: Mistral 7B v0.1 never holds more than 4,096 tokens
    mistral = MODELS["Mistral 7B v0.1"]
    assert mistral.cache_bytes(32768) == mistral.cache_bytes(4096) == kv_cache_bytes(
        32, 8, 128, 4096)
    assert mistral.cache_bytes(100) == kv_cache_bytes(32, 8, 128, 100)
    deepseek = MODELS["DeepSeek-V3"]
    assert deepseek.attention == "MLA"
    assert deepseek.cache_bytes(10) == mla_cache_bytes(61, 512, 64, 10)
    assert deepseek.mha_cache_bytes(10) / deepseek.cache_bytes(10) == pytest.approx(
        2 * 128 * 128 / 576)
    for spec in MODELS.values():
        assert spec.source.startswith("config.json of "), spec.name
        assert spec.params and spec.weights_bytes(2) == 2 * spec.params


def test_shrink_factor_and_variants():
    assert shrink_factor(64, 8) == 8 and shrink_factor(32, 32) == 1 and shrink_factor(12, 1) == 12
    llama = MODELS["Llama 3.1 70B"]
    assert llama.mha_cache_bytes() / llama.cache_bytes() == shrink_factor(64, 8)
    mqa = AttentionSpec("mqa", 4, 8, 1, 16, 128)
    assert mqa.attention == "MQA" and mqa.mha_cache_bytes() == 8 * mqa.cache_bytes()


def test_table_rows_and_text():
    rows = kv_cache_table(seq_len=1024, batch=2, bytes_per_value="fp32")
    assert [r["model"] for r in rows] == list(MODELS)
    gpt2 = rows[0]
    assert gpt2["tokens"] == 1024 and gpt2["bytes/token"] == 2 * 12 * 12 * 64 * 4
    assert gpt2["cache GiB"] == pytest.approx(2 * 12 * 12 * 64 * 1024 * 2 * 4 / GIB)
    default = {r["model"]: r for r in kv_cache_table()}
    assert default["Qwen 2.5 72B"]["tokens"] == 131072
    assert default["Llama 3 8B"]["cache GiB"] == 1
    text = format_table(kv_cache_table())
    assert "DeepSeek-V3" in text and "MLA" in text and len(text.splitlines()) == len(MODELS) + 2


def test_shipped_model_spec_reads_its_config():
    from utils.pretrained import load_pretrained

    spec = shipped_spec()
    model, _ = load_pretrained("shakespeare-char")
    cfg = model.config
    assert (spec.n_layer, spec.n_head, spec.d_head, spec.context) == (
        cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size)
    assert spec.params == model.get_num_params()
    # the formula agrees with the cache the model fills during a real forward pass
    cache = KVCache(cfg.n_layer)
    with torch.no_grad():
        model(torch.zeros(1, 10, dtype=torch.long), kv_cache=cache)
    assert cache.num_bytes() == spec.cache_bytes(10, bytes_per_value=4)


@pytest.mark.parametrize("call, words", [
    (lambda: kv_cache_bytes(0, 8, 128, 10), "n_layer"),
    (lambda: kv_cache_bytes(2, 8.0, 128, 10), "n_kv_head"),
    (lambda: kv_cache_bytes(2, 8, 128, -1), "seq_len"),
    (lambda: kv_cache_bytes(2, 8, 128, 10, batch=True), "batch"),
    (lambda: kv_cache_bytes(2, 8, 128, 10, bytes_per_value=0), "bytes_per_value"),
    (lambda: kv_cache_bytes(2, 8, 128, 10, bytes_per_value="fp64"), "unknown dtype"),
    (lambda: shrink_factor(32, 5), "must divide"),
    (lambda: AttentionSpec("bad", 2, 6, 4, 16, 128), "must divide"),
    (lambda: AttentionSpec("bad", 2, 4, 4, 16, 128, window=0), "window"),
    (lambda: mla_cache_bytes(2, 0, 64, 3), "kv_lora_rank"),
])
def test_clear_errors(call, words):
    with pytest.raises(ValueError, match=words):
        call()
