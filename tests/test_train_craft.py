"""The trainer's craft: the gradient-norm, clipping, tokens/s and MFU curves in `history`,
`--optimizer muon`, the warm-down schedule and activation checkpointing (#18)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import utils.trainer as trainer
from utils.model import GPT, GPTConfig, estimate_flops_per_token
from utils.muon import MuonWithAdamW, configure_muon
from utils.optim import lr_at, lr_wsd_at
from utils.parallel import Parallel
from utils.train import config_from_args, default_out_dir, parse_args
from utils.train_config import TrainConfig
from utils.trainer import batch_for_step, build_model, train

VOCAB = 11


def _data(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.where(torch.rand(n, generator=g) < 0.8, 1, torch.randint(VOCAB, (n,), generator=g))
    return steps.cumsum(0) % VOCAB


def _config(**kw):
    settings = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, batch_size=4, max_steps=12,
                    lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=100, eval_batches=2,
                    log_interval=3, device="cpu", seed=3)
    return TrainConfig(**{**settings, **kw})


# ----------------------------------------------------------------- gradient norms, clipping

def test_history_records_the_norm_before_clipping_and_the_clipped_fraction(monkeypatch):
    norms = []
    original = trainer.clip_grad_norm

    def recording(params, max_norm):
        norm = original(params, max_norm)
        norms.append(norm.item())
        return norm

    monkeypatch.setattr(trainer, "clip_grad_norm", recording)
    clip = 1.5   # between the norms this run sees (about 1.0 to 2.3)
    result = train(build_model(_config(), VOCAB), _data(), None, _config(grad_clip=clip),
                   progress=False)
    h = result.history
    assert h["step"] == [3, 6, 9, 12]
    # the norm of each logged step, as clip_grad_norm measured it before it clipped
    assert h["grad_norm"] == [norms[s - 1] for s in h["step"]]
    assert max(h["grad_norm"]) > clip          # so it is not the norm after clipping
    # the fraction of the 3 steps of each interval whose norm was above the bound
    expected = [sum(n > clip for n in norms[s - 3:s]) / 3 for s in h["step"]]
    assert h["clipped"] == expected and 0 < sum(expected) < len(expected)


def test_clipped_fraction_is_one_with_a_tiny_bound_and_zero_without_clipping():
    tiny = train(build_model(_config(), VOCAB), _data(), None, _config(grad_clip=1e-4),
                 progress=False).history
    none = train(build_model(_config(), VOCAB), _data(), None, _config(grad_clip=0.0),
                 progress=False).history
    assert tiny["clipped"] == [1.0] * 4
    assert none["clipped"] == [0.0] * 4 and all(n > 0 for n in none["grad_norm"])


# ----------------------------------------------------------------- tokens per second, MFU

def test_tokens_per_second_and_mfu_follow_from_the_flop_count_and_the_peak():
    config = _config()
    result = train(build_model(config, VOCAB), _data(), None, config, progress=False)
    h = result.history
    assert len(h["tokens_per_s"]) == len(h["mfu"]) == len(h["step"])
    assert all(0 < t < 1e9 for t in h["tokens_per_s"])
    flops = estimate_flops_per_token(result.model.config, training=True)
    peak = trainer._PEAKS[("cpu", torch.float32, torch.get_num_threads())]
    for t, m in zip(h["tokens_per_s"], h["mfu"], strict=True):
        assert m == pytest.approx(t * flops / peak) and 0 < m < 1


def test_tokens_per_second_counts_the_training_steps_only(monkeypatch):
    # an evaluation that takes 0.3 s must not lower the logged throughput
    slow_eval = trainer.estimate_loss

    def sleepy(*args, **kwargs):
        import time
        time.sleep(0.3)
        return slow_eval(*args, **kwargs)

    config = _config(max_steps=6, log_interval=3, eval_interval=3)
    fast = train(build_model(config, VOCAB), _data(), _data(seed=1), config,
                 progress=False).history["tokens_per_s"]
    monkeypatch.setattr(trainer, "estimate_loss", sleepy)
    slow = train(build_model(config, VOCAB), _data(), _data(seed=1), config,
                 progress=False).history["tokens_per_s"]
    # 3 steps x 32 tokens take milliseconds: counting a 0.3 s pause would cut tokens/s >10x
    assert slow[-1] > fast[-1] / 5


def test_mfu_is_nan_for_a_model_that_is_not_a_course_gpt():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, VOCAB)

        def forward(self, idx, targets):
            logits = self.emb(idx)
            return logits, nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    h = train(Plain(), _data(), None, _config(), progress=False).history
    assert all(math.isnan(m) for m in h["mfu"]) and all(t > 0 for t in h["tokens_per_s"])


# ----------------------------------------------------------------- Muon in the trainer

def test_optimizer_muon_trains_as_a_hand_written_loop_with_configure_muon():
    config = _config(optimizer="muon", grad_clip=0.0, max_steps=6)
    result = train(build_model(config, VOCAB), _data(), None, config, progress=False)
    # the same steps by hand: Muon for the blocks' matrices, AdamW for the rest
    model = build_model(config, VOCAB)
    optimizer = configure_muon(model, config.lr, config.weight_decay,
                               (config.beta1, config.beta2))
    data = _data()
    for step in range(config.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.lr, config.warmup_steps, config.max_steps,
                                config.min_lr)
        x, y = batch_for_step(data, config, step, 0)
        model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    for a, b in zip(result.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # and it is not what AdamW does
    adamw = train(build_model(config, VOCAB), _data(), None, _config(grad_clip=0.0, max_steps=6),
                  progress=False)
    assert not torch.allclose(adamw.model.blocks[0].attn.qkv.weight,
                              result.model.blocks[0].attn.qkv.weight, atol=1e-4)


def test_parallel_builds_muon_with_adamw_only_when_asked():
    model = build_model(_config(), VOCAB)
    assert isinstance(Parallel(model, _config(optimizer="muon"), torch.device("cpu")).optimizer,
                      MuonWithAdamW)
    assert isinstance(Parallel(model, _config(), torch.device("cpu")).optimizer,
                      torch.optim.AdamW)


def test_a_muon_run_resumes_exactly_and_refuses_an_adamw_checkpoint(tmp_path):
    config = _config(optimizer="muon", max_steps=8, eval_interval=4)
    straight = train(build_model(config, VOCAB), _data(), None, config, progress=False)
    path = tmp_path / "muon.pt"
    train(build_model(config, VOCAB), _data(), None, _config(optimizer="muon", max_steps=4,
          eval_interval=4, decay_steps=8), checkpoint_path=path, progress=False)
    resumed = train(build_model(config, VOCAB), _data(), None, _config(
        optimizer="muon", max_steps=8, eval_interval=4, decay_steps=8),
        checkpoint_path=path, resume=True, progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="optimizer: 'muon' -> 'adamw'"):
        train(build_model(config, VOCAB), _data(), None, _config(max_steps=8, decay_steps=8),
              checkpoint_path=path, resume=True, progress=False)


def test_muon_is_refused_with_sharding_and_for_a_model_without_blocks():
    for shard in ("zero1", "fsdp"):
        with pytest.raises(ValueError, match="shard='none'"):
            _config(optimizer="muon", shard=shard)
    with pytest.raises(ValueError, match="optimizer must be adamw or muon"):
        _config(optimizer="sgd")
    with pytest.raises(ValueError, match="has no `.blocks`"):
        configure_muon(nn.Linear(3, 3), lr=1e-3)


def test_the_command_line_takes_optimizer_muon_and_names_the_run_after_it():
    config = config_from_args(parse_args(["--preset", "tiny", "--device", "cpu",
                                          "--optimizer", "muon", "--schedule", "wsd"]))
    assert config.optimizer == "muon" and config.schedule == "wsd"
    assert default_out_dir("tiny", config).name.endswith("_muon")
    assert not default_out_dir("tiny", _config()).name.endswith("_muon")


# ----------------------------------------------------------------- the warm-down schedule

def test_lr_wsd_warms_up_holds_then_falls_in_a_straight_line_to_min_lr():
    total, warm, frac, top, low = 100, 10, 0.3, 1.0, 0.1
    lrs = [lr_wsd_at(s, top, warm, total, low, frac) for s in range(total + 5)]
    assert lrs[:warm] == [top * (s + 1) / warm for s in range(warm)]
    assert lrs[warm:70] == [top] * 60                      # held until the last 30 %
    falling = lrs[70:total]
    steps = [a - b for a, b in zip(falling, falling[1:], strict=False)]
    assert all(d == pytest.approx(steps[0]) for d in steps) and steps[0] > 0   # a line
    assert lrs[total] == lrs[-1] == low
    assert lr_wsd_at(total - 1, top, warm, total, low, frac) == pytest.approx(low + 0.9 / 30)


def test_the_trainer_follows_the_schedule_it_is_given():
    wsd = train(build_model(_config(), VOCAB), _data(), None,
                _config(schedule="wsd", warmdown_frac=0.5, log_interval=1), progress=False)
    assert wsd.history["lr"] == [lr_wsd_at(s, 1e-2, 2, 12, 1e-3, 0.5) for s in range(12)]
    cosine = train(build_model(_config(), VOCAB), _data(), None, _config(log_interval=1),
                   progress=False)
    assert cosine.history["lr"] != wsd.history["lr"]
    with pytest.raises(ValueError, match="warmdown_frac"):
        _config(schedule="wsd", warmdown_frac=1.5)


# ----------------------------------------------------------------- activation checkpointing

def test_checkpoint_activations_reaches_the_model_and_trains_the_same_weights():
    plain = train(build_model(_config(), VOCAB), _data(), None, _config(), progress=False)
    config = _config(checkpoint_activations=True)
    model = build_model(config, VOCAB)
    assert model.config.checkpoint_activations and not plain.model.config.checkpoint_activations
    recomputed = train(model, _data(), None, config, progress=False)
    for a, b in zip(plain.model.parameters(), recomputed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_checkpointing_keeps_fewer_tensors_for_backward():
    counts = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=3, n_head=2, n_embd=16,
                              checkpoint_activations=flag))
        x = torch.randint(VOCAB, (2, 8))
        saved = []

        def keep(t, saved=saved):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(x, x)
        counts[flag] = len(saved)
    assert counts[True] < counts[False] / 2
