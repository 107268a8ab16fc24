"""The √d_k slider (chapter 03): why attention divides its scores by √d_k.

Drag d_k (the width of queries and keys) and switch the scaling on or off. The left panel
shows the softmax weights of one query over 8 keys with random unit-variance entries; the
right panel shows how large the softmax's gradient is, on average, at every d_k, with the
current setting marked.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from utils.widgets.display import (
    figure_to_png,
    guarded,
    message_html,
    one_thread,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

D_KS = [2**i for i in range(13)]  # 1 ... 4096
N_KEYS = 8


def softmax_gradient_norm(d_k: int, scaled: bool, n_keys: int = N_KEYS, trials: int = 256,
                          seed: int = 0) -> float:
    """Median Frobenius norm of the softmax Jacobian ∂w/∂s for scores s = q·k (÷ √d_k if scaled).

    The Jacobian diag(w) - w wᵀ is what backpropagation multiplies by; when the softmax
    saturates to a one-hot vector it is all zeros, and the scores stop learning.

    >>> softmax_gradient_norm(4096, scaled=False) < 0.01 < softmax_gradient_norm(4096, scaled=True)
    True
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(trials, 1, d_k, generator=g)
    k = torch.randn(trials, n_keys, d_k, generator=g)
    scores = (q * k).sum(-1) / (math.sqrt(d_k) if scaled else 1.0)   # [trials, n_keys]
    w = torch.softmax(scores, dim=-1)
    jac = torch.diag_embed(w) - w.unsqueeze(-1) * w.unsqueeze(-2)     # [trials, n, n]
    return jac.flatten(1).norm(dim=-1).median().item()


class _Curves:
    """Gradient norm against d_k for both settings, computed once per process."""

    cache: dict[bool, list[float]] = {}

    @classmethod
    def get(cls, scaled: bool) -> list[float]:
        if scaled not in cls.cache:
            cls.cache[scaled] = [softmax_gradient_norm(d, scaled) for d in D_KS]
        return cls.cache[scaled]


def _example(d_k: int, scaled: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(D_KS[-1], generator=g)[:d_k]
    k = torch.randn(N_KEYS, D_KS[-1], generator=g)[:, :d_k]
    scores = k @ q / (math.sqrt(d_k) if scaled else 1.0)
    return scores.numpy(), torch.softmax(scores, -1).numpy()


def draw(d_k: int, scaled: bool) -> tuple[bytes, str]:
    """The PNG and the message for one setting."""
    scores, weights = _example(d_k, scaled)
    grad = softmax_gradient_norm(d_k, scaled)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.bar(range(N_KEYS), weights, color="tab:blue")
    left.set_ylim(0, 1.05)
    left.set_xticks(range(N_KEYS), [f"k{i}" for i in range(N_KEYS)])
    left.set_title(f"softmax weights of one query, d_k = {d_k}, "
                   f"{'÷ √d_k' if scaled else 'no scaling'}")
    left.set_xlabel("key")
    left.set_ylabel("attention weight")
    for label, is_scaled, style in (("÷ √d_k", True, "-o"), ("no scaling", False, "--s")):
        right.plot(D_KS, _Curves.get(is_scaled), style, label=label, markersize=4)
    right.plot([d_k], [grad], "o", color="red", markersize=10, label="current setting")
    right.set_xscale("log", base=2)
    right.set_yscale("symlog", linthresh=1e-6)
    right.set_ylim(0, 1)
    right.set_title("how much gradient flows through the softmax")
    right.set_xlabel("d_k (width of queries and keys)")
    right.set_ylabel("median ‖∂w/∂s‖ (256 random queries)")
    right.legend()
    fig.tight_layout()
    text = (f"d_k = {d_k}, {'scaled by 1/√d_k' if scaled else 'unscaled'}: scores have std "
            f"{scores.std():.2f}, the largest weight is {weights.max():.3f}, and the softmax "
            f"gradient norm is {grad:.2e}.")
    level = "warning" if weights.max() > 0.95 else "info"
    if level == "warning":
        text += " The softmax has saturated to (almost) one-hot: almost no gradient gets through."
    return figure_to_png(fig), message_html(text, level)


def softmax_scaling(d_k: int = 64, scaled: bool = True) -> widgets.VBox:
    """Build the widget. Controls: `w.controls["d_k"]` (a SelectionSlider over powers of two,
    1 to 4096) and `w.controls["scaled"]` (a Checkbox); outputs: `w.image` (PNG) and
    `w.message` (HTML). A setting that cannot be drawn shows why and greys the picture.

    >>> w = softmax_scaling()
    >>> before = w.image.value
    >>> w.controls["d_k"].value = 1024
    >>> w.image.value != before
    True
    """
    slider = widgets.SelectionSlider(options=D_KS, value=d_k if d_k in D_KS else 64,
                                     description="d_k", continuous_update=False,
                                     layout=widgets.Layout(width="420px"))
    checkbox = widgets.Checkbox(value=scaled, description="divide scores by √d_k")
    image, message = picture_image(), widgets.HTML()   # the picture at its own size

    @guarded(message, "this setting", picture=image)
    def update(_=None) -> None:
        with one_thread():  # small tensors: a second thread only waits for a busy core
            image.value, message.value = draw(slider.value, checkbox.value)

    controls = {"d_k": slider, "scaled": checkbox}
    watch(controls, update)
    return widget_box([widgets.HBox([slider, checkbox]), scrolling(image), message], controls,
                      image=image, message=message)
