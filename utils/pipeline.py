"""The whole pipeline in one command: tokenizer -> pre-training -> instruction tuning ->
preference tuning -> report card (chapter 11).

    python -m utils.pipeline --preset tiny            # seconds: the test runs it
    python -m utils.pipeline --preset cpu             # the shipped models' recipe, about an hour
    python -m utils.pipeline                          # cpu, or gpu on a CUDA machine
    python -m utils.pipeline --preset cpu --from sft  # redo the tuning and what follows it

Each stage is one call into the modules the chapters built, and writes one file under
runs/pipeline/<preset>/ (or --out-dir):

    tokenizer   tokenizer.json              BPETokenizer.train on the train split's text
    pretrain    pretrain/model.safetensors  utils.trainer.train (+ its resumable checkpoint.pt)
    sft         sft/model.safetensors       add_special_tokens, then utils.tuning.instruction_tune
    dpo         dpo/model.safetensors       utils.tuning.preference_tune, from the SFT model, on
                                            rule-made pairs and the SFT model's own mistakes
    report      report_card.md              utils.report_card on these three models

A stage whose file exists is skipped ("done already, skipped"), so a stopped run picks up
where it was: an interrupted pre-training continues from its checkpoint, exactly. Once a
stage runs, every stage after it runs too, since its input changed. `--from STAGE` forces
that stage (its old files, checkpoint included, are deleted) and all after it.

The settings of every stage are in PRESETS below; pipeline.json in the output folder records
those a folder was made with, and a run with other settings refuses to mix them in.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from utils.paths import REPO_ROOT, RUNS_DIR, write_text_atomic
from utils.train_config import PRESETS as TRAIN_PRESETS

STAGES = ("tokenizer", "pretrain", "sft", "dpo", "report")

# ---------------------------------------------------------------- the presets: one place
# vocab_size   BPE tokens (256 bytes + merges)
# train        TrainConfig fields of the pre-training (utils.train_config)
# sft, dpo     keyword arguments of utils.tuning.instruction_tune / preference_tune
# own_mistakes DPO trains on the rule-made pairs of data/chat_preferences.jsonl and on the
#              SFT model's own mistakes (`mistake_pairs`) on the prompts of the first this
#              many of them (None: all, as data/build_tuned_models.py does)
# report       utils.report_card: limit (held-out characters for bits/char) and task_limit
#              (held-out prompts per task and preference pairs); None = all of them
#
# "cpu" is the recipe of the shipped models: the BPE GPT (shakespeare-bpe: the
# shakespeare-char training preset on 2048 BPE tokens, with SHIPPED_PRETRAIN's changes) and
# its tuned versions (shakespeare-bpe-sft/-dpo, data/build_tuned_models.py's SFT and DPO).
# TO CONFIRM by the lead: these three must stay equal to what made the shipped files
# (data/checkpoints/shakespeare-bpe.json's train_config; build_tuned_models.py).
SHIPPED_PRETRAIN = dict(max_steps=1000)
SHIPPED_SFT = dict(steps=600, batch_size=16, lr=1e-3, final_lr=1e-5, seed=0, max_history=2)
SHIPPED_DPO = dict(steps=150, batch_size=8, lr=1e-4, beta=0.1, nll_weight=1.0, seed=0)

PRESETS: dict[str, dict[str, Any]] = {
    # Well under a minute on one CPU thread: a 2-block x 32 GPT, a few dozen steps a stage.
    # It learns little, but every stage really runs. 512 tokens and a 256-token context, so
    # the longest chat example fits (149 tokens at 512, 206 at 300 BPE tokens).
    "tiny": {
        "vocab_size": 512,
        "train": dict(n_layer=2, n_head=2, n_embd=32, block_size=256, dropout=0.0,
                      batch_size=8, max_steps=40, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                      eval_interval=20, eval_batches=2, log_interval=10),
        "sft": dict(steps=20, batch_size=8, lr=1e-3, seed=0),
        "dpo": dict(steps=5, batch_size=4, lr=1e-4, beta=0.1, nll_weight=1.0, seed=0),
        "own_mistakes": 24,
        "report": dict(limit=20_000, task_limit=4),
    },
    "cpu": {
        "vocab_size": 2048,
        "train": {**TRAIN_PRESETS["shakespeare-char"]["cpu"], **SHIPPED_PRETRAIN},
        "sft": SHIPPED_SFT,
        "dpo": SHIPPED_DPO,
        "own_mistakes": None,
        "report": dict(limit=None, task_limit=None),
    },
    # On a GPU: the trainer's CUDA preset of the same model (6 x 384, 256-token context,
    # dropout 0.2, 5000 steps of 64 x 256 tokens), the same tokenizer and tuning recipe.
    "gpu": {
        "vocab_size": 2048,
        "train": dict(TRAIN_PRESETS["shakespeare-char"]["cuda"]),
        "sft": SHIPPED_SFT,
        "dpo": SHIPPED_DPO,
        "own_mistakes": None,
        "report": dict(limit=None, task_limit=None),
    },
}


def default_preset() -> str:
    """gpu on a CUDA machine, cpu elsewhere."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def stage_outputs(out_dir: Path) -> dict[str, Path]:
    """The file each stage writes; it existing means the stage is done."""
    return {"tokenizer": out_dir / "tokenizer.json",
            "pretrain": out_dir / "pretrain" / "model.safetensors",
            "sft": out_dir / "sft" / "model.safetensors",
            "dpo": out_dir / "dpo" / "model.safetensors",
            "report": out_dir / "report_card.md"}


