"""The trainer (utils/trainer.py; its command line utils/train.py), tested on a tiny stand-in
model with the same forward signature as the course's GPT, and end to end through `python -m utils.train`."""

import math
import os
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import utils.checkpoints as checkpoints
import utils.parallel as parallel
import utils.trainer as trainer
from utils.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from utils.optim import lr_at
from utils.paths import REPO_ROOT
from utils.train import parse_args
from utils.train_config import TrainConfig, preset
from utils.trainer import batch_for_step, estimate_loss, tf32_matmuls, train

VOCAB = 12


class StandIn(nn.Module):
    """Any module with forward(idx, targets) -> (logits, loss) can be trained: this one mixes
    each position with the mean of the ones before it, with dropout so the RNG matters."""

    def __init__(self, vocab=VOCAB, d=16, block=8, dropout=0.2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.mix, self.head = nn.Linear(d, d), nn.Linear(d, vocab)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.emb(idx) + self.pos(torch.arange(T, device=idx.device))
        x = x + x.cumsum(1) / torch.arange(1, T + 1, device=idx.device)[:, None]
        logits = self.head(self.drop(torch.tanh(self.mix(x))))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss



def _curves(history: dict) -> dict:
    """A history without the measured speed (tokens/s, MFU), which differs run to run; the
    lengths of those stay (one entry per logged step)."""
    timed = ("tokens_per_s", "mfu")
    return {k: (len(v) if k in timed else v) for k, v in history.items()}


def _data(n=3000, seed=0):
    # a learnable sequence: mostly "next = previous + 1", with some noise
    g = torch.Generator().manual_seed(seed)
    steps = torch.where(torch.rand(n, generator=g) < 0.8, 1, torch.randint(VOCAB, (n,), generator=g))
    return steps.cumsum(0) % VOCAB


def _config(**kw):
    settings = dict(block_size=8, batch_size=8, max_steps=30, lr=1e-2, min_lr=1e-3,
                    warmup_steps=3, eval_interval=10, eval_batches=3, log_interval=5,
                    device="cpu", seed=7)
    return TrainConfig(**{**settings, **kw})


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


def test_training_lowers_the_loss_and_logs_every_event():
    data = _data()
    events = []
    result = train(StandIn(), data[:2500], data[2500:], _config(), callbacks=[events.append],
                   progress=False)
    h = result.history
    assert h["eval_step"] == [0, 10, 20, 30] and h["step"] == [5, 10, 15, 20, 25, 30]
    assert h["val"][-1] < h["val"][0] - 0.3, h["val"]
    assert [e["event"] for e in events].count("eval") == 4 and events[-1]["event"] == "end"
    assert result.model.training is False
    assert abs(h["val"][0] - torch.log(torch.tensor(VOCAB)).item()) < 0.3  # starts near ln V


def test_batches_are_a_function_of_the_step_and_targets_are_shifted():
    data, cfg = _data(), _config()
    x1, y1 = batch_for_step(data, cfg, step=5, micro_step=0)
    x2, y2 = batch_for_step(data, cfg, step=5, micro_step=0)
    x3, _ = batch_for_step(data, cfg, step=6, micro_step=0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    # two micro-batches of 8 are the two halves of one batch of 16
    big = _config(batch_size=16)
    a, _ = batch_for_step(data, _config(grad_accum_steps=2), 3, 0)
    b, _ = batch_for_step(data, _config(grad_accum_steps=2), 3, 1)
    whole, _ = batch_for_step(data, big, 3, 0)
    assert torch.equal(torch.cat([a, b]), whole)


def test_gradient_accumulation_equals_one_big_batch():
    data = _data()
    small = train(StandIn(dropout=0.0), data, None, _config(grad_accum_steps=2, max_steps=8),
                  progress=False).model
    big = train(StandIn(dropout=0.0), data, None, _config(batch_size=16, max_steps=8),
                progress=False).model
    for p, q in zip(small.parameters(), big.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


class Exploding(StandIn):
    """A loss that is infinite from the start: its gradients are inf and nan."""

    def forward(self, idx, targets=None):
        logits, loss = super().forward(idx, targets)
        return logits, None if loss is None else loss * float("inf")


def test_a_non_finite_gradient_norm_stops_the_run_and_names_the_step():
    with pytest.raises(FloatingPointError, match="step 0: the gradient norm is nan"):
        train(Exploding(dropout=0.0), _data(), None, _config(max_steps=3), progress=False)


def test_under_float16_loss_scaling_a_non_finite_step_is_skipped_instead():
    model = Exploding(dropout=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, _data(), None, _config(max_steps=3, dtype="float16"), progress=False)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_the_trainer_clips_with_the_global_norm_of_utils_optim(monkeypatch):
    # every step's norm goes through utils.optim.clip_grad_norm, with grad_clip as max_norm
    seen = []

    def recording_clip(params, max_norm):
        norm = original_clip(params, max_norm)
        seen.append((max_norm, norm.item()))
        return norm

    original_clip = trainer.clip_grad_norm
    monkeypatch.setattr(trainer, "clip_grad_norm", recording_clip)
    train(StandIn(), _data(), None, _config(max_steps=4, grad_clip=0.05), progress=False)
    assert [m for m, _ in seen] == [0.05] * 4 and all(n > 0.05 for _, n in seen)
    seen.clear()
    train(StandIn(), _data(), None, _config(max_steps=4, grad_clip=0.0), progress=False)
    # 0 = no clipping: the norm is still measured (for history), with no bound
    assert [m for m, _ in seen] == [math.inf] * 4


def test_zero1_in_one_process_trains_the_same_model_and_resumes_a_plain_checkpoint(tmp_path):
    data = _data()
    plain = train(StandIn(), data, None, _config(max_steps=12), progress=False)
    zero = train(StandIn(), data, None, _config(max_steps=12, shard="zero1"), progress=False)
    assert torch.allclose(torch.cat([p.flatten() for p in plain.model.parameters()]),
                          torch.cat([p.flatten() for p in zero.model.parameters()]), atol=1e-6)
    path = tmp_path / "ckpt.pt"   # a checkpoint written without sharding, resumed under zero1
    train(StandIn(), data, None, _config(max_steps=6, decay_steps=12), checkpoint_path=path,
          progress=False)
    resumed = train(StandIn(seed=5), data, None, _config(max_steps=12, shard="zero1"),
                    checkpoint_path=path, resume=True, progress=False)
    assert torch.allclose(torch.cat([p.flatten() for p in plain.model.parameters()]),
                          torch.cat([p.flatten() for p in resumed.model.parameters()]),
                          atol=1e-6)


def test_an_unknown_shard_is_refused():
    with pytest.raises(ValueError, match="shard must be none, zero1 or fsdp"):
        _config(shard="zero3")


def test_same_seed_same_weights_different_seed_different_weights():
    data = _data()
    a = train(StandIn(), data, None, _config(max_steps=6), progress=False).model
    b = train(StandIn(), data, None, _config(max_steps=6), progress=False).model
    c = train(StandIn(), data, None, _config(max_steps=6, seed=8), progress=False).model
    assert _same_weights(a, b) and not _same_weights(a, c)


def test_resume_in_process_is_exact(tmp_path):
    data = _data()
    straight = train(StandIn(), data[:2500], data[2500:], _config(decay_steps=30), progress=False)
    path = tmp_path / "ckpt.pt"
    # stop at step 20 (same schedule: the decay still ends at 30), then resume to 30
    train(StandIn(), data[:2500], data[2500:], _config(max_steps=20, decay_steps=30),
          checkpoint_path=path, progress=False)
    assert load_checkpoint(path)["step"] == 20
    resumed = train(StandIn(seed=99), data[:2500], data[2500:], _config(decay_steps=30),
                    checkpoint_path=path, resume=True, progress=False)
    assert _same_weights(straight.model, resumed.model)
    assert _curves(resumed.history) == _curves(straight.history)


def test_resume_may_split_the_same_global_batch_differently_but_not_change_it(tmp_path):
    # a run saved with batches of 16 (one process, or 2 x 8 under torchrun) goes on with
    # 8 x 2 micro-batches: the same windows every step; batches of 8 would be another run
    data = _data()
    straight = train(StandIn(dropout=0.0), data, None, _config(batch_size=16, max_steps=12),
                     progress=False)
    path = tmp_path / "ckpt.pt"
    train(StandIn(dropout=0.0), data, None, _config(batch_size=16, max_steps=6, decay_steps=12),
          checkpoint_path=path, progress=False)
    other = tmp_path / "copy.pt"
    other.write_bytes(path.read_bytes())
    resumed = train(StandIn(dropout=0.0), data, None,
                    _config(batch_size=8, grad_accum_steps=2, max_steps=12),
                    checkpoint_path=path, resume=True, progress=False)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size: 16 -> 8"):
        train(StandIn(dropout=0.0), data, None, _config(batch_size=8, max_steps=12),
              checkpoint_path=other, resume=True, progress=False)


def test_resume_refuses_a_checkpoint_trained_differently(tmp_path):
    data, path = _data(), tmp_path / "ckpt.pt"
    train(StandIn(), data, None, _config(max_steps=10), checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(StandIn(), data, None, _config(lr=5e-3), checkpoint_path=path, resume=True,
              progress=False)


def test_extending_a_run_keeps_its_decay_length_unless_decay_steps_is_given(tmp_path, capsys):
    # A run of 20 steps resumed with max_steps=30: the cosine must not be refitted to 30 steps
    # (the learning rate would jump from min_lr back up at step 20); the extra steps run at
    # min_lr, and a printed line says how to refit instead.
    data, path = _data(), tmp_path / "ckpt.pt"
    train(StandIn(), data, None, _config(max_steps=20, log_interval=1), checkpoint_path=path,
          progress=False)
    saved = path.read_bytes()
    extended = train(StandIn(), data, None, _config(max_steps=30, log_interval=1),
                     checkpoint_path=path, resume=True, progress=False)
    assert extended.history["lr"][20:] == [1e-3] * 10                 # min_lr, no jump
    assert extended.config.decay_steps == 20
    assert load_checkpoint(path)["train_config"]["decay_steps"] == 20  # a second resume agrees
    assert "still ends at step 20" in capsys.readouterr().out

    # asked for explicitly, the cosine is refitted, and the jump is announced
    path.write_bytes(saved)
    refitted = train(StandIn(), data, None, _config(max_steps=30, decay_steps=30, log_interval=1),
                     checkpoint_path=path, resume=True, progress=False)
    assert refitted.history["lr"][20] == lr_at(20, 1e-2, 3, 30, 1e-3) > 1e-3
    jump = f"jumps from {lr_at(19, 1e-2, 3, 20, 1e-3):.2e} to {lr_at(20, 1e-2, 3, 30, 1e-3):.2e}"
    assert jump in capsys.readouterr().out


def test_every_step_uses_and_logs_lr_at_of_that_step(monkeypatch):
    # The learning rate each optimizer step really used, and the one logged for it, must both be
    # lr_at(step) for steps counted from 0 (an off-by-one in the trainer's call fails here).
    applied = []

    def recording_adamw(*args, **kwargs):
        optimizer = configure(*args, **kwargs)
        step = optimizer.step

        def step_and_record(*a, **k):
            applied.append(optimizer.param_groups[0]["lr"])
            return step(*a, **k)
        optimizer.step = step_and_record
        return optimizer

    configure = parallel.configure_adamw   # where the trainer's optimizer is built
    monkeypatch.setattr(parallel, "configure_adamw", recording_adamw)
    config = _config(max_steps=30, log_interval=1)
    history = train(StandIn(), _data(), None, config, progress=False).history
    expected = [lr_at(s, config.lr, config.warmup_steps, config.max_steps, config.min_lr)
                for s in range(config.max_steps)]
    assert applied == expected
    assert history["step"] == list(range(1, 31)) and history["lr"] == expected


def _tf32_flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32_flags(matmul, cudnn):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_train_scopes_tf32_and_restores_the_previous_flags(monkeypatch):
    # On a CPU the trainer never turns TF32 on, so pretend its device is a GPU for the switch.
    scoped = trainer.tf32_matmuls
    monkeypatch.setattr(trainer, "tf32_matmuls", lambda device: scoped(torch.device("cuda")))
    before = _tf32_flags()
    try:
        _set_tf32_flags(False, False)
        during = []
        record = lambda event: during.append(_tf32_flags()) if event["event"] != "end" else None
        train(StandIn(), _data(), None, _config(max_steps=4), progress=False, callbacks=[record])
        assert set(during) == {(True, True)}                 # on while training
        assert _tf32_flags() == (False, False)               # back to what they were after it
        with pytest.raises(RuntimeError), tf32_matmuls(torch.device("cuda")):
            raise RuntimeError("a failed run restores them too")
        assert _tf32_flags() == (False, False)
    finally:
        _set_tf32_flags(*before)


def test_estimate_loss_is_repeatable_and_leaves_train_mode():
    model, data = StandIn(), _data()
    model.train()
    a, b = estimate_loss(model, data, _config()), estimate_loss(model, data, _config())
    assert a == b and model.training


# ---- checkpoint files -------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    model = StandIn()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, opt, 3, _config(), {"step": [1]})
    return path


def test_checkpoint_round_trip_and_no_temporary_files(checkpoint):
    state = load_checkpoint(checkpoint)
    assert state["step"] == 3 and state["train_config"]["seed"] == 7
    assert os.listdir(checkpoint.parent) == ["ckpt.pt"]


def test_a_save_that_fails_midway_keeps_the_old_checkpoint_and_no_temporary_file(checkpoint,
                                                                                  monkeypatch):
    old = checkpoint.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")        # the first bytes reach the disk, then...
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", dies_halfway)
    model, opt = StandIn(), torch.optim.AdamW(StandIn().parameters())
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(checkpoint, model, opt, 9, _config(), {"step": [1]})
    monkeypatch.undo()
    assert checkpoint.read_bytes() == old and load_checkpoint(checkpoint)["step"] == 3
    assert os.listdir(checkpoint.parent) == ["ckpt.pt"]


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_checkpoint(tmp_path / "nothere.pt")


def test_truncated_checkpoint_is_refused_with_its_name(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ckpt.pt.*truncated or corrupted"):
        load_checkpoint(checkpoint)


def test_corrupted_tensor_bytes_are_caught_by_the_checksum(checkpoint, tmp_path):
    # Rewrite the zip with one byte of the largest tensor flipped (valid zip, wrong data).
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(checkpoint) as src, zipfile.ZipFile(broken, "w") as dst:
        biggest = max((i for i in src.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        for info in src.infolist():
            raw = bytearray(src.read(info.filename))
            if info.filename == biggest.filename:
                raw[len(raw) // 2] ^= 0xFF
            dst.writestr(info, bytes(raw))
    with pytest.raises(CheckpointError, match="broken.pt.*(corrupted|checksum)"):
        load_checkpoint(broken)


def test_garbage_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError, match="noise.pt"):
        load_checkpoint(path)


def test_foreign_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(StandIn().state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain_state_dict.pt is not a checkpoint"):
        load_checkpoint(plain)

    class Sneaky:  # an object whose unpickling would run code
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "x", "payload": Sneaky()}, pickled)
    with pytest.raises(CheckpointError, match="refused to load .*pickled.pt"):
        load_checkpoint(pickled)


# ---- the command ------------------------------------------------------------------------


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text
    for flag in ("--preset", "--resume", "--out-dir", "--no-progress", "--corpus"):
        assert flag in text


def test_presets_pick_a_bigger_model_on_cuda():
    cpu, cuda = preset("shakespeare-char", "cpu"), preset("shakespeare-char", "cuda")
    assert cuda.n_embd > cpu.n_embd and cuda.block_size >= cpu.block_size
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def _command(out_dir, *extra):
    return [sys.executable, "-m", "utils.train", "--preset", "tiny", "--device", "cpu",
            "--max-steps", "40", "--eval-interval", "10", "--dropout", "0.1",
            "--out-dir", str(out_dir), "--no-progress", *extra]


# Runs the real command, but SIGKILLs itself after step 25 (between the checkpoints of
# steps 20 and 30): nothing gets a chance to clean up, as when a machine dies.
KILLER = """
import os, signal, sys
import utils.train as command
import utils.trainer as loop
notify = loop._notify
def notify_then_die(callbacks, event):
    notify(callbacks, event)
    if event["event"] == "train" and event["step"] == 25:
        os.kill(os.getpid(), signal.SIGKILL)
loop._notify = notify_then_die
command.main(sys.argv[1:])
"""


def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run = subprocess.run(_command(straight), cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    died = subprocess.run([sys.executable, str(script), *_command(killed)[3:]], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 20      # last one before death
    assert not (killed / "model.safetensors").exists()

    again = subprocess.run(_command(killed, "--resume"), cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(killed / "checkpoint.pt")
    assert a["step"] == b["step"] == 40
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert _curves(a["history"]) == _curves(b["history"])
    assert sorted(p.name for p in killed.iterdir()) == ["checkpoint.pt", "model.json",
                                                        "model.safetensors"]
