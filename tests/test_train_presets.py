"""The short-budget CPU preset of utils.train (the one bench/bench_train.py races against
nanoGPT's "baby" settings): it builds the course's GPT, trains, and is a different recipe from
the hour-long `shakespeare-char` preset the shipped checkpoint was trained with."""

import math

import torch

from utils.data import load_corpus, train_val_split
from utils.model import count_parameters
from utils.tokenizers import CharTokenizer
from utils.train_config import PRESETS, preset
from utils.trainer import build_model, split_loss, train

FAST = "shakespeare-char-fast"


def test_fast_preset_is_listed_and_leaves_the_shipped_recipe_alone():
    assert FAST in PRESETS
    fast, shipped = preset(FAST, "cpu"), preset("shakespeare-char", "cpu")
    # The shipped checkpoint was trained with these; the fast preset must not replace them.
    assert (shipped.n_layer, shipped.n_embd, shipped.block_size, shipped.batch_size) == (6, 128, 128, 32)
    assert fast != shipped
    # A few minutes buy few updates, so each must be cheap and the step size large.
    assert fast.tokens_per_step < shipped.tokens_per_step
    assert fast.lr > shipped.lr
    assert fast.dropout == 0.0
    assert 0 < fast.min_lr < fast.lr


def test_fast_preset_builds_and_trains_two_steps_on_shakespeare():
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    config = preset(FAST, "cpu", max_steps=2, warmup_steps=1, eval_interval=2, eval_batches=1)
    model = build_model(config, tokenizer.vocab_size)
    assert model.config.n_layer == config.n_layer and model.config.n_embd == config.n_embd
    assert count_parameters(model) > 100_000
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = train(model, train_ids, val_ids[:5000], config, progress=False)

    assert result.steps == 2 and result.history["eval_step"][-1] == 2
    assert math.isfinite(result.final_val_loss)
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "two optimizer steps left every weight unchanged"
    # Two big steps must not blow a fresh model up: it still scores no worse than guessing
    # uniformly among the characters (ln vocab), and not implausibly well either.
    loss = split_loss(result.model, val_ids[:5000], config.block_size)
    assert 2.0 < loss < math.log(tokenizer.vocab_size) + 0.5


def _fake_gpu(monkeypatch, native_bf16: bool):
    """A CUDA device whose bf16 is native, or only emulated (is_bf16_supported's default
    answer is True for both)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)


def test_auto_dtype_is_bf16_only_where_a_gpu_runs_it_natively(monkeypatch):
    from utils.train_config import TrainConfig
    from utils.trainer import autocast_dtype

    config = TrainConfig(dtype="auto")
    _fake_gpu(monkeypatch, native_bf16=True)
    assert autocast_dtype(config, torch.device("cuda")) == torch.bfloat16
    _fake_gpu(monkeypatch, native_bf16=False)        # a T4 or V100: emulated bf16 is slow
    assert autocast_dtype(config, torch.device("cuda")) == torch.float16
    assert autocast_dtype(config, torch.device("cpu")) is None
    assert autocast_dtype(TrainConfig(dtype="bfloat16"), torch.device("cuda")) == torch.bfloat16


def test_float16_training_goes_through_the_grad_scaler_and_learns_the_same():
    """The fp16 path (what an older GPU gets) scales the loss, unscales before clipping and
    steps through the scaler; on a CPU it must train as float32 does."""
    text = load_corpus("shakespeare")[:20000]
    tokenizer = CharTokenizer(text)
    train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)))
    losses = {}
    for dtype in ("float32", "float16"):
        config = preset("tiny", "cpu", dtype=dtype, max_steps=20)
        torch.manual_seed(0)
        result = train(build_model(config, tokenizer.vocab_size), train_ids, val_ids, config,
                       progress=False)
        losses[dtype] = result.history["loss"]
    assert losses["float16"][-1] < losses["float16"][0] - 0.5        # it learned
    assert max(abs(a - b) for a, b in zip(losses["float16"], losses["float32"],
                                          strict=True)) < 1e-2
