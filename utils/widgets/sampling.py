"""Sampling widgets (chapter 08): what the model predicts next, and generation step by step.

`next_token_explorer()`  the next-character distribution for a prompt, with temperature,
                         top-k and top-p sliders: bars for the most likely characters, those
                         that survive the filters in colour, the entropy before and after.
`step_generator()`       a "next token" button: the distribution, the sampled character and
                         the growing text, with the time of each step (the first step reads
                         the whole prompt, "prefill"; later ones read one token, "decode").

Both default to the shipped character-level model (`utils.pretrained.load_pretrained`).
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.attention import KVCache
from utils.generation import entropy_bits, next_token_probs
from utils.timing import stopwatch
from utils.widgets.display import (
    CannotShow,
    clean_text,
    clear_picture,
    figure_to_png,
    guarded,
    message_html,
    one_thread,
    picture_image,
    scrolling,
    watch,
    widget_box,
)

DEFAULT_PROMPT = "ROMEO:\nWhat light through yonder window"
MAX_PROMPT = 400     # (kept for callers; the prompt is now cut to the model's context instead)
N_BARS = 20
MAX_SEED = 2**31 - 1
SLIDERS_WAIT = " The sliders take effect once the model can read the prompt."


def show_char(ch: str) -> str:
    """A character as a readable label: newline and space made visible."""
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(ch, ch)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _load(model, tokenizer):
    if model is None or tokenizer is None:
        from utils.pretrained import load_pretrained
        model, tokenizer = load_pretrained("shakespeare-char")
    return model.eval(), tokenizer


def describe_vocabulary(tokenizer) -> str:
    """What the character model can read, from its own vocabulary (not from memory)."""
    chars = tokenizer.chars
    digits = "".join(c for c in chars if c.isdigit())
    marks = "".join(c for c in chars if not (c.isalnum() or c.isspace()))
    letters = "letters" if any(c.isalpha() for c in chars) else "no letters"
    digit_text = f"the digits {digits} only" if digits else "no digits"
    return (f"its vocabulary is the {tokenizer.vocab_size} characters of its training text: "
            f"{letters}, {digit_text}, space, newline and {marks}")


def read_prompt(text: str, tokenizer, block_size: int) -> tuple[list[int], str]:
    """The ids the model reads for `text` (its last `block_size` characters) and a note (HTML,
    empty when all of it is read). Raises `CannotShow` when nothing can be read."""
    n_chars = len(text)
    tail = clean_text(text[-block_size:])           # the model sees the END of the prompt
    if not tail:
        raise CannotShow("Type a prompt: the model needs at least one character to predict "
                         "the next." + SLIDERS_WAIT)
    unknown = sorted({ch for ch in tail if ch not in tokenizer.stoi})
    if unknown:
        shown = ", ".join(repr(ch) for ch in unknown[:8])
        raise CannotShow(f"The model has never seen {shown}: {describe_vocabulary(tokenizer)}. "
                         "Remove or replace them." + SLIDERS_WAIT)
    note = ""
    if n_chars > block_size:
        note = message_html(f"The prompt has {n_chars:,} characters, longer than the context "
                            f"({block_size} characters); only its last {block_size} are read.",
                            "info")
    return tokenizer.encode(tail), note


def encode_prompt(text: str, tokenizer, block_size: int) -> tuple[list[int] | None, str]:
    """Prompt text -> (ids, note html), or (None, message html) if it cannot be used."""
    try:
        return read_prompt(text, tokenizer, block_size)
    except CannotShow as refusal:
        return None, message_html(refusal.text, refusal.level)


def draw_distribution(probs: torch.Tensor, filtered: torch.Tensor, chars: list[str], title: str,
                      chosen: int | None = None) -> bytes:
    """Bars for the N_BARS most likely tokens: grey = before filtering, blue = kept after."""
    top = torch.topk(probs, min(N_BARS, probs.numel())).indices
    labels = [show_char(chars[int(i)]) for i in top]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    x = range(len(top))
    ax.bar(x, probs[top].numpy(), color="#cccccc", label="model (temperature 1)")
    kept = filtered[top] > 0
    colours = ["#d62728" if chosen is not None and int(i) == chosen else "#1f77b4" for i in top]
    ax.bar([i for i, k in zip(x, kept, strict=True) if k],
           [float(filtered[t]) for t, k in zip(top, kept, strict=True) if k],
           width=0.5, color=[c for c, k in zip(colours, kept, strict=True) if k],
           label="after temperature / top-k / top-p (kept)")
    ax.set_xticks(list(x), labels, fontsize=11)
    ax.set_xlabel(f"next character (the {len(top)} most likely)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return figure_to_png(fig)


def _sliders(vocab_size: int) -> dict:
    style = {"description_width": "90px"}
    return {
        "temperature": widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05,
                                           description="temperature", style=style,
                                           continuous_update=False),
        "top_k": widgets.IntSlider(value=0, min=0, max=vocab_size, description="top-k (0 off)",
                                   style=style, continuous_update=False),
        "top_p": widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05,
                                     description="top-p", style=style, continuous_update=False),
    }


def _filter_settings(controls: dict) -> dict:
    k = controls["top_k"].value
    p = controls["top_p"].value
    return {"temperature": controls["temperature"].value, "top_k": k or None,
            "top_p": None if p >= 1.0 else p}


def _describe(probs: torch.Tensor, filtered: torch.Tensor) -> str:
    return (f"entropy {float(entropy_bits(probs)):.2f} bits before, "
            f"{float(entropy_bits(filtered)):.2f} bits after; "
            f"{int((filtered > 0).sum())} of {probs.numel()} characters can be sampled")


def next_token_explorer(model=None, tokenizer=None, prompt: str = DEFAULT_PROMPT):
    """The next-character distribution of `prompt`, reshaped by the sliders."""
    model, tokenizer = _load(model, tokenizer)
    text = widgets.Textarea(value=prompt, description="prompt", continuous_update=False,
                            layout=widgets.Layout(width="95%", height="70px"))
    controls = {"text": text, **_sliders(tokenizer.vocab_size)}
    image, message = picture_image(), widgets.HTML()

    @guarded(message, "the distribution", picture=image)
    def update(_change=None):
        ids, note = read_prompt(controls["text"].value, tokenizer, model.config.block_size)
        with torch.no_grad(), one_thread():     # a callback runs later, outside any no_grad
            logits, _ = model(torch.tensor([ids], device=_device(model)))
        logits = logits[0, -1].float().cpu()
        probs = torch.softmax(logits, -1)
        filtered = next_token_probs(logits, **_filter_settings(controls))
        tail = "".join(show_char(c) for c in tokenizer.decode(ids[-20:]))
        image.value = draw_distribution(probs, filtered, tokenizer.chars,
                                        f"What comes after “…{tail}”?")
        message.value = note + message_html(_describe(probs, filtered))

    watch(controls, update)
    rows = [text, widgets.HBox([controls["temperature"], controls["top_k"], controls["top_p"]]),
            scrolling(image), message]
    return widget_box(rows, controls, image=image, message=message)


class StepGenerator:
    """The state behind `step_generator`: the text so far, a KV cache and the step timings."""

    def __init__(self, model, tokenizer, prompt_ids: list[int], seed: int = 0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.idx = torch.tensor([prompt_ids], device=_device(model))
        self.n_prompt = len(prompt_ids)
        self.cache: KVCache | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.timings: list[tuple[str, int, float]] = []    # (phase, tokens read, ms)

    @torch.no_grad()
    def step(self, temperature=1.0, top_k=None, top_p=None):
        """Choose one more token; return (probs, filtered probs, chosen id)."""
        block = self.model.config.block_size
        with stopwatch(self.idx.device) as clock, one_thread():   # waits for a GPU to finish
            if self.cache is not None and self.cache.seq_len < block:
                phase, tokens = "decode", 1
                logits, _ = self.model(self.idx[:, -1:], kv_cache=self.cache)
            else:                  # first step, or the window slid: read the whole window
                phase = "prefill" if self.cache is None else "prefill (window slid)"
                self.cache = KVCache(len(self.model.blocks))
                window = self.idx[:, -block:]
                tokens = window.size(1)
                logits, _ = self.model(window, kv_cache=self.cache)
        self.timings.append((phase, tokens, 1000 * clock.seconds))
        logits = logits[0, -1].float().cpu()
        probs = torch.softmax(logits, -1)
        filtered = next_token_probs(logits, temperature, top_k, top_p)
        chosen = int(torch.multinomial(filtered, 1, generator=self.generator))
        self.idx = torch.cat([self.idx, torch.tensor([[chosen]], device=self.idx.device)], dim=1)
        return probs, filtered, chosen

    def text_html(self) -> str:
        ids = self.idx[0].tolist()
        prompt = html.escape(self.tokenizer.decode(ids[:self.n_prompt]))
        new = html.escape(self.tokenizer.decode(ids[self.n_prompt:]))
        return (f"<pre style='white-space:pre-wrap'><span style='color:#777'>{prompt}</span>"
                f"<b style='color:#1f4e9c'>{new}</b></pre>")

    def timings_html(self, last: int = 6) -> str:
        shown = list(enumerate(self.timings, 1))[-last:]
        rows = "".join(f"<tr><td>{n}</td><td>{phase}</td><td>{tokens}</td><td>{ms:.2f}</td></tr>"
                       for n, (phase, tokens, ms) in shown)
        return ("<table><tr><th>step</th><th>phase</th><th>tokens read</th><th>ms</th></tr>"
                f"{rows}</table>")


def step_generator(model=None, tokenizer=None, prompt: str = DEFAULT_PROMPT, seed: int = 0):
    """Generate one character per click, showing the distribution it was drawn from.

    Controls (`w.controls[...]`): "text" (the prompt), "temperature", "top_k", "top_p",
    "seed" (0 ... MAX_SEED), "next" and "reset" (Buttons). Outputs: `w.image` (PNG),
    `w.message`, `w.text_out` (the text so far) and `w.timings` (HTML table, one row per step,
    timed with `utils.timing.stopwatch`, which waits for a GPU). Changing the prompt or the
    seed, or pressing reset, starts again from the prompt.
    """
    model, tokenizer = _load(model, tokenizer)
    text = widgets.Textarea(value=prompt, description="prompt", continuous_update=False,
                            layout=widgets.Layout(width="95%", height="70px"))
    next_button = widgets.Button(description="next token", button_style="primary")
    reset_button = widgets.Button(description="reset")
    controls = {"text": text, **_sliders(tokenizer.vocab_size),
                # bounded: torch's generator overflows past 64 bits, JavaScript past 2**53
                "seed": widgets.BoundedIntText(value=min(max(seed, 0), MAX_SEED), min=0,
                                               max=MAX_SEED, description="seed"),
                "next": next_button, "reset": reset_button}
    image, message = picture_image(), widgets.HTML()
    generated, timings = widgets.HTML(), widgets.HTML()
    outputs = [image, generated, timings]            # what a new start or an error clears
    state: dict = {"run": None}

    @guarded(message, "the generator", picture=outputs)
    def reset(_change=None):
        state["run"] = None                          # a failed reset leaves no stale run
        clear_picture([image, timings])
        generated.value = ""
        ids, note = read_prompt(text.value, tokenizer, model.config.block_size)
        state["run"] = StepGenerator(model, tokenizer, ids, controls["seed"].value)
        generated.value = state["run"].text_html()
        message.value = note + message_html("Press “next token”: the first step reads the "
                                            "whole prompt (prefill), later ones one token.")

    @guarded(message, "the next token", picture=outputs)
    def step(_button=None):
        run = state["run"]
        if run is None:
            reset()
            run = state["run"]
            if run is None:
                return
        probs, filtered, chosen = run.step(**_filter_settings(controls))
        picked = show_char(tokenizer.chars[chosen])
        image.value = draw_distribution(probs, filtered, tokenizer.chars,
                                        f"step {len(run.timings)}: sampled “{picked}” (red)",
                                        chosen=chosen)
        generated.value = run.text_html()
        timings.value = run.timings_html()
        message.value = message_html(f"sampled “{picked}” with probability "
                                     f"{float(filtered[chosen]):.3f}; " + _describe(probs, filtered))

    for name in ("text", "seed"):
        controls[name].observe(reset, names="value")
    next_button.on_click(step)
    reset_button.on_click(reset)
    reset()
    step()                                # one step, so the static picture shows something
    rows = [text, widgets.HBox([controls["temperature"], controls["top_k"], controls["top_p"]]),
            widgets.HBox([next_button, reset_button, controls["seed"]]), scrolling(image),
            message, generated, timings]
    return widget_box(rows, controls, image=image, message=message, text_out=generated,
                      timings=timings)
