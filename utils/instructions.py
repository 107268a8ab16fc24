"""Instruction tuning: teach a pretrained model to answer requests (chapter 10).

A model that continues text becomes one that answers by supervised fine-tuning (SFT) on
examples of an instruction and the response we want, laid out with a fixed *prompt template*:

    <|instruction|>Which play is this from?\\n...passage...<|response|>Macbeth<|end|>
    `-------------------- prompt --------------------------'`-- response --'

The three markers are *special tokens*: new ids after the 76 characters of the shipped model
(`add_special_tokens` grows its embedding). The model is trained with the usual next-token
loss, but only on the response: the targets of prompt positions are set to IGNORE_INDEX
(`collate`), so the loss (`masked_lm_loss`) is the mean over response tokens. The model learns
to *answer*, not to write more questions. `evaluate_instructions` scores greedy answers by
exact match, against `majority_baseline`.

The dataset is built from the corpus by `data/build_instructions.py`; `load_instructions`
reads it. Preference tuning (DPO), the step after this one, is in `utils.preferences`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.paths import DATA_DIR

# F.cross_entropy skips targets equal to its ignore_index, whose default is -100; we use the
# same value, so `F.cross_entropy(..., ignore_index=IGNORE_INDEX)` and the default agree.
IGNORE_INDEX = -100

# Written with '<', '|' and '>', characters the shipped model's vocabulary does not have, so
# no plain text can ever spell one: a special token only appears where the template puts it.
INSTRUCTION, RESPONSE, END = "<|instruction|>", "<|response|>", "<|end|>"
SPECIAL_TOKENS = (INSTRUCTION, RESPONSE, END)

INSTRUCTIONS_FILE = DATA_DIR / "instructions.jsonl"


# ---------------------------------------------------------------------------- special tokens

class ChatTokenizer:
    """A tokenizer plus special tokens, which get the ids after the base tokenizer's ids.

    The base is a CharTokenizer (chapter 10) or a BPETokenizer without special tokens of its
    own (chapter 11): anything with `vocab_size`, `encode` and `decode`. `encode(text)` reads
    plain text only (a special token is never parsed out of text, so a user cannot inject
    one); `ids_of(token)` gives a special token's id; `decode` shows special ids by their
    names, or drops them with `skip_special=True`.

    >>> from utils.tokenizers import CharTokenizer
    >>> tok = ChatTokenizer(CharTokenizer("ab"))
    >>> tok.vocab_size, tok.ids_of(END), tok.decode([0, 4, 1])
    (5, 4, 'a<|end|>b')
    """

    def __init__(self, base, special_tokens: Sequence[str] = SPECIAL_TOKENS):
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a list of strings, got the string "
                            f"{special_tokens!r}")
        if len(set(special_tokens)) != len(special_tokens) or not special_tokens:
            raise ValueError(f"special_tokens must be distinct and not empty, got {special_tokens}")
        if getattr(base, "special_tokens", None):
            raise ValueError("the base tokenizer has special tokens of its own; pass one "
                             "without, so that plain text can never spell a special token")
        self.base = base
        if hasattr(base, "chars"):
            self.chars = base.chars
        self.special_tokens = {s: base.vocab_size + i for i, s in enumerate(special_tokens)}
        self.special_names = {i: s for s, i in self.special_tokens.items()}

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.special_tokens)

    def ids_of(self, token: str) -> int:
        if token not in self.special_tokens:
            raise ValueError(f"{token!r} is not a special token of this tokenizer; it has "
                             f"{list(self.special_tokens)}")
        return self.special_tokens[token]

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        # Runs of ordinary ids are decoded together: a BPE character may span two tokens.
        pieces, run = [], []
        for i in map(int, ids):
            if i in self.special_names:
                pieces.append(self.base.decode(run))
                run = []
                if not skip_special:
                    pieces.append(self.special_names[i])
            else:
                run.append(i)
        pieces.append(self.base.decode(run))
        return "".join(pieces)


@torch.no_grad()
def add_special_tokens(model: nn.Module, tokenizer,
                       special_tokens: Sequence[str] = SPECIAL_TOKENS,
                       ) -> tuple[nn.Module, ChatTokenizer]:
    """Give `model` one new token id per special token; return (model, ChatTokenizer).

    The token embedding grows by one row per new token; with tied weights the output layer
    is the same matrix, so it grows with it (an untied output layer is grown the same way).
    Each new row starts as the mean of the existing rows: a vector of the usual size, in the
    region the model's layers are used to, rather than noise the network has never seen. The
    old rows are copied unchanged, so for any text the logits of the old tokens are exactly
    what they were (the new tokens only add new logits, equal to the mean of the old ones).
    The model is changed in place and also returned.
    """
    if isinstance(tokenizer, ChatTokenizer):
        raise TypeError("tokenizer already has special tokens; pass the plain base tokenizer")
    chat = ChatTokenizer(tokenizer, special_tokens)
    old = model.embed.token
    if old.num_embeddings != tokenizer.vocab_size:
        raise ValueError(f"the model has {old.num_embeddings} token ids but the tokenizer has "
                         f"{tokenizer.vocab_size}: they do not belong together")
    tied = model.lm_head.weight is old.weight
    model.embed.token = _grown_embedding(old, len(special_tokens))
    model.embed.vocab_size = chat.vocab_size
    if tied:
        model.lm_head.weight = model.embed.token.weight     # still one matrix
    else:
        head = model.lm_head
        new_head = nn.Linear(head.in_features, chat.vocab_size, bias=head.bias is not None,
                             device=head.weight.device, dtype=head.weight.dtype)
        new_head.weight.copy_(_grown_rows(head.weight, len(special_tokens)))
        if head.bias is not None:
            new_head.bias.copy_(_grown_rows(head.bias[:, None], len(special_tokens))[:, 0])
        model.lm_head = new_head
    model.config.vocab_size = chat.vocab_size
    return model, chat


def _grown_rows(weight: torch.Tensor, n_new: int) -> torch.Tensor:
    mean = weight.mean(dim=0, keepdim=True)                         # [1, d]
    return torch.cat([weight, mean.expand(n_new, -1)], dim=0)      # [vocab + n_new, d]


def _grown_embedding(old: nn.Embedding, n_new: int) -> nn.Embedding:
    new = nn.Embedding(old.num_embeddings + n_new, old.embedding_dim,
                       device=old.weight.device, dtype=old.weight.dtype)
    new.weight.copy_(_grown_rows(old.weight, n_new))
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


# ----------------------------------------------------------------------------------- template

def format_prompt(tokenizer: ChatTokenizer, instruction: str) -> list[int]:
    """Token ids of the prompt: <|instruction|> instruction <|response|>.

    Ending the prompt with <|response|> tells the model that its turn starts here.
    """
    return ([tokenizer.ids_of(INSTRUCTION)] + tokenizer.encode(instruction)
            + [tokenizer.ids_of(RESPONSE)])


def encode_example(tokenizer: ChatTokenizer, instruction: str, response: str,
                   ) -> tuple[list[int], int]:
    """(ids of the whole example, length of its prompt). The response ends with <|end|>, so
    the model also learns when to stop."""
    prompt = format_prompt(tokenizer, instruction)
    return prompt + tokenizer.encode(response) + [tokenizer.ids_of(END)], len(prompt)


# ----------------------------------------------------------------------------------- batching

def collate(examples: Sequence[tuple[Sequence[int], int]], pad_id: int = 0,
            block_size: int | None = None, device: torch.device | str = "cpu",
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (ids, prompt_length) examples into inputs x [B, L] and targets y [B, L].

    As in pre-training, the target of each position is the next token: x = ids[:-1],
    y = ids[1:]. Then two kinds of target are set to IGNORE_INDEX, so the loss skips them:

    * prompt: a target that is still part of the prompt (the prompt is given, not learned);
      the first response token, predicted from <|response|>, is the first one kept;
    * padding: sequences are **right-padded** with `pad_id` to the longest one (L + 1 ids).

    Why right padding: every example then starts at position 0, as it does when the model
    answers one prompt at a time, so the learned position embeddings see what they will see
    at generation; and under the causal mask a real token never attends to the padding after
    it, so no attention mask is needed. (Batched generation pads on the left instead, so that
    all prompts end at the same column, and then needs a mask for the padding.)

    >>> x, y = collate([([1, 2, 3, 4], 2), ([5, 6, 7], 1)], pad_id=0)
    >>> x.tolist(), y.tolist()
    ([[1, 2, 3], [5, 6, 0]], [[-100, 3, 4], [6, 7, -100]])
    """
    if not examples:
        raise ValueError("examples: need at least one (ids, prompt_length) example")
    width = max(len(ids) for ids, _ in examples) - 1
    if block_size is not None and width > block_size:
        raise ValueError(f"examples: the longest example has {width + 1} tokens, more than "
                         f"block_size + 1 = {block_size + 1}; shorten it")
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(examples):
        if not 1 <= prompt_length < len(ids):
            raise ValueError(f"examples[{row}]: prompt_length must be in 1..{len(ids) - 1} (at "
                             f"least one prompt token and one response token), got {prompt_length}")
        ids = torch.as_tensor(list(ids), dtype=torch.long)
        n = len(ids) - 1
        x[row, :n] = ids[:-1]
        y[row, :n] = ids[1:]
        y[row, :prompt_length - 1] = IGNORE_INDEX     # targets ids[1 .. prompt_length - 1]
    return x.to(device), y.to(device)


