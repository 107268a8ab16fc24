"""Heads vs width (chapter 04): what splitting attention into heads costs.

Choose d_model, the number of heads, the number of key/value heads and the sequence length.
The left panel shows parameters and FLOPs for every possible head count at this width (they
do not change); the right panel the KV cache per sequence for every possible n_kv_heads,
which is what grouped-query attention shrinks.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt

from utils.attention import attention_cost
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

D_MODELS = [64, 128, 256, 512, 768, 1024, 2048, 4096]
SEQ_LENS = [2**i for i in range(4, 16)]  # 16 ... 32768
BYTES = 2  # fp16/bf16, as in inference


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _human(n: float, unit: str = "") -> str:
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}"


def draw(d_model: int, n_heads: int, n_kv: int, T: int) -> tuple[bytes, str]:
    heads = [h for h in _divisors(d_model) if h <= 64]
    costs = [attention_cost(d_model, h, T) for h in heads]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = range(len(heads))
    proj = [c["proj_flops"] for c in costs]
    attn = [c["attn_flops"] for c in costs]
    left.bar(x, proj, label="Q, K, V and W_O projections", color="tab:blue")
    left.bar(x, attn, bottom=proj, label="QKᵀ and weights·V", color="tab:orange")
    left.set_xticks(list(x), [str(h) for h in heads])
    left.get_xticklabels()[heads.index(n_heads)].set_color("red")
    left.set_xlabel(f"number of heads (width d/h), d_model = {d_model}")
    left.set_ylabel(f"forward FLOPs for T = {T}")
    left.set_title(f"{_human(costs[0]['params'])} parameters and the same FLOPs for any head "
                   "count", fontsize=10)
    left.legend(fontsize=8, loc="lower right")
    kvs = _divisors(n_heads)
    kv_bytes = [attention_cost(d_model, n_heads, T, kv)["kv_cache_floats"] * BYTES for kv in kvs]
    right.bar(range(len(kvs)), [b / 2**20 for b in kv_bytes],
              color=["tab:red" if kv == n_kv else "tab:gray" for kv in kvs])
    right.set_xticks(range(len(kvs)), [f"{kv}" + (" (MQA)" if kv == 1 else " (MHA)"
                                                  if kv == n_heads else "") for kv in kvs],
                     fontsize=8)
    right.set_xlabel(f"key/value heads (n_heads = {n_heads})")
    right.set_ylabel("KV cache per layer per sequence (MiB, fp16)")
    right.set_title("grouped-query attention shrinks the KV cache")
    fig.tight_layout()
    now = attention_cost(d_model, n_heads, T, n_kv)
    full = attention_cost(d_model, n_heads, T)
    text = (f"d_model={d_model}, {n_heads} heads of width {d_model // n_heads}, {n_kv} kv heads, "
            f"T={T}: {_human(now['params'])} parameters, {_human(now['flops'])}FLOPs, KV cache "
            f"{_human(now['kv_cache_floats'] * BYTES, 'B')} per layer and sequence "
            f"({now['kv_cache_floats'] / full['kv_cache_floats']:.0%} of full multi-head). "
            f"What does grow with heads: the attention weights, h·T² = "
            f"{_human(now['weights_floats'])} numbers if materialised.")
    return figure_to_png(fig), message_html(text)


def head_cost(d_model: int = 512, n_heads: int = 8, n_kv_heads: int = 8,
              T: int = 1024) -> widgets.VBox:
    """Build the calculator. Controls: `w.controls["d_model"]`, `w.controls["n_heads"]`,
    `w.controls["n_kv_heads"]` (Dropdowns) and `w.controls["T"]` (SelectionSlider);
    outputs `w.image` (PNG) and `w.message` (HTML). Impossible combinations (d_model not
    divisible by the heads, heads not divisible by kv heads) show a message and a grey
    placeholder in place of the picture, which is shown at its own size.

    >>> w = head_cost()
    >>> before = w.image.value
    >>> w.controls["n_kv_heads"].value = 2
    >>> w.image.value != before
    True
    """
    d_pick = widgets.Dropdown(options=D_MODELS, value=d_model, description="d_model")
    h_pick = widgets.Dropdown(options=[1, 2, 4, 8, 12, 16, 32, 64], value=n_heads,
                              description="n_heads")
    kv_pick = widgets.Dropdown(options=[1, 2, 4, 8, 12, 16, 32, 64], value=n_kv_heads,
                               description="n_kv_heads")
    t_pick = widgets.SelectionSlider(options=SEQ_LENS, value=T, description="T",
                                     continuous_update=False)
    image, message = picture_image(), widgets.HTML()   # the picture at its own size

    @guarded(message, "this configuration", picture=image)
    def update(_=None) -> None:
        d, h, kv, t = d_pick.value, h_pick.value, kv_pick.value, t_pick.value
        if d % h:
            raise CannotShow(f"d_model = {d} cannot be split into {h} equal heads; pick a head "
                             "count that divides it.", "error")
        if h % kv or kv > h:
            raise CannotShow(f"{h} query heads cannot share {kv} key/value heads evenly; "
                             "n_kv_heads must divide n_heads.", "error")
        image.value, message.value = draw(d, h, kv, t)

    controls = {"d_model": d_pick, "n_heads": h_pick, "n_kv_heads": kv_pick, "T": t_pick}
    watch(controls, update)
    return widget_box([widgets.HBox([d_pick, h_pick, kv_pick]), t_pick, scrolling(image), message],
                      controls, image=image, message=message)