# ------------------------------------------------------------------------------ the stages

def _texts() -> tuple[str, str]:
    from utils.data import load_corpus, train_val_split

    # split the text, then encode: validation is the same characters for every tokenizer
    return train_val_split(load_corpus())


@dataclass(frozen=True)
class Run:
    """What every stage is given: where to write, the preset's settings, the device, and
    the command line (for the records)."""

    preset: str
    out_dir: Path
    settings: dict[str, Any]
    device: torch.device
    progress: bool = True
    command: str = "python -m utils.pipeline"
    log: Callable[[str], Any] = print

    def output(self, stage: str) -> Path:
        return stage_outputs(self.out_dir)[stage]

    def every_50(self, stage: str):
        """A tuning callback that logs the loss every 50 steps (None without progress)."""
        if not self.progress:
            return None
        steps = self.settings[stage]["steps"]
        return lambda step, loss: (self.log(f"{stage}: step {step}/{steps}, loss {loss:.4f}")
                                   if step % 50 == 0 or step == steps else None)

    def record(self, seconds: float, **fields) -> dict[str, Any]:
        """The .json record saved next to a stage's weights."""
        from utils.device import machine_description

        return {"command": self.command, "machine": machine_description(),
                "torch": torch.__version__, "seconds_this_session": round(seconds, 1), **fields}


def run_tokenizer(run: Run) -> None:
    from utils.bpe_tokenizer import BPETokenizer

    tokenizer = BPETokenizer()
    tokenizer.train(_texts()[0], run.settings["vocab_size"])
    tokenizer.save(run.output("tokenizer"))


def run_pretrain(run: Run) -> None:
    from utils.bpe_tokenizer import BPETokenizer
    from utils.evaluation import text_bits_per_char
    from utils.pretrained import save_pretrained
    from utils.train_config import TrainConfig
    from utils.trainer import build_model, train

    tokenizer = BPETokenizer.load(run.output("tokenizer"))
    train_text, val_text = _texts()
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    config = TrainConfig(**{**run.settings["train"], "device": str(run.device)})
    model = build_model(config, tokenizer.vocab_size)
    # resume=True: an interrupted run continues from its checkpoint (a forced rerun has
    # deleted it first, so it starts from step 0)
    result = train(model, train_ids, val_ids, config, resume=True, progress=run.progress,
                   checkpoint_path=run.out_dir / "pretrain" / "checkpoint.pt")
    bits = text_bits_per_char(model, tokenizer, val_text, config.block_size, device=run.device)
    record = run.record(result.seconds, steps=result.steps,
                        tokens_per_step=config.tokens_per_step,
                        final_train_loss=round(result.final_train_loss, 4),
                        final_val_loss=round(result.final_val_loss, 4),
                        val_bits_per_char=round(bits, 4),
                        chars_per_token={"train": round(len(train_text) / len(train_ids), 4),
                                         "val": round(len(val_text) / len(val_ids), 4)},
                        train_config=asdict(result.config), history=result.history)
    save_pretrained(run.output("pretrain"), model, tokenizer, record)


