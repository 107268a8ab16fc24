"""The one-command pipeline (utils/pipeline.py), end to end on the tiny preset in a temporary
folder: a pre-training interrupted mid-run and resumed, every stage's file, skipping what is
done, rerunning what is missing or forced, and the command line."""

import json
import math

import pytest
import torch

import utils.pipeline as pipeline
import utils.trainer as trainer
from utils.bpe_tokenizer import BPETokenizer
from utils.chat_tasks import load_chat_tasks
from utils.data import load_corpus, train_val_split
from utils.pretrained import load_model_file
from utils.report_card import read_record, tuning_tokens
from utils.train_config import TrainConfig

TINY = pipeline.PRESETS["tiny"]
STOP_AT = 30       # the interrupted run stops at this step; its last checkpoint is step 20


def _run(out, log, **kwargs):
    return pipeline.run_pipeline("tiny", out, device="cpu", progress=False, log=log.append, **kwargs)


def _mtimes(out):
    return {stage: path.stat().st_mtime_ns for stage, path in pipeline.stage_outputs(out).items()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(folder, log lines, train steps seen after resuming): the tiny pipeline, whose
    pre-training is interrupted at step STOP_AT and then resumed by a second call."""
    out = tmp_path_factory.mktemp("pipe") / "tiny"
    real_train, resumed_steps, log = trainer.train, [], []

    def interrupted(*args, callbacks=(), **kwargs):
        def stop(event):
            if event["event"] == "train" and event["step"] == STOP_AT:
                raise KeyboardInterrupt
        return real_train(*args, callbacks=[*callbacks, stop], **kwargs)

    def watched(*args, callbacks=(), **kwargs):
        def seen(event):
            if event["event"] == "train":
                resumed_steps.append(event["step"])
        return real_train(*args, callbacks=[*callbacks, seen], **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _run(out, log)
        assert (out / "pretrain" / "checkpoint.pt").exists()
        assert not pipeline.stage_outputs(out)["pretrain"].exists()
        patch.setattr(trainer, "train", watched)
        status = _run(out, log)
    assert status == {"tokenizer": "skipped", "pretrain": "ran", "sft": "ran", "dpo": "ran",
                      "report": "ran"}
    return out, log, resumed_steps


def test_every_stage_writes_its_file(made):
    out, log, _ = made
    for stage, path in pipeline.stage_outputs(out).items():
        assert path.is_file(), stage
    tokenizer = BPETokenizer.load(out / "tokenizer.json")
    assert tokenizer.vocab_size == TINY["vocab_size"]
    assert json.loads((out / "pipeline.json").read_text())["preset"] == "tiny"


def test_interrupted_pretraining_resumed_from_its_checkpoint_exactly(made):
    out, _, resumed_steps = made
    log_every = TINY["train"]["log_interval"]
    # it went on from the checkpoint of step 20, not from step 0
    assert resumed_steps == list(range(20 + log_every, TINY["train"]["max_steps"] + 1, log_every))
    # and ended with the weights of a run that was never stopped
    config = TrainConfig(**{**TINY["train"], "device": "cpu"})
    tokenizer = BPETokenizer.load(out / "tokenizer.json")
    train_text, val_text = train_val_split(load_corpus())
    reference = trainer.build_model(config, tokenizer.vocab_size)
    trainer.train(reference, torch.tensor(tokenizer.encode(train_text)),
                  torch.tensor(tokenizer.encode(val_text)), config, progress=False)
    model, _, _ = load_model_file(pipeline.stage_outputs(out)["pretrain"])
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_records_say_what_each_stage_did(made):
    out, _, _ = made
    paths = pipeline.stage_outputs(out)
    pre = read_record(paths["pretrain"])
    assert pre["steps"] == TINY["train"]["max_steps"]
    assert pre["tokens_per_step"] == TINY["train"]["batch_size"] * TINY["train"]["block_size"]
    uniform = math.log2(TINY["vocab_size"]) / pre["chars_per_token"]["val"]   # bits/char of a guess
    assert 0 < pre["val_bits_per_char"] < uniform
    sft, dpo = read_record(paths["sft"]), read_record(paths["dpo"])
    _, chat, _ = load_model_file(paths["sft"])
    assert sft["tuning_tokens"] == tuning_tokens(chat, load_chat_tasks("train"), TINY["sft"])
    assert sft["sft"]["steps"] == TINY["sft"]["steps"] and sft["tuning_tokens"]["sft"] > 0
    assert dpo["tuning_tokens"]["sft"] == sft["tuning_tokens"]["sft"] and dpo["tuning_tokens"]["dpo"] > 0
    # the tiny SFT model gets most answers wrong: DPO also trained on those mistakes
    assert 0 < dpo["dpo"]["pairs"]["own_mistakes"] <= TINY["own_mistakes"]
    model, chat, _ = load_model_file(paths["dpo"])
    assert chat.vocab_size == TINY["vocab_size"] + 3          # the chat template's tokens


def test_report_card_is_of_the_pipelines_own_models(made):
    out, _, _ = made
    text = pipeline.stage_outputs(out)["report"].read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:]
    assert rows == ["pipeline-tiny", "pipeline-tiny-sft", "pipeline-tiny-dpo"]
    assert "shakespeare" not in "".join(rows)


def test_a_second_call_skips_every_stage(made):
    out, _, _ = made
    before, log = _mtimes(out), []
    status = _run(out, log)
    assert set(status.values()) == {"skipped"}
    assert log == [f"{stage}: done already, skipped" for stage in pipeline.STAGES]
    assert _mtimes(out) == before


def test_a_missing_output_reruns_that_stage_and_those_after_it(made):
    out, _, _ = made
    before, log = _mtimes(out), []
    pipeline.stage_outputs(out)["dpo"].unlink()
    status = _run(out, log)
    assert status == {"tokenizer": "skipped", "pretrain": "skipped", "sft": "skipped",
                      "dpo": "ran", "report": "ran"}
    after = _mtimes(out)
    assert all(after[s] == before[s] for s in ("tokenizer", "pretrain", "sft"))
    assert after["report"] != before["report"]


def test_from_forces_a_stage_that_is_done(made):
    out, _, _ = made
    before, log = _mtimes(out), []
    status = _run(out, log, from_stage="report")
    assert [s for s, what in status.items() if what == "ran"] == ["report"]
    assert _mtimes(out)["dpo"] == before["dpo"]


def test_other_settings_in_the_same_folder_are_refused(made, monkeypatch):
    out, _, _ = made
    changed = {**TINY, "sft": {**TINY["sft"], "steps": TINY["sft"]["steps"] + 1}}
    monkeypatch.setitem(pipeline.PRESETS, "tiny", changed)
    with pytest.raises(SystemExit, match="sft differ"):
        _run(out, [])


def test_bad_preset_and_stage_names_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown pipeline preset 'huge'.*tiny"):
        pipeline.run_pipeline("huge", tmp_path)
    with pytest.raises(ValueError, match="from_stage"):
        pipeline.run_pipeline("tiny", tmp_path, from_stage="train")
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                     # nothing was started


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--preset", "--out-dir", "--from", "--device"):
        assert option in text
    assert all(name in text for name in pipeline.PRESETS)


def test_presets_have_every_stage_and_valid_training_settings():
    for name, settings in pipeline.PRESETS.items():
        assert set(settings) == {"vocab_size", "train", "sft", "dpo", "own_mistakes", "report"}, name
        TrainConfig(**settings["train"])                    # raises on a bad field
        assert settings["vocab_size"] > 256
    assert pipeline.PRESETS["gpu"]["train"]["n_embd"] > pipeline.PRESETS["cpu"]["train"]["n_embd"]


def test_cpu_preset_is_the_recipe_of_the_shipped_models():
    from dataclasses import asdict

    from utils.pretrained import pretrained_path, pretrained_record

    cpu = pipeline.PRESETS["cpu"]
    if pretrained_path("shakespeare-bpe").exists():
        shipped = pretrained_record("shakespeare-bpe")
        assert asdict(TrainConfig(**cpu["train"])) == shipped["train_config"]
        assert shipped["vocab_size"] == cpu["vocab_size"]
    for stage in ("sft", "dpo"):
        if pretrained_path(f"shakespeare-bpe-{stage}").exists():
            recipe = pretrained_record(f"shakespeare-bpe-{stage}")["recipe"]
            assert {k: recipe[k] for k in cpu[stage]} == cpu[stage], stage
