"""Classification fine-tuning: a pretrained GPT turned into a classifier (chapter 10).

A language model already reads a passage into one vector per position. A causal model's
*last* position has attended to every character before it, so its hidden state (after the
final norm, as the language-model head would see it) summarises the whole passage. Put a
small linear layer on that vector and train it to output a class instead of a next character:

    ids [B, T] -> embedding -> blocks -> final norm -> last position [B, n_embd] -> head -> [B, K]

Which weights to train is the question this module lets you measure (`set_trainable`):

    "head"        only the new linear layer (the GPT is a fixed feature extractor)
    "last_block"  the head, the last block and the final norm
    "all"         every weight (full fine-tuning)
    "lora"        the head and low-rank adapters in the attention layers (utils.lora)

Frozen layers compute the same thing at every step, so `train_classifier` runs them once
over the training set and trains from their output: training only the head then costs
almost nothing, and training the last block costs one block's work instead of six.

Baselines to beat: always answering the most common class (`majority_baseline`), and a
softmax regression on the passage's character frequencies (`bag_of_characters`,
`train_logistic`), which sees *which* characters occur but not in what order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils.paths import DATA_DIR

TRAINABLE = ("head", "last_block", "all", "lora")
# The learning rate each variant trains with: a new head from scratch takes big steps; the
# more pretrained weights move, the gentler the steps (full fine-tuning the gentlest).
VARIANTS = {"head": 1e-2, "last_block": 1e-3, "all": 5e-4, "lora": 3e-3}
LABELS = ("shuffled", "as written")
PASSAGES_FILE = DATA_DIR / "classification.jsonl"


# ------------------------------------------------------------------------------------- data

def load_records(path: Path | str = PASSAGES_FILE) -> list[dict]:
    """The passage records of data/classification.jsonl (built and documented by
    data/build_classification.py): text, label (1 = as written, 0 = shuffled), play, split
    ("train"/"test"), seen_in_pretraining."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with "
                                "`python data/build_classification.py`")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                if not {"text", "label", "split"} <= set(record):
                    raise KeyError("text, label and split are required")
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(f"{path.name}, line {number}: not a passage record ({error})") from None
            records.append(record)
    return records


def encode_records(records: list[dict], split: str, tokenizer):
    """(ids [N, T], labels [N], seen_in_pretraining [N] bool) of the records of one split."""
    chosen = [r for r in records if r["split"] == split]
    if not chosen:
        raise ValueError(f"no records in split {split!r}; the splits are "
                         f"{sorted({r['split'] for r in records})}")
    x = encode_passages([r["text"] for r in chosen], tokenizer)
    y = torch.tensor([int(r["label"]) for r in chosen])
    seen = torch.tensor([bool(r.get("seen_in_pretraining", True)) for r in chosen])
    return x, y, seen


def encode_passages(texts: list[str], tokenizer) -> torch.Tensor:
    """Token ids [N, T] of passages that all have the same length T."""
    lengths = {len(t) for t in texts}
    if len(lengths) != 1:
        raise ValueError(f"passages must all have the same length to stack them, got lengths "
                         f"{sorted(lengths)[:5]}; cut them to one length first")
    return torch.tensor([tokenizer.encode(t) for t in texts], dtype=torch.long)


# ------------------------------------------------------------------------------- classifier

