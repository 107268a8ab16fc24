"""Chapter 11's chat (utils/chat.py): the multi-turn template and its loss mask, dropping the
oldest turns when the context fills, streamed replies that never split a character, bad
input, and GPT-2's loader offline (never downloading anything)."""

import socket
import time
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import constants as hub_constants
from torch import nn

from utils import chat
from utils.bpe_tokenizer import BPETokenizer
from utils.chat import (
    CHAT_TEMPLATE,
    EVERY_CHARACTER,
    GPT2_TEMPLATE,
    Conversation,
    Turn,
    chat_prompt,
    chat_targets,
    check_message,
    encode_chat,
    load_gpt2_chat,
    reply,
    reply_stream,
)
from utils.generation import generate
from utils.instructions import (
    END,
    IGNORE_INDEX,
    INSTRUCTION,
    RESPONSE,
    ChatTokenizer,
    add_special_tokens,
    collate,
    encode_example,
)
from utils.model import GPT, GPTConfig
from utils.tokenizers import CharTokenizer

PRINTABLE = "".join(chr(c) for c in range(32, 127)) + "\n"


class Scripted(nn.Module):
    """A stand-in model that writes a fixed list of token ids, one per call (greedy picks the
    scripted id: it gets logit 1, every other id 0), whatever it is shown."""

    def __init__(self, script, vocab_size, block_size=64):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.blocks = nn.ModuleList([nn.Identity()])   # one layer, for the KV cache's sake
        self.config = SimpleNamespace(block_size=block_size)
        self.script, self.vocab_size, self.calls = list(script), vocab_size, 0

    def forward(self, idx, kv_cache=None):
        logits = torch.zeros(idx.size(0), idx.size(1), self.vocab_size)
        logits[:, -1, self.script[self.calls]] = 1.0
        self.calls += 1
        return logits, None


