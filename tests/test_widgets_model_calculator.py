"""The chapter 05 calculator, driven from Python: presets, sliders, bad combinations."""

import html
import math
import re
from dataclasses import replace

import pytest

from utils.model import GPT, GPTConfig, count_parameters
from utils.widgets.display import placeholder_png
from utils.widgets.model_calculator import PRESETS, Spec, cost_figure, model_calculator, model_cost


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def text(w) -> str:
    return html.unescape(re.sub("<[^>]+>", "", w.message.value))


@pytest.mark.parametrize("name, billions", [
    ("GPT-2 small", 0.1244), ("GPT-2 XL (the '1.5B' GPT-2)", 1.558), ("Llama-3-8B", 8.030),
    ("Llama-3.1-405B", 405.9), ("Mixtral 8x22B", 140.6), ("Qwen2.5-72B", 72.7),
    ("Mistral Large 2 (123B)", 122.6), ("Llama-2-7B", 6.738), ("TinyLlama-1.1B", 1.100),
])
def test_presets_give_the_published_sizes(name, billions):
    assert model_cost(PRESETS[name])["total"] / 1e9 == pytest.approx(billions, rel=2e-3)


def test_mixture_of_experts_counts_active_parameters():
    cost = model_cost(PRESETS["Mixtral 8x22B"])
    assert cost["active"] / 1e9 == pytest.approx(39.2, rel=5e-3)   # "39B active"
    dense = model_cost(PRESETS["Llama-3-8B"])
    assert dense["active"] == dense["total"]


def test_calculator_agrees_with_a_real_small_model():
    spec = Spec(64, 3, 4, 2, 100, 32, "swiglu", tied=False)
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=4, n_embd=64,
                          n_kv_head=2, bias=False, pos="rope", norm="rms", mlp="swiglu",
                          tie_weights=False))
    assert model_cost(spec)["total"] == count_parameters(model)
    gpt2ish = Spec(64, 2, 4, 4, 100, 32)
    assert model_cost(gpt2ish)["total"] == count_parameters(
        GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=4, n_embd=64)))


def test_a_preset_width_is_the_real_models_and_builds_the_same_count():
    """Llama-2-7B's 11008 is not the 8/3 rule's 10928: the spec passes it to GPTConfig."""
    assert model_cost(PRESETS["Llama-2-7B"])["total"] == 6_738_415_616   # its safetensors
    assert model_cost(PRESETS["Llama-2-7B"])["ffn_width"] == 11008
    assert model_cost(replace(PRESETS["Llama-2-7B"], ffn_hidden=None))["ffn_width"] == 10928
    odd = Spec(64, 3, 4, 2, 100, 32, "swiglu", ffn_hidden=100, tied=False)
    model = GPT(odd.config())
    assert model.blocks[0].mlp.up.weight.shape == (100, 64)
    assert model_cost(odd)["total"] == count_parameters(model)
    assert model_cost(replace(odd, ffn_hidden=None))["total"] != count_parameters(model)


def test_memory_follows_bytes_per_parameter():
    cost = model_cost(PRESETS["Llama-3-8B"])
    assert cost["weights_fp32"] == 2 * cost["weights_bf16"] == 4 * cost["weights_int8"]
    assert cost["train_states"] == 16 * cost["total"]


def test_sliders_change_picture_and_numbers():
    w = model_calculator()
    first_image, first_text = w.image.value, text(w)
    assert is_png(first_image) and "124M parameters" in first_text
    w.controls["n_layer"].value = 24
    assert w.image.value != first_image and "124M" not in text(w)
    for name, value in [("n_head", 16), ("d_model", 1024), ("n_kv_head", 4), ("vocab", 32000),
                        ("context", 4096), ("experts", 4), ("ffn", "swiglu"), ("tied", False)]:
        before_image, before_text = w.image.value, text(w)
        w.controls[name].value = value
        assert w.image.value != before_image or text(w) != before_text, name


