"""The command line of the trainer: `python -m utils.train` (chapter 07).

    python -m utils.train --preset shakespeare-char
    python -m utils.train --preset shakespeare-char --resume          # after an interruption
    python -m utils.train --preset tiny --max-steps 50 --lr 1e-3      # any TrainConfig field
    torchrun --nproc_per_node=2 -m utils.train --preset shakespeare-char   # several processes

It reads a corpus from data/, trains a character-level GPT (with --bpe-vocab N, one on the
course's BPE tokens) with `utils.trainer.train`, and writes a resumable checkpoint.pt and the
final weights (model.safetensors + model.json, see `utils.pretrained`) under --out-dir. Every
TrainConfig field is a flag: `--help` lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from utils.bpe_tokenizer import pretrained_bpe
from utils.data import load_corpus, train_val_split
from utils.device import get_device, machine_description
from utils.distributed import process_rank, world_size
from utils.evaluation import text_bits_per_char
from utils.paths import REPO_ROOT, RUNS_DIR
from utils.pretrained import save_pretrained
from utils.tokenizers import CharTokenizer
from utils.train_config import PRESETS, TrainConfig
from utils.trainer import TrainResult, build_model, resolve_device, train


def default_out_dir(name: str, config: TrainConfig) -> Path:
    """runs/train/<preset>_L<layers>_d<width>_T<block>_s<steps>[_muon]: named after what it
    holds (a Muon run gets its own folder: it cannot resume an AdamW checkpoint)."""
    optimizer = "" if config.optimizer == "adamw" else f"_{config.optimizer}"
    return (RUNS_DIR / "train" / f"{name}_L{config.n_layer}_d{config.n_embd}"
            f"_T{config.block_size}_s{config.max_steps}{optimizer}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m utils.train",
        description="Train a character-level GPT on the course corpus. A preset gives every "
                    "setting (a larger one on CUDA); each flag below overrides one. Writes a "
                    "resumable checkpoint.pt and the final weights (model.safetensors + "
                    "model.json) under --out-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="shakespeare-char", choices=sorted(PRESETS),
                        help="named configuration to start from")
    parser.add_argument("--corpus", default="shakespeare", help="corpus in data/ to train on")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write the checkpoint and the final weights (default: "
                             "runs/train/<preset>_L.._d.._T.._s<max_steps>)")
    parser.add_argument("--bpe-vocab", type=int, default=0,
                        help="0: one token per character; N: the course's BPE tokenizer "
                             "(chapter 01) with N tokens, trained on the train split "
                             "(utils.bpe_tokenizer.pretrained_bpe)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out-dir>/checkpoint.pt if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f.metadata["help"] + " (default: from the preset)")
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=None,
                                help=f.metadata["help"] + " (default: from the preset)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    device_name = overrides.get("device", "auto")
    kind = "cuda" if (device_name == "auto" and torch.cuda.is_available()) else (
        get_device(None if device_name == "auto" else device_name).type)
    by_device = PRESETS[args.preset]
    settings = by_device.get(kind, by_device["cpu"])
    return TrainConfig(**{**settings, **overrides})


def run_from_args(argv: list[str] | None = None) -> TrainResult:
    """What `python -m utils.train` does; returns the TrainResult (rank 0 writes the files)."""
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available()
                                             else "gloo")
    config = config_from_args(args)
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(
        args.preset + (f"_bpe{args.bpe_vocab}" if args.bpe_vocab else ""), config)
    if not out_dir.is_absolute():
        out_dir = Path.cwd() / out_dir
    text = load_corpus(args.corpus)
    # Split the text, then encode each part: the validation set is the same characters
    # whatever the tokenizer, so bits per character compare fairly.
    train_text, val_text = train_val_split(text)
    if args.bpe_vocab:
        if args.corpus != "shakespeare":
            raise SystemExit("--bpe-vocab trains its tokenizer on the shakespeare corpus only")
        tokenizer = pretrained_bpe(args.bpe_vocab)
    else:
        tokenizer = CharTokenizer(text)
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    model = build_model(config, tokenizer.vocab_size)
    rank = process_rank()
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{args.preset}: {n_params:,} parameters, {config.max_steps} steps of "
              f"{config.tokens_per_step:,} tokens on {resolve_device(config)} "
              f"({world_size()} process(es)); writing to {_shown(out_dir)}", flush=True)
    result = train(model, train_ids, val_ids, config, checkpoint_path=out_dir / "checkpoint.pt",
                   resume=args.resume, progress=not args.no_progress)
    if rank == 0:
        record = {
            "command": "python -m utils.train " + " ".join(shlex.quote(a) for a in (
                sys.argv[1:] if argv is None else argv)),
            "machine": machine_description(),
            "torch": torch.__version__,
            "seconds_this_session": round(result.seconds, 1),
            "steps": result.steps,
            "tokens_per_step": config.tokens_per_step,
            "final_train_loss": round(result.final_train_loss, 4),
            "final_val_loss": round(result.final_val_loss, 4),
            "val_bits_per_char": round(text_bits_per_char(
                model, tokenizer, val_text, config.block_size,
                device=resolve_device(config)), 4),
            "chars_per_token": {"train": round(len(train_text) / len(train_ids), 4),
                                "val": round(len(val_text) / len(val_ids), 4)},
            "train_config": asdict(result.config),
            "history": result.history,
        }
        save_pretrained(out_dir / "model.safetensors", model, tokenizer, record)
        print(f"done: {result.steps} steps, train {result.final_train_loss:.4f}, "
              f"val {result.final_val_loss:.4f}, {result.seconds:.0f} s; weights in "
              f"{_shown(out_dir / 'model.safetensors')}", flush=True)
    if distributed:
        torch.distributed.barrier()
    return result


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (no machine paths in logs)."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    try:
        run_from_args(argv)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
