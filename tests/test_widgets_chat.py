"""Chapter 11's chat widget driven from Python: type, Send (or Enter), watch the transcript
grow while the reply streams; bad input leaves the transcript alone; Clear; the note when
the oldest turns no longer fit the context."""

import html

import pytest
import torch

from utils.chat import Turn, reply
from utils.data import load_corpus, train_val_split
from utils.instructions import add_special_tokens
from utils.model import GPT, GPTConfig
from utils.tokenizers import CharTokenizer
from utils.widgets.chat import chat_widget


def tiny_chat(block_size=64, extra_chars=""):
    torch.manual_seed(0)
    base = CharTokenizer("".join(sorted(set(train_val_split(load_corpus())[0]))) + extra_chars)
    gpt = GPT(GPTConfig(vocab_size=base.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                        n_embd=32))
    return add_special_tokens(gpt, base)


@pytest.fixture(scope="module")
def pair():
    return tiny_chat()


def send(box, text):
    box.controls["message"].value = text
    box.controls["send"].click()


def test_every_control_is_labelled(pair):
    box = chat_widget(*pair)
    for name, control in box.controls.items():
        assert control.description, name
    assert box.transcript.value == "" and "Send" in box.status.value


def test_send_streams_the_greedy_reply_into_the_transcript(pair):
    model, tok = pair
    box = chat_widget(model, tok, max_new_tokens=12)
    seen = []
    box.transcript.observe(lambda change: seen.append(change["new"]), names="value")
    send(box, "Who is Hamlet?")
    expected = reply(model, tok, [], "Who is Hamlet?", max_new_tokens=12)
    assert box.history == [Turn("user", "Who is Hamlet?"), Turn("assistant", expected.text)]
    assert "<b>You:</b> Who is Hamlet?" in box.transcript.value
    assert f"<b>Model:</b> {html.escape(expected.text.strip())}</div>" in box.transcript.value
    # streamed: the transcript showed the reply growing (with a cursor) before the final one
    growing = [v for v in seen if "▌" in v]
    assert len(growing) >= 2 and len(set(growing)) == len(growing)
    assert "▌" not in box.transcript.value
    assert "12 tokens" in box.status.value and box.controls["message"].value == ""
    assert not box.controls["send"].disabled


def test_a_second_message_continues_the_conversation(pair):
    model, tok = pair
    box = chat_widget(model, tok, max_new_tokens=8)
    send(box, "Hi")
    send(box, "And then?")
    expected = reply(model, tok, box.history[:2], "And then?", max_new_tokens=8)
    assert box.history[3].text == expected.text and len(box.history) == 4


def test_enter_sends_like_the_button(pair):
    box = chat_widget(*pair, max_new_tokens=5)
    box.controls["message"].value = "Hi"
    box.controls["message"]._handle_string_msg(None, {"event": "submit"}, None)   # what Enter sends
    assert len(box.history) == 2 and "<b>You:</b> Hi" in box.transcript.value


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("   ", "empty"), ("x" * 10_000, "10,000 characters"),
    ("café", "'é' (U+00E9)"), ("a\ud800b", "surrogate"),
    ("a" * 80, "context holds at most"),            # 82 tokens + 8 for the reply > 64
])
def test_bad_input_is_a_message_and_sends_nothing(pair, text, words):
    box = chat_widget(*pair, max_new_tokens=8)
    send(box, "Hi")
    before, history = box.transcript.value, list(box.history)
    send(box, text)
    assert words in html.unescape(box.status.value), box.status.value
    assert box.transcript.value == before and box.history == history
    assert box.controls["message"].value == text      # left there to be fixed


def test_the_transcript_escapes_what_was_typed():
    box = chat_widget(*tiny_chat(extra_chars="<>"), max_new_tokens=4)
    send(box, "<b>bold</b> & co")
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in box.transcript.value
    assert "<b>bold" not in box.transcript.value


def test_clear_empties_the_transcript_and_reseeds(pair):
    box = chat_widget(*pair, temperature=1.0, max_new_tokens=10, seed=3)
    send(box, "Hi")
    first = box.history[1].text
    box.controls["clear"].click()
    assert box.transcript.value == "" and box.history == [] and "Cleared" in box.status.value
    send(box, "Hi")                                    # the same seed again: the same reply
    assert box.history[1].text == first
    other = chat_widget(*pair, temperature=1.0, max_new_tokens=10, seed=3)
    send(other, "Hi")
    assert other.transcript.value == box.transcript.value


def test_the_oldest_turns_are_dropped_and_the_transcript_says_so():
    model, tok = tiny_chat(block_size=48)
    box = chat_widget(model, tok, max_new_tokens=10)
    for k in range(3):                                 # 3 x (12 + 2 + 11) tokens > 48 - 10
        send(box, f"question {k + 1}")
        assert ("no longer sees" in box.transcript.value) == (k == 2), k
    assert "no longer sees the 2 turns" in box.transcript.value
    assert "the 2 turns greyed above" in box.status.value
    faded = box.transcript.value.split("no longer sees")[0]
    assert faded.count("opacity:0.45") == 2 and "question 1" in faded and "question 2" not in faded
    png = box.snapshot()
    assert png[:4] == b"\x89PNG"


def test_an_error_while_writing_leaves_the_transcript_as_it_was(pair, monkeypatch):
    model, tok = pair
    box = chat_widget(model, tok, max_new_tokens=6)
    send(box, "Hi")
    before, calls = box.transcript.value, {"n": 0}
    real = type(model).forward

    def breaks(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("out of memory")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", breaks)
    send(box, "Again")
    assert "out of memory" in box.status.value and box.transcript.value == before
    assert len(box.history) == 2 and not box.controls["send"].disabled