def test_presets_set_every_control():
    w = model_calculator()
    w.controls["preset"].value = "Llama-3-8B"
    assert w.controls["n_kv_head"].value == 8 and w.controls["ffn"].value == "swiglu"
    assert "8.03B parameters" in text(w)
    w.controls["preset"].value = "Mixtral 8x22B"
    assert "141B parameters" in text(w) and "39.2B of them used per token" in text(w)
    assert "176B" in text(w)                                   # the note about "8x22B"


def test_width_follows_the_rule_after_a_manual_change():
    w = model_calculator("Llama-3-8B")
    assert "feed-forward layers 14,336 wide" in text(w)
    w.controls["n_layer"].value = 33           # the preset's FFN width (14336) is kept
    assert "8.25B" in text(w) and "14,336 wide" in text(w)
    w.controls["d_model"].value = 4096 + 64    # now SwiGLU's 8/3 rule applies again
    assert "8.25B" not in text(w) and "11,096 wide" in text(w)    # 8/3 * 4160, to 8s


@pytest.mark.parametrize("n_head", [1, 7, 12, 25, 96, 127, 128])
def test_sliders_offer_only_widths_and_kv_heads_the_heads_allow(n_head):
    """No slider position is an impossible model (12 heads: d_model steps 192, 384, ...)."""
    w = model_calculator()
    w.controls["n_head"].value = n_head
    widths, kv_heads = w.controls["d_model"].options, w.controls["n_kv_head"].options
    assert widths and all(d % n_head == 0 and d % 64 == 0 for d in widths)
    assert len(widths) == 16384 // math.lcm(64, n_head)              # every valid width offered
    assert kv_heads and all(n_head % k == 0 for k in kv_heads)
    assert w.controls["d_model"].value in widths and w.controls["n_kv_head"].value in kv_heads
    assert "Could not" not in w.message.value and w.image.value != placeholder_png()


def test_a_new_head_count_moves_d_model_and_says_so():
    w = model_calculator()                                          # 768 wide, 12 heads
    before = w.image.value
    w.controls["n_head"].value = 7                                  # 768 is not 7 heads
    assert w.controls["d_model"].value == 896 and w.controls["n_kv_head"].value == 7
    assert "d_model 768 → 896" in text(w) and "parameters" in text(w)
    assert w.image.value != before
    w.controls["n_head"].value = 14                                 # 896 = 14 x 64: stays
    assert w.controls["d_model"].value == 896 and "→" not in text(w)


def test_every_preset_is_reachable_on_the_sliders():
    w = model_calculator()
    for name, spec in PRESETS.items():
        w.controls["preset"].value = name
        assert w.controls["d_model"].value == spec.d_model, name
        assert w.controls["n_kv_head"].value == spec.n_kv_head, name


def test_axis_and_text_use_the_units_of_the_chart():
    spec = PRESETS["Mixtral 8x22B"]
    left, right = cost_figure(spec, model_cost(spec)).axes
    assert left.get_xlabel() == "parameters (billions)" and left.get_xlim()[1] < 1000
    assert right.get_ylabel() == "memory (GiB)"
    small = PRESETS["GPT-2 small"]
    assert cost_figure(small, model_cost(small)).axes[0].get_xlabel() == "parameters (millions)"
    w = model_calculator("Llama-3-8B")
    weights_gib = model_cost(PRESETS["Llama-3-8B"])["weights_bf16"] / 2**30      # 14.96
    assert f"Weights: {weights_gib:.3g} GiB in bf16" in text(w)
    assert not re.search(r"\d [MGT]B\b", text(w))                     # no MB / GB next to GiB


def test_picture_is_shown_at_its_own_size():
    w = model_calculator()
    assert w.image.layout.max_width == "none" and w.image.layout.align_self == "flex-start"
    assert w.image.layout.width is None                             # no width: 100%


def test_extreme_sliders_stay_usable():
    w = model_calculator()
    for name in ("d_model", "n_layer", "vocab", "context", "experts"):
        control = w.controls[name]
        ends = (control.options[0], control.options[-1]) if hasattr(control, "options") \
            else (control.min, control.max)
        for value in ends:
            control.value = value
            assert "Could not show" not in w.message.value, (name, value)
    w.controls["n_head"].value = 1
    w.controls["n_kv_head"].value = 1
    assert "parameters" in text(w)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset"):
        model_calculator("GPT-5")
