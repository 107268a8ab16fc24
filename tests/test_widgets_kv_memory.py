"""The chapter 09 KV-cache memory calculator, driven from Python."""

import re

import pytest

from utils.kv_memory import GIB, MODELS, kv_cache_bytes
from utils.widgets.display import placeholder_png
from utils.widgets.kv_memory import CUSTOM, kv_memory_calculator


@pytest.fixture(scope="module")
def calc():
    return kv_memory_calculator()


def per_token(message: str) -> int:
    return int(re.search(r"each token adds ([\d,]+) B", message).group(1).replace(",", ""))


def test_default_shows_llama_numbers(calc):
    text = calc.message.value
    assert "Could not" not in text and calc.image.value
    assert calc.controls["model"].value == "Llama 3.1 8B"
    assert calc.controls["context"].value == 131072
    assert per_token(text) == kv_cache_bytes(32, 8, 128, 1)              # 131,072 B in bf16
    assert "16 GiB" in text and "4× more" in text
    assert calc.controls["n_kv_head"].disabled                           # a preset is fixed


def test_controls_change_the_numbers_and_the_picture(calc):
    calc.controls["model"].value = "Llama 3.1 8B"
    for name, value, expect in [("batch", 4, "batch 4: 64 GiB"),
                                ("context", 8192, "8,192 tokens × batch 4: 4 GiB"),
                                ("dtype", "fp32", "8 GiB"),
                                ("dtype", "int8", "2 GiB")]:
        before = calc.image.value
        calc.controls[name].value = value
        assert calc.image.value != before, name
        assert expect in calc.message.value, (name, calc.message.value)
    assert per_token(calc.message.value) == kv_cache_bytes(32, 8, 128, 1, bytes_per_value=1)
    calc.controls["dtype"].value = "bf16"
    calc.controls["batch"].value = 1


def test_choosing_a_model_copies_its_numbers_and_context(calc):
    calc.controls["model"].value = "Llama 3 8B"
    assert calc.controls["context"].value == 8192 and "1 GiB" in calc.message.value
    calc.controls["model"].value = "DeepSeek-V3"
    assert calc.controls["variant"].value == "MLA" and calc.controls["latent"].value == 576
    assert per_token(calc.message.value) == 576 * 61 * 2
    calc.controls["model"].value = "GPT-2 small"
    assert calc.controls["context"].value == 1024
    assert (calc.controls["n_layer"].value, calc.controls["n_kv_head"].value) == (12, 12)
    calc.controls["context"].value = 4096
    assert "hypothetical" in calc.message.value
    calc.controls["model"].value = "Mistral 7B v0.1"
    assert "sliding window caps" in calc.message.value
    assert MODELS["Mistral 7B v0.1"].cache_bytes() / GIB == 0.5 and "512 MiB" in calc.message.value


def test_custom_variants_and_bad_input(calc):
    calc.controls["model"].value = "Llama 3.1 70B"
    calc.controls["model"].value = CUSTOM
    assert not calc.controls["n_layer"].disabled                         # starts from the 70B
    calc.controls["variant"].value = "MHA"
    mha = per_token(calc.message.value)
    assert mha == kv_cache_bytes(80, 64, 128, 1)
    calc.controls["variant"].value = "MQA"
    assert per_token(calc.message.value) * 64 == mha
    calc.controls["variant"].value = "GQA"
    calc.controls["n_kv_head"].value = 8
    assert per_token(calc.message.value) * 8 == mha
    for field, value, words in [("n_kv_head", 5, "must divide"), ("n_head", 0, "between 1"),
                                ("d_head", -3, "between 1"), ("n_layer", 10**9, "between 1")]:
        good = calc.controls[field].value
        calc.controls[field].value = value
        assert words in calc.message.value and "Could not" not in calc.message.value, field
        calc.controls[field].value = good
        assert "each token adds" in calc.message.value
    calc.controls["variant"].value = "MLA"
    calc.controls["latent"].value = 512
    assert per_token(calc.message.value) == 512 * 80 * 2


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="model must be one of"):
        kv_memory_calculator(model="GPT-5")


def test_bad_custom_numbers_clear_the_picture():
    w = kv_memory_calculator()
    w.controls["model"].value = CUSTOM
    w.controls["n_head"].value = 0
    assert "between 1" in w.message.value and w.image.value == placeholder_png()
    w.controls["n_head"].value = 32
    assert w.image.value != placeholder_png() and "each token adds" in w.message.value


def test_gqa_after_deepseek_then_custom_is_really_grouped():
    w = kv_memory_calculator()
    w.controls["model"].value = "DeepSeek-V3"                       # MLA, 128 heads
    w.controls["model"].value = CUSTOM
    w.controls["variant"].value = "GQA"
    kv = w.controls["n_kv_head"].value
    assert 1 < kv < w.controls["n_head"].value and w.controls["n_head"].value % kv == 0
    assert re.sub("<[^>]+>", "", w.message.value).startswith("GQA: each token adds")
    w.controls["n_kv_head"].value = w.controls["n_head"].value     # typed by hand: MHA really
    assert "is MHA" in w.message.value and w.image.value == placeholder_png()


def test_small_shares_keep_two_significant_digits():
    w = kv_memory_calculator("Llama 3.1 405B")                     # 33 MB of cache vs 405 GB
    w.controls["context"].value = 128
    w.controls["dtype"].value = "fp8"
    share = re.search(r"the cache is ([\d.]+)% of that", w.message.value).group(1)
    assert float(share) > 0 and share != "0.0"


def test_labels_fit_and_picture_is_at_its_own_size():
    w = kv_memory_calculator()
    assert int(w.controls["variant"].style.button_width.rstrip("px")) >= 60
    assert w.image.layout.max_width == "none" and w.image.layout.width is None