def run_sft(run: Run) -> None:
    from utils.chat_tasks import load_chat_tasks
    from utils.instructions import add_special_tokens, encode_example
    from utils.pretrained import load_model_file, save_pretrained
    from utils.report_card import tuning_tokens
    from utils.tuning import instruction_tune

    model, tokenizer, _ = load_model_file(run.output("pretrain"), run.device)
    model, chat = add_special_tokens(model, tokenizer)
    examples = load_chat_tasks("train")
    _check_fits(model, [encode_example(chat, e.instruction, e.response)[0] for e in examples],
                "instruction")
    start = time.perf_counter()
    losses = instruction_tune(model, chat, examples, device=run.device,
                              callback=run.every_50("sft"), **run.settings["sft"])
    seconds = time.perf_counter() - start
    sft = run.settings["sft"]
    record = run.record(seconds, tuned_from="pretrain/model.safetensors",
                        sft={**sft, "examples": len(examples), "first_loss": round(losses[0], 4),
                             "final_loss": round(losses[-1], 4)},
                        tuning_tokens=tuning_tokens(chat, examples, sft))
    save_pretrained(run.output("sft"), model.eval(), chat, record)


def run_dpo(run: Run) -> None:
    from utils.chat_tasks import load_chat_preferences
    from utils.instructions import Instruction, encode_example
    from utils.pretrained import load_model_file, save_pretrained
    from utils.report_card import read_record, tuning_tokens
    from utils.tuning import mistake_pairs, preference_tune

    sft_path = run.output("sft")
    model, chat, _ = load_model_file(sft_path, run.device)
    rules = load_chat_preferences("train")
    _check_fits(model, [encode_example(chat, p.prompt, r)[0] for p in rules
                        for r in (p.chosen, p.rejected)], "preference pair")
    # the SFT model's wrong greedy answers to those prompts are pairs too: answers it prefers
    # (a mistake is at most one token longer than the right answer, so it fits as well)
    prompts = [Instruction("own mistake", p.prompt, p.chosen, p.split)
               for p in rules[:run.settings["own_mistakes"]]]
    mistakes = mistake_pairs(model, chat, prompts)
    pairs = rules + mistakes
    start = time.perf_counter()
    losses = preference_tune(model, chat, pairs, device=run.device,
                             callback=run.every_50("dpo"), **run.settings["dpo"])
    seconds = time.perf_counter() - start
    dpo = run.settings["dpo"]
    # its tuning so far (the SFT model's), then this stage's
    tokens = {**read_record(sft_path).get("tuning_tokens", {}),
              **tuning_tokens(chat, pairs=pairs, dpo=dpo)}
    record = run.record(seconds, tuned_from="sft/model.safetensors",
                        dpo={**dpo, "pairs": {"rules": len(rules), "own_mistakes": len(mistakes)},
                             "reference": "the SFT model, frozen",
                             "first_loss": round(losses[0], 4),
                             "final_loss": round(losses[-1], 4)},
                        tuning_tokens=tokens)
    save_pretrained(run.output("dpo"), model.eval(), chat, record)


def run_report(run: Run) -> None:
    from utils.report_card import Entry, write_report

    name = f"pipeline-{run.preset}"
    paths = stage_outputs(run.out_dir)
    models = [Entry(name, paths["pretrain"]), Entry(f"{name}-sft", paths["sft"], name),
              Entry(f"{name}-dpo", paths["dpo"], name)]
    write_report(models, paths["report"], device=run.device, command=run.command,
                 **run.settings["report"])


def _check_fits(model, sequences: list[list[int]], what: str) -> None:
    """A clear error, before any step, when the longest example is longer than the context
    (the model reads all of it but its last token)."""
    longest = max(len(ids) for ids in sequences) - 1
    if longest > model.config.block_size:
        raise ValueError(f"the longest training {what} is {longest + 1} tokens, more than "
                         f"block_size + 1 = {model.config.block_size + 1}: give the preset a "
                         f"larger train block_size or vocab_size")


