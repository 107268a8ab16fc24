"""The KV-cache memory calculator (chapter 09).

Pick a real model (or "custom"), a context length, a batch size and a storage type: the
widget shows the cache's size in GiB, the bytes each token adds, and bars that compare the
cache with the model's weights and with what the same model would need with one K/V head per
query head (MHA). All numbers come from `utils.kv_memory`.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.kv_memory import BYTES_PER_VALUE, GIB, MODELS, AttentionSpec, shipped_spec
from utils.widgets.display import (
    CannotShow,
    figure_to_png,
    guarded,
    message_html,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

CUSTOM = "custom"
CONTEXTS = [2**k for k in range(7, 18)]           # 128 ... 131,072 tokens
FIELDS = ("n_layer", "n_head", "n_kv_head", "d_head", "latent")
LIMITS = {"n_layer": 1000, "n_head": 1024, "n_kv_head": 1024, "d_head": 4096, "latent": 65536}


def _tokens_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else str(n)


def _size(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.3g} {unit}" if n_bytes < 1000 * size else \
                f"{n_bytes / size:,.0f} {unit}"
    return f"{n_bytes:,.0f} B"


def _share(ratio: float) -> str:
    """A ratio as a percentage with two significant digits: 0.0061%, never 0.0%.

    >>> _share(0.000061), _share(0.25), _share(3.0)
    ('0.0061%', '25%', '3×')
    """
    if ratio >= 1:
        return f"{ratio:,.3g}×"
    return f"{100 * ratio:.2g}%"


def gqa_default(n_head: int) -> int:
    """K/V heads for a grouped-query default: a divisor of n_head strictly between 1 and
    n_head, as near n_head / 4 as possible (1 when there is none, e.g. a prime head count).

    >>> gqa_default(128), gqa_default(12), gqa_default(7)
    (32, 3, 1)
    """
    groups = [k for k in range(2, n_head) if n_head % k == 0]
    return min(groups, key=lambda k: (abs(k - n_head / 4), k)) if groups else 1


def _nearest_context(tokens: int) -> int:
    """The largest slider step not above `tokens` (the smallest step if all are)."""
    fitting = [c for c in CONTEXTS if c <= tokens]
    return fitting[-1] if fitting else CONTEXTS[0]


def draw(spec: AttentionSpec, tokens: int, batch: int, dtype: str) -> bytes:
    """Horizontal bars in GiB: the cache, its MHA baseline, and the weights when known."""
    size = BYTES_PER_VALUE[dtype]
    cache = spec.cache_bytes(tokens, batch, size) / GIB
    bars = [(f"KV cache ({spec.attention})", cache, "tab:blue")]
    if spec.attention != "MHA" or spec.window is not None:
        bars.append(("same model with MHA\n(one K/V head per query head)",
                     spec.mha_cache_bytes(tokens, batch, size) / GIB, "tab:gray"))
    weights = spec.weights_bytes(size)
    if weights is not None:
        bars.append((f"weights ({dtype})", weights / GIB, "tab:purple"))
    fig, ax = plt.subplots(figsize=(8, 0.7 + 0.6 * len(bars)))
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(labels, values, color=[b[2] for b in bars][::-1])
    top = max(values) or 1.0
    for y, value in enumerate(values):
        ax.text(value + 0.01 * top, y, _size(value * GIB), va="center", fontsize=9)
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("memory (GiB)")
    ax.set_title(f"{spec.name}: {tokens:,} tokens × batch {batch}, {dtype}", fontsize=10)
    fig.tight_layout()
    return figure_to_png(fig)


def describe(spec: AttentionSpec, tokens: int, batch: int, dtype: str) -> str:
    size = BYTES_PER_VALUE[dtype]
    per_token = spec.cache_bytes(1, 1, size)
    cache = spec.cache_bytes(tokens, batch, size)
    if spec.attention == "MLA":
        rope = f" + {spec.rope_dim} rotary-key" if spec.rope_dim else ""
        how = f"{spec.kv_lora_rank} latent{rope} values × {spec.n_layer} layers × {size:g} B"
    else:
        how = f"2 × {spec.n_layer} layers × {spec.n_kv_head} K/V heads × {spec.d_head} × {size:g} B"
    text = (f"{spec.attention}: each token adds {per_token:,.0f} B ({how}). "
            f"{tokens:,} tokens × batch {batch}: {_size(cache)}.")
    mha = spec.mha_cache_bytes(tokens, batch, size)
    if mha != cache and cache:
        text += f" With MHA it would be {_size(mha)}, {mha / cache:.3g}× more."
    if spec.window is not None and tokens > spec.window:
        text += f" The {spec.window:,}-token sliding window caps the cache."
    weights = spec.weights_bytes(size)
    if weights is not None:
        share = _share(cache / weights)
        share += " of that" if cache < weights else " that"
        text += f" Weights: {_size(weights)}; the cache is {share}."
    return text


def kv_memory_calculator(model: str = "Llama 3.1 8B", specs: list[AttentionSpec] | None = None):
    """Build the calculator.

    Controls (`w.controls[...]`): "model" (Dropdown: the models of `specs`, default our
    shipped model and every `utils.kv_memory.MODELS` entry, then "custom"), "context"
    (SelectionSlider, 128 ... 131,072 tokens), "batch" (IntSlider), "dtype" (ToggleButtons:
    fp32/bf16/fp16/fp8/int8), "variant" (ToggleButtons: MHA/GQA/MQA/MLA) and the numbers
    "n_layer", "n_head", "n_kv_head", "d_head", "latent" (IntText; editable for "custom").
    Outputs: `w.image` (PNG of the bars, at its own size) and `w.message` (HTML with the
    numbers). Choosing a model copies its numbers into the fields and moves the slider to its
    context; choosing GQA for a custom model whose K/V heads equal its heads sets a real
    group count; a custom configuration that cannot exist (K/V heads that do not divide the
    heads, a zero, "GQA" with as many K/V heads as heads) shows a message instead of bars.

    >>> w = kv_memory_calculator()
    >>> before = w.image.value
    >>> w.controls["batch"].value = 8
    >>> w.image.value != before
    True
    """
    specs = [shipped_spec(), *MODELS.values()] if specs is None else list(specs)
    by_name = {spec.name: spec for spec in specs}
    if model not in by_name and model != CUSTOM:
        raise ValueError(f"model must be one of {list(by_name) + [CUSTOM]}, got {model!r}")
    style = {"description_width": "70px"}
    field_style = {"description_width": "80px"}
    controls = {
        "model": widgets.Dropdown(options=[*by_name, CUSTOM], value=model, description="model",
                                  style=style),
        "context": widgets.SelectionSlider(
            options=[(_tokens_label(c), c) for c in CONTEXTS], value=CONTEXTS[-1],
            description="context", continuous_update=False, style=style,
            layout=widgets.Layout(width="420px")),
        "batch": widgets.IntSlider(1, min=1, max=64, description="batch",
                                   continuous_update=False, style=style),
        "dtype": widgets.ToggleButtons(options=list(BYTES_PER_VALUE), value="bf16",
                                       description="dtype", style={"button_width": "56px"}),
        # wide enough for the label in any font (50 px clipped "MQA" to "M…")
        "variant": widgets.ToggleButtons(options=["MHA", "GQA", "MQA", "MLA"], value="GQA",
                                         description="attention",
                                         style={"button_width": "64px"}),
        "n_layer": widgets.IntText(32, description="layers", style=field_style),
        "n_head": widgets.IntText(32, description="heads", style=field_style),
        "n_kv_head": widgets.IntText(8, description="K/V heads", style=field_style),
        "d_head": widgets.IntText(128, description="d_head", style=field_style),
        "latent": widgets.IntText(576, description="MLA latent", style=field_style),
    }
    for name in FIELDS:       # room for "MLA latent" and a 5-digit number (170 px clipped it)
        controls[name].layout = widgets.Layout(width="190px", flex="0 0 auto")
    image, message = picture_image(), widgets.HTML()
    state = {"syncing": False}

    def custom_spec() -> AttentionSpec:
        values = {name: controls[name].value for name in FIELDS}
        for name, value in values.items():
            if not 1 <= value <= LIMITS[name]:
                raise ValueError(f"{controls[name].description} must be between 1 and "
                                 f"{LIMITS[name]:,}, got {value}")
        variant = controls["variant"].value
        kv = {"MHA": values["n_head"], "MQA": 1}.get(variant, values["n_kv_head"])
        if variant == "GQA" and kv in (1, values["n_head"]):
            same = "MQA" if kv == 1 else "MHA"
            raise ValueError(f"GQA needs more than 1 and fewer K/V heads than the "
                             f"{values['n_head']} heads: {kv} K/V heads is {same}")
        if variant == "MLA":   # the latent holds everything cached, rotary part included
            return AttentionSpec(CUSTOM, values["n_layer"], values["n_head"], values["n_head"],
                                 values["d_head"], CONTEXTS[-1], kv_lora_rank=values["latent"])
        return AttentionSpec(CUSTOM, values["n_layer"], values["n_head"], kv, values["d_head"],
                             CONTEXTS[-1])

    def set_enabled() -> None:
        custom = controls["model"].value == CUSTOM
        variant = controls["variant"].value
        controls["variant"].disabled = not custom
        for name in ("n_layer", "n_head", "d_head"):
            controls[name].disabled = not custom
        controls["n_kv_head"].disabled = not (custom and variant == "GQA")
        controls["latent"].disabled = not (custom and variant == "MLA")

    def follow_variant(_change=None) -> None:
        """Custom GQA starts from real groups: K/V heads copied from an MHA or MLA model
        (as many as heads) would otherwise make the "GQA" toggle draw an MHA cache."""
        if state["syncing"] or controls["model"].value != CUSTOM:
            return
        n_head, kv = controls["n_head"].value, controls["n_kv_head"].value
        if controls["variant"].value == "GQA" and 1 <= n_head <= LIMITS["n_head"] and \
                (kv in (1, n_head) or not 1 <= kv <= n_head or n_head % kv):
            controls["n_kv_head"].value = gqa_default(n_head)

    @guarded(message, "this model", picture=image)
    def choose_model(_change=None) -> None:
        name = controls["model"].value
        state["syncing"] = True
        try:
            if name != CUSTOM:
                spec = by_name[name]
                controls["variant"].value = spec.attention
                for field, value in (("n_layer", spec.n_layer), ("n_head", spec.n_head),
                                     ("n_kv_head", spec.n_kv_head), ("d_head", spec.d_head),
                                     ("latent", (spec.kv_lora_rank or 0) + spec.rope_dim
                                      if spec.kv_lora_rank else controls["latent"].value)):
                    controls[field].value = value
                controls["context"].value = _nearest_context(spec.context)
            set_enabled()
        finally:
            state["syncing"] = False
        update()

    @guarded(message, "the KV-cache size", picture=image)
    def update(_change=None) -> None:
        if state["syncing"]:
            return
        set_enabled()
        name = controls["model"].value
        if name == CUSTOM:
            try:
                spec = custom_spec()
            except ValueError as error:
                raise CannotShow(f"{error}. Change the numbers above.") from error
        else:
            spec = by_name[name]
        tokens, batch = controls["context"].value, controls["batch"].value
        dtype = controls["dtype"].value
        image.value = draw(spec, tokens, batch, dtype)
        text = describe(spec, tokens, batch, dtype)
        if name != CUSTOM and tokens > spec.context:
            text += (f" Careful: {spec.name} is published for {spec.context:,} tokens, so a "
                     "longer cache is hypothetical.")
        if spec.note:
            text += f" Note: {spec.note}."
        message.value = message_html(text)

    controls["variant"].observe(follow_variant, names="value")   # before `update` sees it
    controls["model"].observe(choose_model, names="value")
    watch({k: c for k, c in controls.items() if k != "model"}, update)
    choose_model()
    rows = [widgets.HBox([controls["model"], controls["dtype"]]),
            widgets.HBox([controls["context"], controls["batch"]]),
            controls["variant"],
            widgets.HBox([controls[name] for name in FIELDS]),
            scrolling(image), message]
    return widget_box(rows, controls, image=image, message=message)
