"""Chat: a conversation of many turns with an instruction-tuned model (chapter 11).

Chapter 10 taught a model one exchange: `<|instruction|>question<|response|>answer<|end|>`.
A chat is the same template repeated, the whole conversation so far fed back as the prompt:

    <|instruction|>Who is Hamlet?<|response|>The Prince of Denmark.<|end|><|instruction|>And
    his father?<|response|>        <- the model writes from here, until it writes <|end|>

Three things make a loop of `respond` into a chat:

* **history**: a list of `Turn`s (who spoke, what was said); `encode_chat` lays it out with a
  `ChatTemplate` and marks the tokens a multi-turn fine-tuning would learn (the replies);
* **a context that fills**: a model reads at most `block_size` tokens, so `chat_prompt`
  drops the oldest whole exchanges until the prompt and room for the reply fit, and says how
  many it dropped (the model has forgotten them; the reader should be told);
* **streaming**: `reply_stream` yields text while the tokens are chosen. A BPE token can be
  half of a character (é is two bytes, often two tokens), so each step decodes the whole reply
  and only hands out text that can no longer change.

`check_message` turns bad input (empty, far too long, characters the model never read) into a
sentence for the reader. `load_gpt2_chat` runs the same loop on GPT-2 124M, converted into our
`GPT` (chapter 05), with a plain-text template, since GPT-2 has no chat tokens; offline it
returns one line saying so, within seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from utils.instructions import END, IGNORE_INDEX, INSTRUCTION, RESPONSE, ChatTokenizer

ROLES = ("user", "assistant")
MAX_CHARS = 1000          # a longer message gets a message back, not a minute of encoding
GPT2_NAME = "gpt2"        # the Hub's name of GPT-2 124M


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: `role` is "user" or "assistant"."""
    role: str
    text: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"text must be a string, got {type(self.text).__name__}")


@dataclass(frozen=True)
class ChatTemplate:
    """How turns become tokens, and what ends a reply.

    A user turn is `user + text + assistant` (ending with the marker that hands the word to
    the model); an assistant turn is `text + end`. With `special=True` the three markers are
    the tokenizer's special tokens (chapter 10's), which no typed text can spell; with
    `special=False` they are ordinary text (GPT-2 has no chat tokens). A reply ends at the
    special `end` token, at any of the special tokens named in `stop_tokens` that the
    tokenizer has, or where its text reaches one of `stops`.
    """
    user: str = INSTRUCTION
    assistant: str = RESPONSE
    end: str = END
    special: bool = True
    stops: tuple[str, ...] = ()
    stop_tokens: tuple[str, ...] = ()


CHAT_TEMPLATE = ChatTemplate()
# GPT-2 read web pages, where a dialogue looks like this; it may also write <|endoftext|>.
GPT2_TEMPLATE = ChatTemplate(user="User: ", assistant="\nAssistant:", end="\n", special=False,
                             stops=("\nUser:",), stop_tokens=("<|endoftext|>",))


# ------------------------------------------------------------------------------- encoding

def _plain_ids(tokenizer, text: str) -> list[int]:
    # GPT-2's tokenizer would read a typed "<|endoftext|>" as its special token: never parse one
    encode = getattr(tokenizer, "encode_ordinary", None) or tokenizer.encode
    return list(encode(text))


def _special_id(tokenizer, name: str) -> int | None:
    if isinstance(tokenizer, ChatTokenizer):
        return tokenizer.special_tokens.get(name)
    return getattr(tokenizer, "special_tokens", {}).get(name)


def _marker(tokenizer, template: ChatTemplate, marker: str) -> list[int]:
    if not template.special:
        return _plain_ids(tokenizer, marker)
    token = _special_id(tokenizer, marker)
    if token is None:
        raise ValueError(f"template: the tokenizer has no special token {marker!r}; use "
                         "utils.instructions.add_special_tokens, or a plain-text template")
    return [token]


def _decode(tokenizer, ids: Sequence[int]) -> str:
    if isinstance(tokenizer, ChatTokenizer):
        return tokenizer.decode(ids, skip_special=True)
    return tokenizer.decode(ids)


def encode_turn(tokenizer, turn: Turn, template: ChatTemplate = CHAT_TEMPLATE) -> list[int]:
    """Token ids of one turn: `user + text + assistant`, or `text + end` for a reply."""
    if turn.role == "user":
        return (_marker(tokenizer, template, template.user) + _plain_ids(tokenizer, turn.text)
                + _marker(tokenizer, template, template.assistant))
    return _plain_ids(tokenizer, turn.text) + _marker(tokenizer, template, template.end)


