"""The course corpus and how batches are cut from it.

One convention holds everywhere in the course: the **last 10%** of the text is the
validation set. Splitting by position (not at random) keeps validation text unseen as a
whole passage, so the validation loss measures generalisation, not memorised neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from utils.paths import DATA_DIR

# name -> file in data/. "sonnets" is chapter 10's fine-tuning target: text the shipped model
# never read, written with the same 76 characters as the plays.
CORPORA = {"shakespeare": "shakespeare.txt", "sonnets": "sonnets.txt"}
VAL_FRACTION = 0.1

T = TypeVar("T", str, torch.Tensor, list)


def load_corpus(name: str = "shakespeare") -> str:
    """Return the text of a shipped corpus (see data/README.md for where it comes from).

    >>> text = load_corpus()
    >>> text[:26]
    'HAMLET, PRINCE OF DENMARK\\n'
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; available: {sorted(CORPORA)}")
    path = DATA_DIR / CORPORA[name]
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing from data/; rebuild it with "
                                "data/prepare.py (see data/README.md)")
    return path.read_text(encoding="utf-8")


def train_val_split(data: T, val_fraction: float = VAL_FRACTION) -> tuple[T, T]:
    """Split a sequence into (train, validation): validation is the last `val_fraction`.

    Works on strings, lists and tensors alike, so it can split text or token ids.

    >>> train_val_split("abcdefghij")
    ('abcdefghi', 'j')
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_train = int(len(data) * (1.0 - val_fraction))
    return data[:n_train], data[n_train:]


def get_batch(
    data: torch.Tensor | Sequence[int],
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` random windows of `block_size` tokens, and their targets.

    The target at every position is the next token, so `y[:, t] == x[:, t + 1]`: one window
    gives `block_size` next-token prediction examples at once.

    >>> x, y = get_batch(torch.arange(100), batch_size=2, block_size=4,
    ...                  generator=torch.Generator().manual_seed(0))
    >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
    (torch.Size([2, 4]), True)
    """
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be at least 1, got "
                         f"block_size={block_size}, batch_size={batch_size}")
    data = torch.as_tensor(data, dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D sequence of token ids, got shape {tuple(data.shape)}")
    if len(data) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens to cut a window, "
                         f"got {len(data)}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[s : s + block_size] for s in starts])
    y = torch.stack([data[s + 1 : s + 1 + block_size] for s in starts])
    return x.to(device), y.to(device)