def instruction_batches(tokenizer: ChatTokenizer, examples: Sequence[Instruction],
                        batch_size: int, steps: int, seed: int = 0,
                        device: torch.device | str = "cpu"):
    """Yield `steps` batches (x, y) of `batch_size` examples for instruction tuning.

    The examples are shuffled with `seed`, then taken in order, reshuffled after each pass,
    so every example is seen once per epoch and the same seed gives the same batches.
    """
    if batch_size < 1 or steps < 0:
        raise ValueError(f"batch_size must be >= 1 and steps >= 0, got {batch_size}, {steps}")
    encoded = [encode_example(tokenizer, e.instruction, e.response) for e in examples]
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(len(encoded), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        yield collate([encoded[i] for i in chosen], device=device)


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not IGNORE_INDEX (the response tokens).

    Every response token of the batch counts once, so a long response weighs more than a
    short one, as in pre-training. logits [B, T, V], targets [B, T].
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} "
                         "must agree on [B, T]")
    if not (targets != IGNORE_INDEX).any():
        raise ValueError("targets: every target is IGNORE_INDEX, so there is nothing to learn "
                         "(is the prompt as long as the whole example?)")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ------------------------------------------------------------------------------------- answers

@torch.no_grad()
def respond(model: nn.Module, tokenizer: ChatTokenizer, instruction: str,
            max_new_tokens: int = 40) -> tuple[str, bool]:
    """(the model's greedy response to `instruction`, whether it finished with <|end|>).

    Greedy (always the most likely token) makes answers deterministic, which is what exact
    match needs. Stops at <|end|> (not included in the text), after `max_new_tokens`, or when
    the context of block_size tokens is full.
    """
    from utils.generation import generate

    prompt = format_prompt(tokenizer, instruction)
    room = model.config.block_size - len(prompt)
    if room < 1:
        raise ValueError(f"instruction: its prompt has {len(prompt)} tokens, leaving no room "
                         f"to answer within block_size={model.config.block_size}")
    device = next(model.parameters()).device
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    end = tokenizer.ids_of(END)
    out = generate(model, idx, min(max_new_tokens, room), temperature=0, stop=end, crop=False)
    new = out[0, len(prompt):].tolist()
    finished = bool(new) and new[-1] == end
    return tokenizer.decode(new[:-1] if finished else new, skip_special=True), finished


