"""The activation-memory count against what autograd really saves, to the byte."""

import numpy as np
import pytest
import torch
from torch import nn

from utils.activation_memory import (
    activation_bytes,
    activation_bytes_per_layer,
    block_terms,
    checkpointing_cost,
    head_terms,
    saved_tensor_bytes,
)
from utils.model import GPT, GPTConfig

# the shakespeare-char-fast preset's model and batch, then smaller shapes of every kind
FAST = dict(vocab_size=65, block_size=128, n_layer=2, n_head=4, n_embd=128, bias=False)
SHAPES = [
    (FAST, 16, None),
    ({**FAST, "bias": True}, 16, None),
    (dict(vocab_size=200, block_size=32, n_layer=3, n_head=3, n_embd=48, tie_weights=False), 3, 32),
    (dict(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=16), 1, 5),   # one head
    (dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), 2, 1),   # one position
    (dict(vocab_size=50, block_size=64, n_layer=2, n_head=6, n_embd=96, mlp="gelu_exact",
          pos="none"), 4, 64),
    (dict(vocab_size=50, block_size=64, n_layer=2, n_head=6, n_embd=96, mlp="relu2",
          ffn_hidden=200, bias=False), 4, 40),
]


def measure(config, batch, seq_len, attention="sdpa", seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = GPT(config).to(dtype)
    if attention == "math":               # the from-scratch attention of utils.attention
        for block in model.blocks:
            block.attn.use_sdpa = False
    T = config.block_size if seq_len is None else seq_len
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(config.vocab_size, (batch, T), generator=g)
    targets = torch.randint(config.vocab_size, (batch, T), generator=g)
    return saved_tensor_bytes(model, idx, targets)


@pytest.mark.parametrize("attention", ["sdpa", "math"])
@pytest.mark.parametrize("settings,batch,seq_len", SHAPES)
def test_formula_equals_the_measured_saved_tensors(settings, batch, seq_len, attention):
    config = GPTConfig(**settings)
    expected = activation_bytes(config, batch, seq_len, attention=attention)
    assert measure(config, batch, seq_len, attention) == expected


@pytest.mark.parametrize("settings,batch,seq_len", SHAPES[1:4])
def test_checkpointed_formula_equals_the_measurement(settings, batch, seq_len):
    config = GPTConfig(**settings, checkpoint_activations=True)
    measured = measure(config, batch, seq_len)
    assert measured == activation_bytes(config, batch, seq_len, checkpointed=True)
    # and it really is smaller than without checkpointing, by the blocks' tensors
    assert measured < activation_bytes(config, batch, seq_len) - config.n_layer * 10


def test_checkpointing_keeps_only_the_inputs_with_torchs_own_checkpoint():
    # the same count with torch.utils.checkpoint called by hand around each block
    config = GPTConfig(**FAST)

    class Checkpointed(GPT):
        def forward(self, idx, targets):
            x = self.embed(idx)
            for block in self.blocks:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            logits = self.unembed(x)
            return logits, nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    torch.manual_seed(0)
    model = Checkpointed(config)
    idx, targets = torch.randint(65, (16, 128)), torch.randint(65, (16, 128))
    assert saved_tensor_bytes(model, idx, targets) == activation_bytes(config, 16,
                                                                      checkpointed=True)


def test_bfloat16_on_cpu_is_counted_with_two_bytes_per_value():
    config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)
    for attention in ("sdpa", "math"):
        measured = measure(config, 3, 32, attention, dtype=torch.bfloat16)
        assert measured == activation_bytes(config, 3, bytes_per_value=2, attention=attention)
        assert measured != activation_bytes(config, 3, bytes_per_value=4, attention=attention)


def test_random_shapes_seeded():
    rng = np.random.default_rng(18)
    for _ in range(4):
        n_head = int(rng.integers(1, 5))
        config = GPTConfig(vocab_size=int(rng.integers(2, 300)), block_size=int(rng.integers(1, 40)),
                           n_layer=int(rng.integers(1, 4)), n_head=n_head,
                           n_embd=n_head * int(rng.integers(1, 12)), bias=bool(rng.integers(2)))
        batch, T = int(rng.integers(1, 5)), int(rng.integers(1, config.block_size + 1))
        assert measure(config, batch, T) == activation_bytes(config, batch, T), config


def test_every_term_is_needed():
    # negative control: dropping any one term, or counting the hidden layer once, breaks the match
    config = GPTConfig(**{**FAST, "n_layer": 1})
    measured = measure(config, 4, 32)
    terms = {**block_terms(4, 32, 128, 4), **head_terms(config, 4, 32)}
    assert sum(terms.values()) == measured
    for name, size in terms.items():
        assert sum(terms.values()) - size != measured, name
    hidden_once = sum(terms.values()) - terms["hidden, activated"]
    assert hidden_once != measured
    # the T x T weights the fused kernel never stores would overcount it
    with_weights = sum(terms.values()) + 4 * 4 * 32 * 32 * 4
    assert with_weights != measured


def test_the_closed_form_in_the_docstring():
    N, d, h, b = 16 * 128, 128, 4, 4
    assert activation_bytes_per_layer(16, 128, d, h) == (16 * d + 4) * N * b + 4 * h * N
    assert activation_bytes_per_layer(16, 128, d, h, 2) == (16 * d + 4) * N * 2 + 4 * h * N
    # the math path grows with T squared: doubling T more than doubles it
    sdpa = [activation_bytes_per_layer(1, T, 64, 4) for T in (256, 512)]
    math = [activation_bytes_per_layer(1, T, 64, 4, attention="math") for T in (256, 512)]
    assert sdpa[1] == 2 * sdpa[0] and math[1] > 2.5 * math[0]


def test_saved_tensor_bytes_on_a_hand_counted_module():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(10, 100))     # big: counting it would show

        def forward(self, x, targets):
            h = (x @ self.w).relu()             # keeps x (for w's grad), w (a parameter), h
            return h, (h * targets).sum()        # keeps h (same memory) and targets

    x, targets = torch.randn(5, 10), torch.randn(5, 100)
    assert saved_tensor_bytes(Tiny(), x, targets) == (5 * 10 + 5 * 100 + 5 * 100) * 4


def test_saved_tensor_bytes_restores_the_mode_and_sees_only_training():
    config = GPTConfig(**{**FAST, "n_layer": 1}, checkpoint_activations=True)
    model = GPT(config).eval()
    idx, targets = torch.randint(65, (2, 16)), torch.randint(65, (2, 16))
    assert saved_tensor_bytes(model, idx, targets) == activation_bytes(config, 2, 16,
                                                                      checkpointed=True)
    assert not model.training


def test_unsupported_settings_say_which():
    for field, value in (("norm", "rms"), ("pos", "rope"), ("dropout", 0.1), ("n_kv_head", 1),
                         ("mlp", "swiglu")):
        config = GPTConfig(**{**FAST, field: value})
        with pytest.raises(ValueError, match=field):
            activation_bytes(config, 2)
    with pytest.raises(ValueError, match="attention"):
        activation_bytes_per_layer(1, 4, 8, 2, attention="flash")


def test_checkpointing_cost_measures_both():
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)
    cost = checkpointing_cost(config, batch=2, steps=1)
    for name, flag in (("plain", False), ("checkpointed", True)):
        assert cost[name]["saved_bytes"] == activation_bytes(config, 2, checkpointed=flag)
        assert cost[name]["seconds"] > 0
    assert cost["checkpointed"]["saved_bytes"] < cost["plain"]["saved_bytes"]