def _check_order(turns: Sequence[Turn]) -> None:
    for i, turn in enumerate(turns):
        if not isinstance(turn, Turn):
            raise TypeError(f"turns[{i}] must be a Turn, got {type(turn).__name__}")
        if turn.role != ROLES[i % 2]:
            raise ValueError(f"turns[{i}] is a {turn.role} turn: a conversation starts with "
                             "the user and alternates user, assistant, user, ...")


def encode_chat(tokenizer, turns: Sequence[Turn], template: ChatTemplate = CHAT_TEMPLATE,
                ) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a whole conversation, one mask entry per id.

    loss_mask is 1 exactly on the assistant's tokens and the `end` after each reply (what a
    multi-turn fine-tuning learns: to answer, and when to stop), 0 on the user's words and on
    the markers around them. One exchange gives chapter 10's `encode_example` ids.

    >>> from utils.tokenizers import CharTokenizer
    >>> tok = ChatTokenizer(CharTokenizer("abc"))                       # specials 3, 4, 5
    >>> encode_chat(tok, [Turn("user", "ab"), Turn("assistant", "c")])
    ([3, 0, 1, 4, 2, 5], [0, 0, 0, 0, 1, 1])
    """
    _check_order(turns)
    ids: list[int] = []
    mask: list[int] = []
    for turn in turns:
        piece = encode_turn(tokenizer, turn, template)
        ids += piece
        mask += [int(turn.role == "assistant")] * len(piece)
    return ids, mask


def chat_targets(ids: Sequence[int], loss_mask: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x [1, L] and targets y [1, L] for one conversation: y is the next token where
    it is to be learned (mask 1) and IGNORE_INDEX elsewhere, as `collate` makes them."""
    if len(ids) != len(loss_mask) or len(ids) < 2:
        raise ValueError(f"ids ({len(ids)}) and loss_mask ({len(loss_mask)}) must have the same "
                         "length, at least 2")
    ids_t = torch.tensor([list(ids)], dtype=torch.long)
    keep = torch.tensor([list(loss_mask)], dtype=torch.bool)[:, 1:]
    return ids_t[:, :-1], ids_t[:, 1:].masked_fill(~keep, IGNORE_INDEX)


def chat_prompt(tokenizer, history: Sequence[Turn], user_text: str, block_size: int,
                max_new_tokens: int, template: ChatTemplate = CHAT_TEMPLATE,
                ) -> tuple[list[int], int]:
    """(prompt ids, number of oldest turns dropped) for the next reply.

    The prompt is the history plus the new user message, laid out by `encode_chat`. When the
    prompt plus `max_new_tokens` for the reply is longer than `block_size`, the oldest whole
    exchanges (a user turn and its reply, so the prompt still starts with the user) are
    dropped until it fits. When even the new message alone leaves no room for the reply, a
    ValueError says by how much.
    """
    _check_order([*history, Turn("user", user_text)])
    if max_new_tokens < 1 or block_size < 1:
        raise ValueError(f"max_new_tokens and block_size must be >= 1, got {max_new_tokens}, "
                         f"{block_size}")
    pieces = [encode_turn(tokenizer, turn, template) for turn in history]
    new = encode_turn(tokenizer, Turn("user", user_text), template)
    budget = block_size - max_new_tokens              # tokens the prompt may have
    if len(new) > budget:
        raise ValueError(f"user_text: the message is {len(new)} tokens with its markers; with "
                         f"room for a {max_new_tokens}-token reply the {block_size}-token "
                         f"context holds at most {max(budget, 0)}: shorten it or lower "
                         "max_new_tokens")
    dropped, length = 0, sum(map(len, pieces)) + len(new)
    while length > budget:                            # drop the oldest exchange, whole
        length -= len(pieces[dropped]) + len(pieces[dropped + 1])
        dropped += 2
    return [i for piece in pieces[dropped:] for i in piece] + new, dropped


# ------------------------------------------------------------------------------- replying

def _settled(text: str, stops: Sequence[str]) -> str:
    """The part of a reply still being written that can no longer change: without a trailing
    '\\ufffd' (the first bytes of a character whose last bytes are still to come) and without
    an ending that could be the start of a stop string."""
    text = text.rstrip("\ufffd")
    held = max((k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])),
               default=0)
    return text[:len(text) - held]