class GPTClassifier(nn.Module):
    """A GPT body with a linear head on its last position's final-norm hidden state.

    `forward(idx [B, T]) -> logits [B, n_classes]`. The base is used as is (its own
    embedding, blocks and final norm); its language-model head is not used.

    >>> from utils.model import GPT, GPTConfig
    >>> gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=16))
    >>> GPTClassifier(gpt, n_classes=3)(torch.randint(0, 10, (4, 8))).shape
    torch.Size([4, 3])
    """

    def __init__(self, base: nn.Module, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.base = base
        self.n_classes = n_classes
        self.head = nn.Linear(base.config.n_embd, n_classes)
        # small initial logits: the classifier starts close to a uniform guess
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def hidden_after(self, idx: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """The residual stream [B, T, n_embd] after the embedding and the first n_blocks blocks."""
        x = self.base.embed(idx, start=0)
        bias = self.base.attention_bias(idx.shape[1])
        for block in self.base.blocks[:n_blocks]:
            x = block(x, mask=bias, offset=0)
        return x

    def logits_from(self, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """Finish the forward pass from `hidden_after(idx, n_blocks)`: the remaining blocks,
        the final norm on the last position, then the head -> [B, n_classes]."""
        bias = self.base.attention_bias(x.shape[1])
        for block in self.base.blocks[n_blocks:]:
            x = block(x, mask=bias, offset=0)
        last = self.base.norm(x[:, -1])                     # [B, n_embd]: it has read every token
        return self.head(last)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        n = len(self.base.blocks)
        return self.logits_from(self.hidden_after(idx, n), n)


def set_trainable(classifier: GPTClassifier, which: str, rank: int = 8, alpha: float = 16,
                  targets: tuple[str, ...] = ("qkv", "proj")) -> GPTClassifier:
    """Choose what trains (see TRAINABLE); everything else gets requires_grad=False.

    The head always trains: it is new. "lora" wraps the base's `targets` layers with
    utils.lora.apply_lora (in place, once: start from a fresh base to try another setting).
    Returns the classifier.
    """
    if which not in TRAINABLE:
        raise ValueError(f"which must be one of {TRAINABLE}, got {which!r}")
    base = classifier.base
    base.requires_grad_(which == "all")
    if which == "last_block":
        base.blocks[-1].requires_grad_(True)
        base.norm.requires_grad_(True)
    elif which == "lora":
        from utils.lora import apply_lora, lora_layers

        if not lora_layers(base):
            apply_lora(base, rank=rank, alpha=alpha, targets=targets)
        for layer in lora_layers(base).values():
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
    classifier.head.requires_grad_(True)
    return classifier


def frozen_blocks(classifier: GPTClassifier) -> int | None:
    """How many leading blocks (after a frozen embedding) have no trainable parameter; None
    when the embedding itself trains (then nothing can be computed ahead)."""
    base = classifier.base
    if any(p.requires_grad for p in base.embed.parameters()):
        return None
    n = 0
    for block in base.blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        n += 1
    return n


@dataclass
class Hidden:
    """The residual stream [N, T, n_embd] of N passages after the first `blocks` blocks."""

    states: torch.Tensor
    blocks: int

    def __len__(self) -> int:
        return len(self.states)


@torch.no_grad()
def run_frozen(classifier: GPTClassifier, x: torch.Tensor, blocks: int | None = None,
               batch_size: int = 128) -> Hidden:
    """Run the embedding and the first `blocks` blocks (default: all the frozen ones) over
    ids x [N, T] once. Classifiers that share those frozen weights (copies of one base) can
    all train and predict from the result."""
    blocks = frozen_blocks(classifier) if blocks is None else blocks
    if blocks is None:
        raise ValueError("the embedding trains, so nothing can be computed ahead")
    device = next(classifier.parameters()).device
    states = [classifier.hidden_after(chunk.to(device), blocks) for chunk in x.split(batch_size)]
    return Hidden(torch.cat(states), blocks)


def _check_hidden(classifier: GPTClassifier, inputs: Hidden) -> None:
    frozen = frozen_blocks(classifier)
    if frozen is None or inputs.blocks > frozen:
        raise ValueError(f"inputs are hidden states after {inputs.blocks} blocks, but this "
                         f"classifier trains {'its embedding' if frozen is None else f'block {frozen}'}"
                         "; pass token ids instead")


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that require grad (a shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_classifier(classifier: GPTClassifier, inputs: torch.Tensor | Hidden, y: torch.Tensor,
                     steps: int, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
                     seed: int = 0) -> list[float]:
    """Train the parameters that require grad for `steps` AdamW steps on random mini-batches
    (seeded); return the loss of every step.

    `inputs` are token ids [N, T], or a `Hidden` from `run_frozen`. Given ids, the frozen
    prefix of the network (`frozen_blocks`) is run once over all of them, without gradients,
    and each step starts from its stored output: the same result as running the whole model
    every step, for a fraction of the time.
    """
    params = [p for p in classifier.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad (call set_trainable)")
    if len(inputs) != len(y) or len(y) == 0:
        raise ValueError(f"inputs and y must hold the same, non-zero number of passages, got "
                         f"{len(inputs)} and {len(y)}")
    if not isinstance(inputs, Hidden) and frozen_blocks(classifier) is not None:
        inputs = run_frozen(classifier, inputs)
    if isinstance(inputs, Hidden):
        _check_hidden(classifier, inputs)
    device = next(classifier.parameters()).device
    x = (inputs.states if isinstance(inputs, Hidden) else inputs).to(device)
    y = torch.as_tensor(y).to(device)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator).to(device)
        logits = _logits(classifier, inputs, x[rows])
        loss = F.cross_entropy(logits, y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    classifier.eval()
    return losses


def _logits(classifier: GPTClassifier, inputs: torch.Tensor | Hidden, batch: torch.Tensor):
    return classifier.logits_from(batch, inputs.blocks) if isinstance(inputs, Hidden) else classifier(batch)


@torch.no_grad()
def predict(classifier: GPTClassifier, inputs: torch.Tensor | Hidden,
            batch_size: int = 128) -> torch.Tensor:
    """Predicted class of every passage: `inputs` are ids [N, T] or a `Hidden`."""
    if isinstance(inputs, Hidden):
        _check_hidden(classifier, inputs)
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    x = inputs.states if isinstance(inputs, Hidden) else inputs
    preds = torch.cat([_logits(classifier, inputs, chunk.to(device)).argmax(-1).cpu()
                       for chunk in x.split(batch_size)])
    classifier.train(was_training)
    return preds


# -------------------------------------------------------------------------------- measuring

def accuracy(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of predictions equal to the true labels.

    >>> accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
    0.75
    """
    pred, true = torch.as_tensor(pred), torch.as_tensor(true)
    if pred.shape != true.shape or pred.numel() == 0:
        raise ValueError(f"pred and true must have the same non-empty shape, got "
                         f"{tuple(pred.shape)} and {tuple(true.shape)}")
    return (pred == true).float().mean().item()


def confusion_matrix(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts [n_classes, n_classes]: row = true class, column = predicted class.

    The diagonal holds the correct answers; row i off the diagonal shows what class i is
    mistaken for.

    >>> confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    tensor([[1, 0, 0],
            [0, 1, 0],
            [0, 1, 1]])
    """
    pred, true = torch.as_tensor(pred).long(), torch.as_tensor(true).long()
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(true.shape)}")
    for name, t in (("pred", pred), ("true", true)):
        if t.numel() and not 0 <= int(t.min()) <= int(t.max()) < n_classes:
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    flat = true.flatten() * n_classes + pred.flatten()
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)


def majority_baseline(train_labels: torch.Tensor, test_labels: torch.Tensor) -> tuple[int, float]:
    """(most common training class, test accuracy of always answering it); ties go to the
    smallest class id."""
    train_labels = torch.as_tensor(train_labels).long()
    majority = int(torch.bincount(train_labels).argmax())
    test_labels = torch.as_tensor(test_labels).long()
    return majority, accuracy(torch.full_like(test_labels, majority), test_labels)


def bag_of_characters(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Character frequencies [N, vocab_size] of each row of ids [N, T]; each row sums to 1.

    >>> bag_of_characters(torch.tensor([[0, 0, 2, 1]]), 3)
    tensor([[0.5000, 0.2500, 0.2500]])
    """
    counts = torch.zeros(ids.shape[0], vocab_size)
    counts.scatter_add_(1, ids.long().cpu(), torch.ones(ids.shape, dtype=torch.float))
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


class LogisticRegression(nn.Module):
    """Softmax regression on standardised features: logits = W ((x - mean) / std) + b.

    The mean and std come from the training features, so a rare character's frequency
    counts as much as the space's.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def train_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int,
                   steps: int = 300, lr: float = 0.05, weight_decay: float = 0.01,
                   seed: int = 0) -> LogisticRegression:
    """Fit a `LogisticRegression` with full-batch AdamW for a fixed number of steps."""
    features, labels = features.float(), torch.as_tensor(labels).long()
    torch.manual_seed(seed)
    model = LogisticRegression(features.mean(0), features.std(0).clamp(min=1e-6), n_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(model(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def plot_confusion_matrix(cm: torch.Tensor, names: list[str], title: str, ax=None):
    """Draw a confusion matrix with counts in the cells; returns the matplotlib axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            value = int(cm[i, j])
            if value:
                ax.text(j, i, value, ha="center", va="center",
                        color="white" if value > cm.max() / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted play")
    ax.set_ylabel("true play")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="passages")
    return ax