def answer(model: nn.Module, tokenizer: ChatTokenizer, instruction: str,
           max_new_tokens: int = 40) -> str:
    """The model's greedy response to `instruction`, up to <|end|> (see `respond`)."""
    return respond(model, tokenizer, instruction, max_new_tokens)[0]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions that are exactly their reference, character for character.

    >>> exact_match(["Hamlet", "Macbeth ", "Lear"], ["Hamlet", "Macbeth", "Othello"])
    0.3333333333333333
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references "
                         f"({len(references)}) must have the same length")
    if not references:
        raise ValueError("exact_match needs at least one prediction")
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


UNFINISHED = "\u2026"   # shown after an answer that was stopped before its <|end|>


def majority_baseline(train: Sequence[Instruction], test: Sequence[Instruction]) -> dict[str, float]:
    """Exact match of always giving each task's most common training answer: the score an
    instruction-tuned model must beat to show it learned more than the likeliest answer."""
    scores = {}
    for task in sorted({e.task for e in test}):
        common = Counter(e.response for e in train if e.task == task).most_common(1)[0][0]
        references = [e.response for e in test if e.task == task]
        scores[task] = exact_match([common] * len(references), references)
    return scores


def evaluate_instructions(model: nn.Module, tokenizer: ChatTokenizer,
                          examples: Sequence[Instruction],
                          ) -> tuple[dict[str, float], list[str]]:
    """Exact-match accuracy of greedy answers: ({task: accuracy, ..., "all": overall},
    the answers in order).

    A correct answer is the reference followed by <|end|>, so the model is given at most
    len(reference) + 1 new tokens: anything longer could not match. An answer stopped there
    without its <|end|> gets UNFINISHED ("…") appended, so it never counts as correct and the
    reader can see that the model had not finished.
    """
    answers = []
    for ex in examples:
        text, finished = respond(model, tokenizer, ex.instruction, len(ex.response) + 1)
        answers.append(text if finished else text + UNFINISHED)
    by_task = defaultdict(lambda: ([], []))
    for ex, got in zip(examples, answers, strict=True):
        by_task[ex.task][0].append(got)
        by_task[ex.task][1].append(ex.response)
    scores = {task: exact_match(got, want) for task, (got, want) in sorted(by_task.items())}
    scores["all"] = exact_match(answers, [ex.response for ex in examples])
    return scores, answers


# ----------------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Instruction:
    """One instruction-tuning example (a line of data/instructions.jsonl)."""

    task: str          # which kind of question: "speaker", "play", "last_word"
    instruction: str
    response: str
    split: str         # "train" or "test" (held out)


def read_jsonl(path, cls, split: str | None):
    """The rows of a shipped JSON-lines dataset as `cls` objects (all, or one split); a
    ValueError names the line that does not fit `cls`."""
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None (both), got {split!r}")
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing from data/; rebuild it with "
                                f"data/build_{path.stem}.py (see data/README.md)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                row = cls(**json.loads(line))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path.name}, line {number}: not a valid {cls.__name__} "
                                 f"({error})") from None
            if split is None or row.split == split:
                rows.append(row)
    return rows


def load_instructions(split: str | None = None) -> list[Instruction]:
    """The shipped instruction dataset (all of it, or split="train" / "test")."""
    return read_jsonl(INSTRUCTIONS_FILE, Instruction, split)