class ReplyStream:
    """The model's reply to `user_text` after `history`, written while it is read.

    Iterate to get text pieces as tokens are chosen (`"".join(pieces) == stream.text` once it
    is done). The prompt is built at once, so a message that does not fit raises here, not
    in the loop. Attributes: `dropped` (oldest turns left out of the prompt), `prompt_ids`,
    `token_ids` (the new tokens, with the final stop token if any), `text` (the reply so
    far), `finished` (True once the model ended its reply itself; False when it ran into
    `max_new_tokens`) and `done`.
    """

    def __init__(self, model, tokenizer, history: Sequence[Turn], user_text: str,
                 max_new_tokens: int = 64, temperature: float = 0.0,
                 generator: torch.Generator | None = None,
                 template: ChatTemplate = CHAT_TEMPLATE, top_k: int | None = None):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.prompt_ids, self.dropped = chat_prompt(tokenizer, history, user_text,
                                                    model.config.block_size, max_new_tokens,
                                                    template)
        self.max_new_tokens, self.settings = max_new_tokens, dict(
            temperature=temperature, generator=generator, top_k=top_k)
        names = ((template.end,) if template.special else ()) + template.stop_tokens
        self.stop_ids = [i for i in (_special_id(tokenizer, n) for n in names) if i is not None]
        self.token_ids: list[int] = []
        self.text, self.finished, self.done = "", False, False

    def __iter__(self) -> Iterator[str]:
        from utils.generation import stream

        if self.done or self.token_ids:
            raise RuntimeError("this reply has already been read; ask for a new one")
        device = next(self.model.parameters()).device
        idx = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
        # crop=False: chat_prompt left room for max_new_tokens, so the context never slides
        for token in stream(self.model, idx, self.max_new_tokens, stop=self.stop_ids or None,
                            crop=False, **self.settings):
            self.token_ids.append(token)
            self.finished = token in self.stop_ids
            if self.finished:
                break
            text, self.finished = self._cut(_decode(self.tokenizer, self.token_ids))
            if self.finished:
                break
            yield from self._advance(_settled(text, self.template.stops))
        # the end: whatever was held back (half a character, half a stop string) is the reply
        ends = bool(self.token_ids) and self.token_ids[-1] in self.stop_ids
        ids = self.token_ids[:-1] if ends else self.token_ids
        yield from self._advance(self._cut(_decode(self.tokenizer, ids))[0])
        self.done = True

    def _cut(self, text: str) -> tuple[str, bool]:
        """(the text before the first stop string, whether there was one)."""
        cut = min((text.find(s) for s in self.template.stops if s in text), default=-1)
        return (text[:cut], True) if cut >= 0 else (text, False)

    def _advance(self, text: str) -> Iterator[str]:
        # Our decoders only change a reply's end as tokens arrive, so the new text extends
        # what was shown; a piece is handed out only then, and never taken back.
        if len(text) > len(self.text) and text.startswith(self.text):
            piece, self.text = text[len(self.text):], text
            yield piece


def reply_stream(model, tokenizer, history: Sequence[Turn], user_text: str,
                 max_new_tokens: int = 64, temperature: float = 0.0,
                 generator: torch.Generator | None = None,
                 template: ChatTemplate = CHAT_TEMPLATE, top_k: int | None = None,
                 ) -> ReplyStream:
    """A `ReplyStream`: iterate over it for the reply's text as it is written.

    temperature 0 is greedy (the same reply every time); above 0 it samples, reproducibly
    with a seeded `generator`. The reply ends at the template's end (not part of the text),
    after `max_new_tokens`, or at a stop string.

        run = reply_stream(model, tokenizer, history, "Who is Hamlet?")
        for piece in run:
            print(piece, end="")
        history += [Turn("user", "Who is Hamlet?"), Turn("assistant", run.text)]
    """
    return ReplyStream(model, tokenizer, history, user_text, max_new_tokens, temperature,
                       generator, template, top_k)


def reply(model, tokenizer, history: Sequence[Turn], user_text: str, max_new_tokens: int = 64,
          temperature: float = 0.0, generator: torch.Generator | None = None,
          template: ChatTemplate = CHAT_TEMPLATE, top_k: int | None = None) -> ReplyStream:
    """`reply_stream` read to the end: the finished ReplyStream (`.text`, `.finished`,
    `.dropped`)."""
    run = reply_stream(model, tokenizer, history, user_text, max_new_tokens, temperature,
                       generator, template, top_k)
    for _ in run:
        pass
    return run


# ------------------------------------------------------------------------------ bad input

class _EveryCharacter:
    """Stands for "any character": what a tokenizer trained on the whole web accepts."""

    def __contains__(self, ch: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "EVERY_CHARACTER"


EVERY_CHARACTER = _EveryCharacter()


@functools.lru_cache(maxsize=1)
def corpus_characters() -> frozenset[str]:
    """The characters of the course corpus's train split: all a course model ever read."""
    from utils.data import load_corpus, train_val_split

    return frozenset(train_val_split(load_corpus())[0])


def default_allowed(tokenizer) -> Collection[str]:
    """Characters a model with this tokenizer has seen: a character tokenizer's own; for a
    ChatTokenizer over a byte-level BPE (the course's chat model) those of the corpus it was
    trained on, since every byte encodes but most were never read; anything for another
    byte-level tokenizer (GPT-2's, trained on the web)."""
    if hasattr(tokenizer, "chars"):
        return set(tokenizer.chars)
    if isinstance(tokenizer, ChatTokenizer):
        return corpus_characters()
    return EVERY_CHARACTER


def _named(chars: Sequence[str]) -> str:
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in chars[:5])
    return shown + (f" and {len(chars) - 5} more" if len(chars) > 5 else "")