@pytest.fixture(scope="module")
def abc():
    return ChatTokenizer(CharTokenizer("abcdefgh"))     # ids 0-7, then 8, 9, 10 for the markers


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    base = CharTokenizer(PRINTABLE)
    gpt = GPT(GPTConfig(vocab_size=base.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    return add_special_tokens(gpt, base)


# ------------------------------------------------------------------------- template and mask

def test_turns_check_their_role_and_order(abc):
    with pytest.raises(ValueError, match="role"):
        Turn("system", "hi")
    with pytest.raises(ValueError, match=r"turns\[0\].*starts with the user"):
        encode_chat(abc, [Turn("assistant", "a")])
    with pytest.raises(ValueError, match=r"turns\[1\]"):
        encode_chat(abc, [Turn("user", "a"), Turn("user", "b")])


def test_two_exchanges_give_the_hand_written_ids_and_mask(abc):
    i, r, e = 8, 9, 10
    assert (abc.ids_of(INSTRUCTION), abc.ids_of(RESPONSE), abc.ids_of(END)) == (i, r, e)
    turns = [Turn("user", "ab"), Turn("assistant", "cd"), Turn("user", "e"), Turn("assistant", "f")]
    ids, mask = encode_chat(abc, turns)
    assert ids == [i, 0, 1, r, 2, 3, e, i, 4, r, 5, e]
    # learned: each reply and the <|end|> after it; never the user's words or the markers
    assert mask == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]


def test_one_exchange_is_chapter_10s_example_and_its_targets_are_collates(abc):
    for question, answer in [("abc", "h"), ("a", "bcdefg"), ("hg", "")]:
        ids, mask = encode_chat(abc, [Turn("user", question), Turn("assistant", answer)])
        expected, prompt_length = encode_example(abc, question, answer)
        assert ids == expected
        assert mask == [0] * prompt_length + [1] * (len(ids) - prompt_length)
        x, y = chat_targets(ids, mask)
        cx, cy = collate([(expected, prompt_length)])
        assert torch.equal(x, cx) and torch.equal(y, cy)


def test_multi_turn_targets_keep_exactly_the_replies(abc):
    turns = [Turn("user", "ab"), Turn("assistant", "cd"), Turn("user", "e"), Turn("assistant", "f")]
    ids, mask = encode_chat(abc, turns)
    x, y = chat_targets(ids, mask)
    assert x[0].tolist() == ids[:-1]
    assert y[y != IGNORE_INDEX].tolist() == [2, 3, 10, 5, 10]      # c d <|end|> f <|end|>
    assert (y[0] != IGNORE_INDEX).nonzero().flatten().tolist() == [3, 4, 5, 9, 10]


def test_the_text_template_reads_as_one_plain_dialogue():
    tok = CharTokenizer(PRINTABLE)
    turns = [Turn("user", "hi"), Turn("assistant", " hello"), Turn("user", "q")]
    ids, mask = encode_chat(tok, turns, GPT2_TEMPLATE)
    assert tok.decode(ids) == "User: hi\nAssistant: hello\nUser: q\nAssistant:"
    assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == " hello\n"


def test_a_special_template_needs_the_special_tokens():
    with pytest.raises(ValueError, match="no special token"):
        encode_chat(CharTokenizer("ab"), [Turn("user", "a")], CHAT_TEMPLATE)


# -------------------------------------------------------------------- the context fills up

def history_of(n):
    """n exchanges; user turns 'aaaa' (4 + 2 markers = 6 tokens), replies 'bb' (2 + <|end|>)."""
    turns = []
    for k in range(n):
        turns += [Turn("user", "abcdefgh"[k] * 4), Turn("assistant", "bb")]
    return turns


def test_the_oldest_exchanges_are_dropped_first_and_whole(abc):
    history, new = history_of(3), "cc"                 # 3 x 9 tokens + 4 for the new message
    prompt, dropped = chat_prompt(abc, history, new, block_size=36, max_new_tokens=5)
    assert dropped == 0 and len(prompt) == 31          # 31 + 5 = 36: fits exactly
    assert prompt == encode_chat(abc, [*history, Turn("user", new)])[0]
    prompt, dropped = chat_prompt(abc, history, new, block_size=35, max_new_tokens=5)
    assert dropped == 2 and len(prompt) == 22          # one exchange (9 tokens) gone
    assert prompt == encode_chat(abc, [*history[2:], Turn("user", new)])[0]
    assert abc.decode(prompt[1:5]) == "bbbb"           # the second exchange now opens it
    prompt, dropped = chat_prompt(abc, history, new, block_size=12, max_new_tokens=5)
    assert dropped == 6 and prompt == encode_chat(abc, [Turn("user", new)])[0]


def test_a_message_that_cannot_fit_says_by_how_much(abc):
    with pytest.raises(ValueError, match=r"14 tokens.*12-token reply.*16-token context holds at most 4"):
        chat_prompt(abc, [], "a" * 12, block_size=16, max_new_tokens=12)


# ---------------------------------------------------------------------------------- replies

def test_greedy_reply_is_generate_up_to_end(tiny):
    model, tok = tiny
    history = [Turn("user", "Hi"), Turn("assistant", "Hello.")]
    run = reply(model, tok, history, "How are you?", max_new_tokens=20)
    prompt = encode_chat(tok, [*history, Turn("user", "How are you?")])[0]
    out = generate(model, torch.tensor([prompt]), 20, temperature=0, stop=tok.ids_of(END))
    new = out[0, len(prompt):].tolist()
    if new[-1] == tok.ids_of(END):
        new = new[:-1]
    assert run.text == tok.decode(new) and run.prompt_ids == prompt and run.dropped == 0
    assert reply(model, tok, history, "How are you?", max_new_tokens=20).text == run.text


def test_seeded_sampling_repeats(tiny):
    model, tok = tiny
    texts = [reply(model, tok, [], "Hi", 30, temperature=1.0,
                   generator=torch.Generator().manual_seed(7)).text for _ in range(2)]
    assert texts[0] == texts[1]


def test_streamed_pieces_never_split_a_character():
    tok = ChatTokenizer(BPETokenizer())                 # bytes only: é and ☃ are 2 and 3 tokens
    text = "O café ☃ü!"
    model = Scripted(tok.encode(text) + [tok.ids_of(END)], tok.vocab_size)
    run = reply_stream(model, tok, [], "hi", max_new_tokens=30)
    pieces = list(run)
    assert "".join(pieces) == text == run.text and run.finished
    assert all("\ufffd" not in piece for piece in pieces), pieces
    assert len(pieces) == len(text)                     # one piece per character, as it completes
    assert run.token_ids[-1] == tok.ids_of(END) and len(run.token_ids) == len(tok.encode(text)) + 1


def test_running_out_of_tokens_is_not_finished_and_keeps_what_was_held():
    tok = ChatTokenizer(BPETokenizer())
    ids = tok.encode("ab") + tok.encode("é")[:1]        # the reply stops inside a character
    run = reply(Scripted(ids, tok.vocab_size), tok, [], "hi", max_new_tokens=3)
    assert not run.finished and len(run.token_ids) == 3 and run.text == "ab\ufffd"
    with pytest.raises(RuntimeError, match="already been read"):
        list(run)


def test_a_text_template_stops_at_the_next_user_and_never_shows_half_of_it():
    tok = CharTokenizer(PRINTABLE)
    model = Scripted(tok.encode(" Hi there\nUser: more"), tok.vocab_size)
    run = reply_stream(model, tok, [], "hello", max_new_tokens=20, template=GPT2_TEMPLATE)
    pieces = list(run)
    assert run.text == "".join(pieces) == " Hi there" and run.finished
    assert model.calls == len(" Hi there\nUser:")      # it stopped as soon as it saw the stop
    # held back while it could still be "\nUser:", then handed out when it was not
    model = Scripted(tok.encode(" a\nUs"), tok.vocab_size)
    run = reply(model, tok, [], "hello", max_new_tokens=5, template=GPT2_TEMPLATE)
    assert run.text == " a\nUs" and not run.finished


def test_a_stop_token_ends_a_text_template_reply():
    tok = BPETokenizer(special_tokens=["<|endoftext|>"])
    model = Scripted(tok.encode_ordinary(" ok") + [tok.special_tokens["<|endoftext|>"]], tok.vocab_size)
    run = reply(model, tok, [], "typed <|endoftext|> is text", 10, template=GPT2_TEMPLATE)
    assert run.text == " ok" and run.finished
    assert tok.special_tokens["<|endoftext|>"] not in run.prompt_ids   # never parsed from input


def test_conversation_remembers_both_sides(tiny):
    model, tok = tiny
    talk = Conversation(model, tok)
    first = talk.say("Hi", max_new_tokens=8)
    talk.say("Again", max_new_tokens=8)
    assert [t.role for t in talk.history] == ["user", "assistant"] * 2
    assert talk.history[1].text == first.text and talk.history[2].text == "Again"


# ---------------------------------------------------------------------------------- bad input

def test_bad_messages_get_a_sentence(abc):
    assert check_message(abc, "abc") is None
    assert "empty" in check_message(abc, "")
    assert "empty" in check_message(abc, " \n\t ")
    start = time.perf_counter()
    said = check_message(abc, "a" * 10_000)
    assert "10,000 characters" in said and "1,000" in said
    assert time.perf_counter() - start < 0.5
    said = check_message(abc, "abz!z")
    assert "2 of these" in said and "'z' (U+007A)" in said and "'!' (U+0021)" in said
    assert "surrogate" in check_message(abc, "a\ud83db")
    assert check_message(abc, "xyz", allowed="xyz") is None
    assert check_message(abc, "naïve", allowed=EVERY_CHARACTER) is None


def test_a_bpe_chat_model_is_checked_against_its_corpus():
    tok = ChatTokenizer(BPETokenizer())                 # encodes every byte...
    assert check_message(tok, "To be, or not to be?") is None
    said = check_message(tok, "café 6")                # ...but the plays have no é, and no 6
    assert "'é' (U+00E9)" in said and "'6' (U+0036)" in said
    # GPT-2's own vocabulary (a plain BPE with <|endoftext|>) read the web: anything goes
    assert check_message(BPETokenizer(special_tokens=["<|endoftext|>"]), "café 6 🙂") is None


# --------------------------------------------------------------------------------- GPT-2

def test_gpt2_offline_is_one_line_within_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")           # never a download, whatever the network
    start = time.perf_counter()
    said = load_gpt2_chat(timeout_s=2, cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    assert isinstance(said, str) and "\n" not in said and "not loaded" in said


def online_allowed(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: undo both, for this test only
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)


def test_gpt2_with_a_network_that_hangs_gives_up_after_the_timeout(monkeypatch, tmp_path):
    online_allowed(monkeypatch)

    def hangs(address, timeout=None, *args, **kwargs):
        time.sleep(timeout)                              # as a dead network does, then fails
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    start = time.perf_counter()
    said = load_gpt2_chat(timeout_s=1.5, cache_dir=str(tmp_path))
    assert 1.5 <= time.perf_counter() - start < 5
    assert isinstance(said, str) and "did not answer within 1.5 s" in said


def test_gpt2_online_wiring_with_a_stand_in(monkeypatch, tiny, tmp_path):
    import utils.hf_convert

    online_allowed(monkeypatch)
    monkeypatch.setattr(utils.hf_convert, "hub_reachable", lambda *a, **k: True)
    tok = CharTokenizer(PRINTABLE)
    model = Scripted(tok.encode(" Fine.\nUser:"), tok.vocab_size)
    monkeypatch.setattr(chat, "_fetch_gpt2", lambda name, cache_dir: (model, tok))
    loaded = load_gpt2_chat(cache_dir=str(tmp_path))
    assert loaded[0] is model and loaded[2] is GPT2_TEMPLATE
    assert reply(*loaded[:2], [], "How are you?", 20, template=loaded[2]).text == " Fine."

    def fails(name, cache_dir):
        raise OSError("no space left\nsecond line")

    monkeypatch.setattr(chat, "_fetch_gpt2", fails)
    assert load_gpt2_chat(cache_dir=str(tmp_path)) == "GPT-2 not loaded: OSError: no space left"
