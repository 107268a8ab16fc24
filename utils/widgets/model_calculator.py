"""Where the weights live (chapter 05): a parameter, FLOP and memory calculator.

Pick a real model from the presets or move the sliders. The left panel splits the parameters
into embeddings, attention, feed-forward and the rest; the right panel shows the memory of the
weights at three precisions and of one AdamW training step. All counts come from
`utils.model.parameter_breakdown`, which the tests check against the real `GPT` module.
"""

from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.model import GPTConfig, estimate_flops_per_token, parameter_breakdown
from utils.widgets.display import (
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

D_MODEL_STEP, D_MODEL_MAX = 64, 16384     # widths are multiples of 64 (every preset is)


@dataclass(frozen=True)
class Spec:
    """The numbers that decide a decoder's size. `ffn_hidden` is the feed-forward width
    (None: the usual rule, 4x for GELU, about 8/3x for SwiGLU); `experts`/`top_k` describe a
    mixture of experts (each token uses top_k of the experts' feed-forward layers)."""

    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int
    vocab: int
    context: int
    ffn: str = "gelu"
    ffn_hidden: int | None = None
    tied: bool = True
    experts: int = 1
    top_k: int = 1
    note: str = ""

    @property
    def gpt2_family(self) -> bool:
        return self.ffn == "gelu"

    def config(self) -> GPTConfig:
        """The GPTConfig of one dense decoder of this shape (GPT-2's layout for GELU, Llama's
        for SwiGLU)."""
        gpt2 = self.gpt2_family
        return GPTConfig(vocab_size=self.vocab, block_size=self.context, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.d_model, n_kv_head=self.n_kv_head,
                         bias=gpt2, pos="learned" if gpt2 else "rope",
                         norm="layer" if gpt2 else "rms", mlp=self.ffn,
                         ffn_hidden=self.ffn_hidden, tie_weights=self.tied)


# Published configurations (the models' config.json files). Parameter counts are ours; the
# notes say where a model differs from what the calculator assumes.
PRESETS: dict[str, Spec] = {
    "GPT-2 small": Spec(768, 12, 12, 12, 50257, 1024),
    "GPT-2 medium": Spec(1024, 24, 16, 16, 50257, 1024),
    "GPT-2 large": Spec(1280, 36, 20, 20, 50257, 1024),
    "GPT-2 XL (the '1.5B' GPT-2)": Spec(1600, 48, 25, 25, 50257, 1024),
    "BERT-large (encoder)": Spec(1024, 24, 16, 16, 30522, 512, note=(
        "an encoder: the same block without the causal mask. Its published 340M also counts "
        "segment embeddings, a pooler and the masked-LM head's extra layer")),
    "TinyLlama-1.1B": Spec(2048, 22, 32, 4, 32000, 2048, "swiglu", 5632, tied=False),
    "Llama-2-7B": Spec(4096, 32, 32, 32, 32000, 4096, "swiglu", 11008, tied=False),
    "Llama-3-8B": Spec(4096, 32, 32, 8, 128256, 8192, "swiglu", 14336, tied=False),
    "Llama-3.1-405B": Spec(16384, 126, 128, 8, 128256, 131072, "swiglu", 53248, tied=False),
    "Mistral Large 2 (123B)": Spec(12288, 88, 96, 8, 32768, 131072, "swiglu", 28672,
                                   tied=False),
    "Mixtral 8x22B": Spec(6144, 56, 48, 8, 32768, 65536, "swiglu", 16384, tied=False,
                          experts=8, top_k=2, note=(
                              "8 experts, 2 used per token. '8x22B' is not 176B: the "
                              "experts share attention and embeddings")),
    "Qwen2.5-72B": Spec(8192, 80, 64, 8, 152064, 131072, "swiglu", 29568, tied=False,
                        note="Qwen also has biases on Q, K and V (0.8M, left out here)"),
}


def model_cost(spec: Spec) -> dict[str, float]:
    """Parameters (total and used per token), the feed-forward width, forward FLOPs per token
    and memory in bytes."""
    config = spec.config()
    parts = parameter_breakdown(config)
    router = spec.n_layer * spec.d_model * spec.experts if spec.experts > 1 else 0
    ffn_total = parts["ffn"] * spec.experts + router
    other = parts["norms"] + parts["lm_head"]
    total = parts["embedding"] + parts["attention"] + ffn_total + other
    active = total - parts["ffn"] * (spec.experts - spec.top_k)
    # FLOPs: the active feed-forward only; attention over the full context
    flops = estimate_flops_per_token(config) + 2 * parts["ffn"] * (spec.top_k - 1) + 2 * router
    # Training memory: fp32 weights + fp32 gradients + AdamW's two fp32 moments = 16 B/param,
    # plus activations for one sequence at full context in bf16 without recomputation (rough:
    # ~34 bytes per token, layer and model dimension, with a fused attention kernel).
    activations = 34 * spec.context * spec.d_model * spec.n_layer
    return {"embedding": parts["embedding"], "attention": parts["attention"],
            "ffn_width": config.ffn_width, "ffn": ffn_total, "other": other, "total": total, "active": active,
            "flops": flops, "weights_fp32": 4 * total, "weights_bf16": 2 * total,
            "weights_int8": total, "train_states": 16 * total, "activations": activations}


def _human(n: float, unit: str = "", billions: str = "G") -> str:
    """1.23e9 -> '1.23 GB' for bytes and FLOPs; counts of parameters use billions="B"."""
    for size, suffix in ((1e12, "T"), (1e9, billions), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}"


def _count(n: float) -> str:
    return _human(n, billions="B").replace(" ", "")


def _bytes(n: float) -> str:
    """Memory in binary units, like the chart's axis: 2**30 bytes = 1 GiB."""
    for size, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def valid_widths(n_head: int) -> list[int]:
    """The d_model values the slider offers for `n_head` heads: multiples of 64 that split
    into `n_head` equal heads.

    >>> valid_widths(12)[:3]
    [192, 384, 576]
    """
    return [d for d in range(D_MODEL_STEP, D_MODEL_MAX + 1, D_MODEL_STEP) if d % n_head == 0]


def valid_kv_heads(n_head: int) -> list[int]:
    """Key/value head counts that `n_head` query heads can share evenly (its divisors)."""
    return [k for k in range(1, n_head + 1) if n_head % k == 0]


def _nearest(options: list[int], value: int) -> int:
    return min(options, key=lambda option: (abs(option - value), option))


def cost_figure(spec: Spec, cost: dict[str, float]) -> plt.Figure:
    """Left: the parameters by kind; right: memory in GiB at three precisions and for training."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4),
                                      gridspec_kw={"width_ratios": [1.1, 1]})
    parts = [("embeddings", cost["embedding"], "tab:green"),
             ("attention", cost["attention"], "tab:blue"),
             ("feed-forward", cost["ffn"], "tab:orange"),
             ("norms + untied output layer", cost["other"], "tab:gray")]
    # billions once the model has a billion parameters: no axis reading "140000 millions"
    scale, unit = (1e9, "billions") if cost["total"] >= 1e9 else (1e6, "millions")
    start = 0.0
    for name, value, colour in parts:
        left.barh([0], [value / scale], left=start / scale, color=colour,
                  label=f"{name}: {_count(value)} ({value / cost['total']:.0%})")
        start += value
    left.set_yticks([])
    left.set_xlabel(f"parameters ({unit})")
    left.set_title(f"{_count(cost['total'])} parameters", fontsize=10)
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    labels = ["weights\nfp32", "weights\nbf16", "weights\nint8", "training step\n(AdamW)"]
    gib = [cost[k] / 2**30 for k in ("weights_fp32", "weights_bf16", "weights_int8")]
    right.bar(labels[:3], gib, color="tab:purple")
    right.bar(labels[3], cost["train_states"] / 2**30, color="tab:red",
              label="weights + gradients + 2 Adam moments (fp32)")
    right.bar(labels[3], cost["activations"] / 2**30, bottom=cost["train_states"] / 2**30,
              color="salmon", label=f"activations, 1 sequence of {spec.context:,} tokens")
    right.set_ylabel("memory (GiB)")
    right.set_title("memory", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def describe(spec: Spec, cost: dict[str, float]) -> str:
    """The message under the picture: parameters, FLOPs per token, memory (in GiB, as drawn)."""
    moe = (f" — {_count(cost['active'])} of them used per token ({spec.top_k} of "
           f"{spec.experts} experts)" if spec.experts > 1 else "")
    attention = 4 * spec.n_layer * spec.context * spec.d_model
    text = (f"{_count(cost['total'])} parameters{moe}; feed-forward layers "
            f"{cost['ffn_width']:,} wide. Forward pass: {_human(cost['flops'])}"
            f"FLOP per token at context {spec.context:,}: 2 per weight used "
            f"({_human(cost['flops'] - attention)}FLOP) plus {_human(attention)}FLOP for "
            f"attending over the context; training ≈ 3× that. Weights: "
            f"{_bytes(cost['weights_bf16'])} in bf16; a training step with AdamW needs "
            f"≈ {_bytes(cost['train_states'] + cost['activations'])}.")
    if spec.note:
        text += f" Note: {spec.note}."
    return text


def draw(spec: Spec) -> tuple[bytes, str]:
    """The picture (PNG) and the message (HTML) for one configuration."""
    cost = model_cost(spec)
    return figure_to_png(cost_figure(spec, cost)), message_html(describe(spec, cost))


def model_calculator(preset: str = "GPT-2 small") -> widgets.VBox:
    """Build the calculator.

    Controls (`w.controls[...]`): "preset" (Dropdown), "n_layer", "n_head", "vocab",
    "context", "experts" (IntSliders), "d_model" and "n_kv_head" (SelectionSliders that offer
    only what the head count allows: widths that split into equal heads, KV head counts that
    divide the heads), "ffn" (ToggleButtons: "gelu" or "swiglu"), "tied" (Checkbox). Outputs:
    `w.image` (PNG, at its own size) and `w.message` (HTML). Choosing a preset sets every
    control; moving a control afterwards changes only that number (the feed-forward width
    then follows the usual rule: 4× for GELU, ≈8/3× for SwiGLU). A new head count moves
    d_model or KV heads to the nearest allowed value, and the message says so.

    >>> w = model_calculator()
    >>> before = w.image.value
    >>> w.controls["n_layer"].value = 24
    >>> w.image.value != before
    True
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    slider = dict(continuous_update=False, style={"description_width": "80px"},
                  layout=widgets.Layout(width="330px"))
    controls = {
        "preset": widgets.Dropdown(options=list(PRESETS), value=preset, description="preset"),
        # d_model and KV heads offer only the values the head count allows (set below)
        "d_model": widgets.SelectionSlider(options=valid_widths(12), value=768,
                                           description="d_model", **slider),
        "n_layer": widgets.IntSlider(12, min=1, max=128, description="layers", **slider),
        "n_head": widgets.IntSlider(12, min=1, max=128, description="heads", **slider),
        "n_kv_head": widgets.SelectionSlider(options=valid_kv_heads(12), value=12,
                                             description="KV heads", **slider),
        "vocab": widgets.IntSlider(50257, min=2, max=262144, description="vocab", **slider),
        "context": widgets.IntSlider(1024, min=128, max=131072, step=128,
                                     description="context", **slider),
        "experts": widgets.IntSlider(1, min=1, max=64, description="experts", **slider),
        "ffn": widgets.ToggleButtons(options=["gelu", "swiglu"], value="gelu",
                                     description="FFN", style={"button_width": "70px"},
                                     layout=widgets.Layout(width="auto", flex="0 0 auto")),
        "tied": widgets.Checkbox(True, description="tie input/output embeddings"),
    }
    image, message = picture_image(), widgets.HTML()
    state = {"hidden": None, "top_k": 1, "note": "", "loading": False, "moved": ""}

    def follow_heads(_change=None) -> None:
        """A new head count: offer only the widths and KV heads it allows, and move a value
        that is no longer allowed to the nearest one (the message says so)."""
        n_head, loading = controls["n_head"].value, state["loading"]
        state["loading"] = True                   # one redraw, after both sliders moved
        try:
            moved = []
            for name, options in (("d_model", valid_widths(n_head)),
                                  ("n_kv_head", valid_kv_heads(n_head))):
                old = controls[name].value
                if name == "n_kv_head" and _change is not None and old == _change["old"]:
                    wanted = n_head                # it was multi-head attention: it stays so
                else:
                    wanted = old if old in options else _nearest(options, old)
                controls[name].options = options
                controls[name].value = wanted
                if old not in options:             # (keeping MHA is no move to report)
                    moved.append(f"{controls[name].description} {old} → {wanted}")
        finally:
            state["loading"] = loading
        state["moved"] = "; ".join(moved)

    @guarded(message, "this preset", picture=image)
    def load_preset(_=None) -> None:
        spec = PRESETS[controls["preset"].value]
        state.update(loading=True)
        try:
            for name in ("n_head", "d_model", "n_layer", "n_kv_head", "vocab", "context",
                         "experts"):
                controls[name].value = getattr(spec, name)
            controls["ffn"].value, controls["tied"].value = spec.ffn, spec.tied
        finally:
            state.update(loading=False, hidden=spec.ffn_hidden, top_k=spec.top_k,
                         note=spec.note, moved="")
        update()

    @guarded(message, "this configuration", picture=image)
    def update(change=None) -> None:
        if state["loading"]:
            return
        moved, state["moved"] = state["moved"], ""
        if change is not None:                       # the reader changed one number by hand
            if change["owner"] in (controls["d_model"], controls["ffn"]):
                state["hidden"] = None               # the width follows the rule again
            state["note"] = ""
        v = {name: c.value for name, c in controls.items()}
        # a mixture of experts routes each token to top_k experts (2 unless a preset says)
        top_k = min(max(state["top_k"], 2), v["experts"]) if v["experts"] > 1 else 1
        spec = Spec(v["d_model"], v["n_layer"], v["n_head"], v["n_kv_head"], v["vocab"],
                    v["context"], v["ffn"], state["hidden"], v["tied"],
                    experts=v["experts"], top_k=top_k, note=state["note"])
        image.value, text = draw(spec)
        if moved:
            text = message_html(f"{v['n_head']} heads: moved {moved} so the heads split "
                                "evenly.", "info") + text
        message.value = text

    controls["n_head"].observe(follow_heads, names="value")   # before `update` sees it
    controls["preset"].observe(load_preset, names="value")
    watch({k: c for k, c in controls.items() if k != "preset"}, update)
    load_preset()
    sliders = [controls[k] for k in ("d_model", "n_layer", "n_head", "n_kv_head", "vocab",
                                     "context", "experts")]
    rows = [widgets.HBox([controls["preset"], controls["ffn"], controls["tied"]]),
            widgets.HBox([widgets.VBox(sliders[:4]), widgets.VBox(sliders[4:])]),
            scrolling(image), message]
    return widget_box(rows, controls, image=image, message=message)
