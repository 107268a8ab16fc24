"""Trained models on disk: save a GPT with its tokenizer, load it back (chapter 07).

The course ships one trained model, `data/checkpoints/shakespeare-char.safetensors`: a
character-level GPT trained by `python -m utils.train` (data/README.md records the command,
the machine, the time and the losses). Later chapters and widgets start from it:

    model, tokenizer = load_pretrained("shakespeare-char")

Weights are stored as **safetensors**: a JSON header and raw tensor bytes, with no pickle,
so loading a file can never run code. The header's metadata carries what is needed to
rebuild the model (its `GPTConfig`, the tokenizer's characters) and a checksum of the
weights, so a damaged file is refused with a message naming it instead of producing a
model that silently writes nonsense. A `.json` file next to the weights holds the
human-readable record of the training run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.bpe_tokenizer import BPETokenizer
from utils.paths import DATA_DIR
from utils.tokenizers import CharTokenizer

PRETRAINED_FORMAT = "transformers-course/gpt"
CHECKPOINT_DIR = DATA_DIR / "checkpoints"
# the course's model, the small draft model that speculative decoding pairs with it
# (chapter 09; same tokenizer and context length), and the GPT on the course's own BPE
# tokens with its instruction-tuned and preference-tuned versions (chapter 11)
SHIPPED = ("shakespeare-char", "shakespeare-char-draft", "shakespeare-bpe", "shakespeare-bpe-sft",
           "shakespeare-bpe-dpo")


class PretrainedError(RuntimeError):
    """A weights file that cannot be used: truncated, corrupted, or not one of ours."""


def save_pretrained(path: Path | str, model: nn.Module, tokenizer,
                    record: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights to `path` (.safetensors) and `record` to `path` with .json.

    Both are written to a temporary name and renamed into place.
    """
    from safetensors.torch import save_model

    from utils.checkpoints import checksum

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": PRETRAINED_FORMAT,
        "config": json.dumps(asdict(model.config)),
        "tokenizer": json.dumps(tokenizer_state(tokenizer)),
        "checksum": checksum(_cpu_state(model)),
    }
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # save_model stores a tied matrix (token embedding = output layer) once
    save_model(model, str(partial), metadata=metadata)
    os.chmod(partial, 0o644)
    os.replace(partial, path)
    if record is not None:
        info = path.with_suffix(".json")
        partial = info.with_name(f".{info.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps({**record, "config": asdict(model.config),
                                       "vocab_size": tokenizer.vocab_size}, indent=2) + "\n")
        os.replace(partial, info)
    return path


def export_checkpoint(checkpoint_path: Path | str, out_path: Path | str, tokenizer: CharTokenizer,
                      record: dict[str, Any] | None = None) -> Path:
    """Turn a trainer checkpoint (weights + optimizer + curves) into a weights-only
    safetensors file, e.g. to ship the latest checkpoint of a run that was stopped early."""
    from utils.checkpoints import load_checkpoint
    from utils.model import GPT, GPTConfig

    state = load_checkpoint(checkpoint_path)
    if state["model_config"] is None:
        raise PretrainedError(f"{checkpoint_path} holds no model config (not a GPT run)")
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    record = {**(record or {}), "steps": state["step"], "history": state["history"]}
    return save_pretrained(out_path, model, tokenizer, record)


def load_model_file(path: Path | str, device: torch.device | str = "cpu",
                    ) -> tuple[nn.Module, CharTokenizer, dict[str, str]]:
    """(model in eval mode on `device`, tokenizer, metadata) from a file `save_pretrained` wrote.

    Raises FileNotFoundError, or PretrainedError naming the file when it is truncated,
    corrupted or foreign.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    from utils.checkpoints import checksum
    from utils.model import GPT, GPTConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise PretrainedError(f"cannot read {path}: it is not a complete safetensors file "
                              f"(truncated or corrupted?): {error}") from None
    if metadata.get("format") != PRETRAINED_FORMAT:
        raise PretrainedError(f"{path} is a safetensors file but not a model saved by "
                              f"utils.pretrained (its metadata has no format "
                              f"{PRETRAINED_FORMAT!r}; found keys {sorted(metadata)})")
    try:
        config = GPTConfig(**json.loads(metadata["config"]))
        tokenizer = tokenizer_from_state(json.loads(metadata["tokenizer"]))
    except (KeyError, TypeError, ValueError) as error:
        raise PretrainedError(f"{path}: its metadata is damaged ({type(error).__name__}: "
                              f"{error})") from None
    model = GPT(config)
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, RuntimeError, ValueError) as error:
        raise PretrainedError(f"cannot load the weights of {path}: {error}") from None
    if checksum(_cpu_state(model)) != metadata.get("checksum"):
        raise PretrainedError(f"{path} is corrupted: its weights do not match the checksum "
                              "stored when it was saved")
    return model.to(device).eval(), tokenizer, metadata


def pretrained_path(name: str) -> Path:
    if name not in SHIPPED:
        raise ValueError(f"unknown pretrained model {name!r}; shipped: {list(SHIPPED)}")
    return CHECKPOINT_DIR / f"{name}.safetensors"


def load_pretrained(name: str = "shakespeare-char", device: torch.device | str = "cpu",
                    ) -> tuple[nn.Module, CharTokenizer]:
    """The shipped model `name` and its tokenizer, ready to generate (eval mode).

    >>> model, tokenizer = load_pretrained("shakespeare-char")
    >>> model.config.vocab_size == tokenizer.vocab_size
    True
    """
    model, tokenizer, _ = load_model_file(pretrained_path(name), device)
    return model, tokenizer


def pretrained_record(name: str = "shakespeare-char") -> dict[str, Any]:
    """How the shipped model was trained: command, machine, time, losses (its .json file)."""
    return json.loads(pretrained_path(name).with_suffix(".json").read_text())


def tokenizer_state(tokenizer) -> dict[str, Any]:
    """What the weights file stores of its tokenizer: the characters, or the BPE merges, and
    for an instruction-tuned model the special tokens added after them (a ChatTokenizer)."""
    from utils.instructions import ChatTokenizer

    if isinstance(tokenizer, ChatTokenizer):
        return {"type": "chat", "base": tokenizer_state(tokenizer.base),
                "special_tokens": list(tokenizer.special_tokens)}
    if isinstance(tokenizer, BPETokenizer):
        return {"type": "bpe", **tokenizer.state()}
    return {"type": "char", "chars": tokenizer.chars}


def tokenizer_from_state(state: dict[str, Any]):
    """The tokenizer `tokenizer_state` describes (ValueError or KeyError when damaged)."""
    from utils.instructions import ChatTokenizer

    if state["type"] == "chat":
        return ChatTokenizer(tokenizer_from_state(state["base"]), state["special_tokens"])
    if state["type"] == "char":
        return CharTokenizer("".join(state["chars"]))
    if state["type"] == "bpe":
        return BPETokenizer.from_state({k: v for k, v in state.items() if k != "type"})
    raise ValueError(f"unknown tokenizer type {state['type']!r}")


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