def check_message(tokenizer, text: str, max_chars: int = MAX_CHARS,
                  allowed: Collection[str] | None = None) -> str | None:
    """None when `text` can be sent; else one sentence saying what is wrong with it.

    Refused: an empty or blank message; one over `max_chars` characters (checked first, so a
    pasted book gets an answer at once); lone surrogates (half an emoji, which UTF-8 cannot
    write); characters outside `allowed` (default: `default_allowed(tokenizer)`), named.

    >>> from utils.tokenizers import CharTokenizer
    >>> check_message(CharTokenizer("abc "), "a cab") is None
    True
    >>> check_message(CharTokenizer("abc "), "abcd!")
    "The model never read 2 of these characters: 'd' (U+0064), '!' (U+0021). Leave them out."
    """
    if not isinstance(text, str):
        return f"A message is text, got {type(text).__name__}."
    if not text.strip():
        return "The message is empty: type something first."
    if len(text) > max_chars:
        return (f"The message has {len(text):,} characters; the limit is {max_chars:,} "
                "(the model reads a short context). Shorten it.")
    halves = list(dict.fromkeys(ch for ch in text if "\ud800" <= ch <= "\udfff"))
    if halves:
        return f"The message holds half a character (a lone surrogate {_named(halves)}): retype it."
    allowed = default_allowed(tokenizer) if allowed is None else allowed
    unknown = list(dict.fromkeys(ch for ch in text if ch not in allowed))
    if unknown:
        return (f"The model never read {len(unknown)} of these characters: {_named(unknown)}. "
                "Leave them out.")
    return None


# ---------------------------------------------------------------------------------- GPT-2

def _fetch_gpt2(name: str, cache_dir: str | None):
    """GPT-2's weights in our GPT and its vocabulary in our BPETokenizer (from the Hub or
    the local cache, whichever `hub_offline_unless_reachable` allows)."""
    from huggingface_hub import hf_hub_download

    from utils.gpt2_vocab import load_gpt2_vocab
    from utils.hf_convert import gpt_from_hf_pretrained

    files = [hf_hub_download(name, f, cache_dir=cache_dir) for f in ("vocab.json", "merges.txt")]
    model = gpt_from_hf_pretrained(name, **({"cache_dir": cache_dir} if cache_dir else {}))
    return model.eval(), load_gpt2_vocab(*files)


def load_gpt2_chat(timeout_s: float = 2.0, name: str = GPT2_NAME, cache_dir: str | None = None):
    """(model, tokenizer, GPT2_TEMPLATE) for GPT-2 124M in our GPT, or one line saying why not.

    The Hub is asked once, with a `timeout_s` socket timeout; when it does not answer (or
    HF_HUB_OFFLINE is set) and no copy is cached, the line comes back within about
    `timeout_s` seconds, without importing `transformers`. Nothing else ever raises.

        loaded = load_gpt2_chat()
        if isinstance(loaded, str):
            print(loaded)                     # offline: the chapter goes on without it
        else:
            model, tokenizer, template = loaded
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        from utils.hf_convert import hub_offline_unless_reachable

        with hub_offline_unless_reachable(timeout_s) as online:
            cached = isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir),
                                str)
            if not online and not cached:
                return (f"GPT-2 not loaded: huggingface.co did not answer within {timeout_s:g} s "
                        f"(or HF_HUB_OFFLINE is set) and no copy of {name!r} is cached.")
            model, tokenizer = _fetch_gpt2(name, cache_dir)
    except Exception as error:  # a notebook cell must go on: report in one line, don't raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"GPT-2 not loaded: {type(error).__name__}: {first_line}"
    return model, tokenizer, GPT2_TEMPLATE


@dataclass
class Conversation:
    """A history and the settings to continue it: `say(text)` replies and remembers.

    The smallest chat loop, what the widget does on each Send (minus the screen):

        chat = Conversation(model, tokenizer)
        print(chat.say("Who is Hamlet?").text)
    """
    model: object
    tokenizer: object
    template: ChatTemplate = CHAT_TEMPLATE
    history: list[Turn] = field(default_factory=list)

    def say(self, text: str, max_new_tokens: int = 64, temperature: float = 0.0,
            generator: torch.Generator | None = None) -> ReplyStream:
        run = reply(self.model, self.tokenizer, self.history, text, max_new_tokens,
                    temperature, generator, self.template)
        self.history += [Turn("user", text), Turn("assistant", run.text)]
        return run
