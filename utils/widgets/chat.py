"""Chat widget (chapter 11): talk to an instruction-tuned model, its reply written as it comes.

    from utils.widgets.chat import chat_widget
    from utils.widgets.display import show
    box = chat_widget(model, tokenizer)
    show(box, box.snapshot())

A text box (Enter or Send sends), the transcript, sliders for temperature (0 = greedy) and
the reply's length, and Clear. Each Send runs `utils.chat.reply_stream` on the whole
conversation so far; when it no longer fits the model's context, the oldest exchanges are
left out and the transcript says so where they end.
"""

from __future__ import annotations

import html
import textwrap
import warnings

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from utils.chat import CHAT_TEMPLATE, MAX_CHARS, ChatTemplate, Turn, check_message, reply_stream
from utils.widgets.display import (
    CannotShow,
    figure_to_png,
    glyph_safe,
    guarded,
    message_html,
    one_thread,
    widget_box,
)

MAX_REPLY_TOKENS = 256     # the slider's top (lower for a model with a short context)
SPEAKERS = {"user": "You", "assistant": "Model"}
_TURN_STYLE = {"user": "background:#e8f0fe", "assistant": "background:#f1f8e9"}


def _turn_html(turn: Turn, faded: bool = False) -> str:
    style = _TURN_STYLE[turn.role] + (";opacity:0.45" if faded else "")
    return (f'<div class="chat-turn chat-{turn.role}" style="{style};border-radius:6px;'
            f'padding:3px 8px;margin:3px 0;white-space:pre-wrap;font-family:monospace">'
            f"<b>{SPEAKERS[turn.role]}:</b> {html.escape(turn.text.strip())}</div>")


def dropped_note(dropped: int, block_size: int) -> str:
    """The sentence that stands in the transcript after the turns the model no longer sees."""
    turns = "turn" if dropped == 1 else f"{dropped} turns"
    return (f"The model no longer sees the {turns} above: the conversation outgrew its "
            f"{block_size}-token context, so the oldest exchanges are left out.")


def transcript_html(history: list[Turn], dropped: int = 0, block_size: int = 0,
                    partial: str | None = None) -> str:
    """The conversation as HTML (every text escaped): the `dropped` oldest turns greyed and
    followed by a note, then the rest, then the reply being written (`partial`), if any."""
    rows = [_turn_html(turn, faded=i < dropped) for i, turn in enumerate(history)]
    if dropped:
        rows.insert(dropped, message_html(dropped_note(dropped, block_size), "warning"))
    if partial is not None:
        rows.append(_turn_html(Turn("assistant", partial + " ▌")))
    return f'<div class="chat-transcript">{"".join(rows)}</div>' if rows else ""


def transcript_png(history: list[Turn], dropped: int = 0, block_size: int = 0,
                   width: int = 90) -> bytes:
    """A picture of the transcript, for readers of the rendered notebook (no live widget)."""
    lines: list[tuple[str, str]] = []
    for i, turn in enumerate(history):
        if dropped and i == dropped:
            lines += [(line, "#8a6d3b") for line in textwrap.wrap(
                "[" + dropped_note(dropped, block_size) + "]", width)]
        colour = "#999999" if i < dropped else ("#1a4f9c" if turn.role == "user" else "#2e6b1f")
        text = f"{SPEAKERS[turn.role]}: {glyph_safe(turn.text.strip())[0]}"
        wrapped = [w for part in text.split("\n") for w in (textwrap.wrap(part, width) or [""])]
        lines += [(line, colour) for line in wrapped]
    lines = lines or [("(no messages yet: type one and press Send)", "#777777")]
    height = 0.55 + 0.2 * len(lines)                           # inches: 0.2 per line
    fig = plt.figure(figsize=(7.5, height))
    fig.text(0.02, 1 - 0.2 / height, "chat transcript", fontsize=11, va="center")
    for k, (line, colour) in enumerate(lines):
        fig.text(0.02, 1 - (0.55 + 0.2 * k) / height, line, color=colour,
                 fontfamily="monospace", fontsize=9, va="center")
    return figure_to_png(fig)