RUNNERS = {"tokenizer": run_tokenizer, "pretrain": run_pretrain, "sft": run_sft,
           "dpo": run_dpo, "report": run_report}


# ------------------------------------------------------------------------------ the driver

def run_pipeline(preset: str | None = None, out_dir: Path | str | None = None,
                 from_stage: str | None = None, device: torch.device | str | None = None,
                 progress: bool = True, command: str = "python -m utils.pipeline",
                 log=print) -> dict[str, str]:
    """Run the stages in order; {stage: "ran" or "skipped"}.

    preset      a key of PRESETS (default: gpu on CUDA, else cpu)
    out_dir     where the files go (default runs/pipeline/<preset>/)
    from_stage  force this stage and those after it to run again, even if done
    """
    from utils.device import get_device

    preset = preset or default_preset()
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown pipeline preset {preset!r}; available: "
                         f"{sorted(PRESETS)}")
    if from_stage is not None and from_stage not in STAGES:
        raise ValueError(f"from_stage must be one of {list(STAGES)}, got {from_stage!r}")
    settings = PRESETS[preset]
    out_dir = Path(out_dir) if out_dir is not None else RUNS_DIR / "pipeline" / preset
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, preset, settings, from_stage)
    device = get_device(None if device is None else str(device))
    run = Run(preset, out_dir, settings, device, progress, command, log)
    forced = STAGES.index(from_stage) if from_stage else len(STAGES)
    status, upstream_ran = {}, False
    for i, stage in enumerate(STAGES):
        output = run.output(stage)
        if output.exists() and i < forced and not upstream_ran:
            log(f"{stage}: done already, skipped")
            status[stage] = "skipped"
            continue
        if i >= forced or upstream_ran:
            _clear(out_dir, stage)         # stale: start it afresh (no resuming old steps)
        log(f"{stage}: running ({preset} preset, {device})")
        start = time.perf_counter()
        RUNNERS[stage](run)
        log(f"{stage}: done in {time.perf_counter() - start:.1f} s -> {_shown(output)}")
        status[stage], upstream_ran = "ran", True
    return status


def _clear(out_dir: Path, stage: str) -> None:
    """Delete a stage's old files, so that it starts afresh (its checkpoint too)."""
    output = stage_outputs(out_dir)[stage]
    if output.parent != out_dir:
        shutil.rmtree(output.parent, ignore_errors=True)
    else:
        output.unlink(missing_ok=True)


def _check_settings(out_dir: Path, preset: str, settings: dict[str, Any],
                    from_stage: str | None) -> None:
    """Refuse to mix stages made with other settings into this folder; record ours."""
    saved_file = out_dir / "pipeline.json"
    ours = json.loads(json.dumps({"preset": preset, "settings": settings}))
    if saved_file.exists() and from_stage != "tokenizer":
        saved = json.loads(saved_file.read_text())
        if saved != ours:
            changed = sorted(k for k in set(saved["settings"]) | set(settings)
                             if saved["settings"].get(k) != ours["settings"].get(k))
            raise SystemExit(f"{_shown(out_dir)} was made with preset {saved['preset']!r} and "
                             f"other settings ({', '.join(changed)} differ). Use another "
                             f"--out-dir, or --from tokenizer to redo everything.")
    write_text_atomic(saved_file, json.dumps(ours, indent=2) + "\n")


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.pipeline",
        description="Tokenizer -> pre-training -> instruction tuning -> preference tuning -> "
                    "report card, with the course's modules. A stage whose output exists is "
                    "skipped; an interrupted pre-training resumes from its checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="the settings of every stage (default: gpu on CUDA, else cpu)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the stages write (default: runs/pipeline/<preset>/)")
    parser.add_argument("--from", dest="from_stage", choices=STAGES, default=None,
                        help="run this stage and every one after it again, even if done")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    command = " ".join(["python -m utils.pipeline"] + [
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
    status = run_pipeline(args.preset, args.out_dir, args.from_stage, args.device,
                          progress=not args.no_progress, command=command)
    print("pipeline: " + ", ".join(f"{stage} {what}" for stage, what in status.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