def chat_widget(model, tokenizer, template: ChatTemplate = CHAT_TEMPLATE,
                temperature: float = 0.0, max_new_tokens: int = 48, seed: int = 0,
                max_chars: int = MAX_CHARS, allowed=None, title: str = "Chat with the model"):
    """Build the chat: type a message, press Send (or Enter), watch the reply arrive.

    Controls (`box.controls[...]`): "message" (Text), "send" and "clear" (Buttons),
    "temperature" (0 = greedy, the same reply every time; above 0 sampled with a generator
    seeded by `seed`, reseeded by Clear) and "max_tokens" (the longest reply). Outputs:
    `box.transcript` (HTML), `box.status` (HTML, one line; also `box.message`), `box.history`
    (the list of Turns) and `box.snapshot()` (a PNG of the transcript for `show`).

    Bad input (empty, over `max_chars` characters, characters the model never read: see
    `utils.chat.check_message`, whose `allowed` this passes on, a message too long for the
    context) puts a message in the status line; nothing is sent and the transcript stays as
    it was. The reply runs on one CPU thread, as every widget callback does.
    """
    block = model.config.block_size
    top = max(1, min(MAX_REPLY_TOKENS, block - 4))   # leave room for a short message
    message = widgets.Text(value="", placeholder="Type a message, then Enter or Send",
                           description="message", continuous_update=True,
                           layout=widgets.Layout(width="70%"))
    send = widgets.Button(description="Send", button_style="primary", tooltip="send the message")
    clear = widgets.Button(description="Clear", tooltip="forget the conversation")
    controls = {
        "message": message, "send": send, "clear": clear,
        "temperature": widgets.FloatSlider(value=temperature, min=0.0, max=1.5, step=0.05,
                                           description="temperature", continuous_update=False,
                                           readout_format=".2f"),
        "max_tokens": widgets.IntSlider(value=min(max(max_new_tokens, 1), top), min=1, max=top,
                                        description="max tokens", continuous_update=False),
    }
    transcript, status = widgets.HTML(), widgets.HTML()
    history: list[Turn] = []
    state = {"dropped": 0, "generator": torch.Generator().manual_seed(seed)}

    def show_transcript(partial: str | None = None) -> None:
        transcript.value = transcript_html(history, state["dropped"], block, partial)

    @guarded(status, "a reply")                      # no picture=: a refusal keeps the transcript
    def on_send(_widget=None) -> None:
        if send.disabled:                            # Enter pressed while a reply is written
            return
        text = message.value
        problem = check_message(tokenizer, text, max_chars, allowed)
        if problem:
            raise CannotShow(problem)
        try:
            run = reply_stream(model, tokenizer, history, text,
                               controls["max_tokens"].value, controls["temperature"].value,
                               state["generator"], template)
        except ValueError as error:                  # too long for the context
            said = str(error).removeprefix("user_text: ").replace("max_new_tokens", "max tokens")
            raise CannotShow(said[:1].upper() + said[1:] + ".") from None
        before = state["dropped"]
        state["dropped"] = run.dropped
        send.disabled = True
        status.value = message_html("The model is writing…")
        try:
            with one_thread():
                history.append(Turn("user", text))
                for _piece in run:
                    show_transcript(partial=run.text)
        except Exception:
            del history[len(history) - 1:]           # the half-written exchange never happened
            state["dropped"] = before
            show_transcript()
            raise
        finally:
            send.disabled = False
        history.append(Turn("assistant", run.text))
        message.value = ""
        show_transcript()
        status.value = message_html(_outcome(run, template, block), "info")

    @guarded(status, "the conversation")
    def on_clear(_button=None) -> None:
        history.clear()
        state["dropped"] = 0
        state["generator"] = torch.Generator().manual_seed(seed)
        show_transcript()
        status.value = message_html("Cleared: a new conversation starts with your next message.")

    send.on_click(on_send)
    clear.on_click(on_clear)
    with warnings.catch_warnings():  # ipywidgets 8 calls on_submit deprecated, yet Enter needs it
        warnings.simplefilter("ignore", DeprecationWarning)
        message.on_submit(on_send)
    status.value = message_html("Type a message and press Send (or Enter).")
    rows = [widgets.HTML(f"<b>{html.escape(title)}</b>"), transcript,
            widgets.HBox([message, send, clear]),
            widgets.HBox([controls["temperature"], controls["max_tokens"]]), status]
    box = widget_box(rows, controls, transcript=transcript, status=status, message=status)
    for widget, name in [(box, "chat-widget"), (transcript, "chat-transcript-area"),
                         (status, "chat-status")]:
        widget.add_class(name)                       # names a browser test can find them by
    box.history = history
    box.snapshot = lambda: transcript_png(history, state["dropped"], block)
    return box


def _outcome(run, template: ChatTemplate, block: int) -> str:
    n = len(run.token_ids)
    end = template.end if template.special else "a stop"
    said = f"Reply: {n} tokens, " + (f"ended by the model ({end})." if run.finished else
                                      f"cut at the max-tokens limit before {end}.")
    if run.dropped:
        said += " " + dropped_note(run.dropped, block).replace("above", "greyed above")
    return said
