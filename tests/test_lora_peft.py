"""Our LoRA against Hugging Face peft's: same A and B weights, same outputs (no downloads).

peft is pinned in requirements.txt; if it is missing the test is skipped with the reason.
"""

import copy

import pytest
import torch

from utils.lora import apply_lora, lora_layers, merge_lora
from utils.model import GPT, GPTConfig

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -r requirements.txt)")

TARGETS = ("qkv", "proj", "up", "down")


def models(rank=4, alpha=8):
    """(base, ours, peft's): a tiny GPT adapted twice, peft's adapters holding our A and B."""
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    ours = apply_lora(copy.deepcopy(base), rank=rank, alpha=alpha, targets=TARGETS)
    for layer in lora_layers(ours).values():
        torch.nn.init.normal_(layer.lora_B, std=0.2)     # B != 0, so the adapters matter
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(base)).eval()
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            wrapped = theirs.get_submodule(name)
            # peft keeps A and B as Linear layers: lora_A maps in -> r, lora_B maps r -> out,
            # so their weights have exactly our shapes [r, in] and [out, r].
            wrapped.lora_A["default"].weight.copy_(layer.lora_A)
            wrapped.lora_B["default"].weight.copy_(layer.lora_B)
    return base, ours, theirs


def test_peft_wraps_the_same_layers_with_the_same_scaling():
    _, ours, theirs = models(rank=4, alpha=8)
    for name, layer in lora_layers(ours).items():
        assert theirs.get_submodule(name).scaling["default"] == layer.scaling == 2.0


@pytest.mark.parametrize(("rank", "alpha"), [(4, 8), (2, 1)])
def test_same_weights_give_the_same_logits_as_peft(rank, alpha):
    base, ours, theirs = models(rank, alpha)
    idx = torch.randint(0, 30, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours_logits, theirs_logits = ours(idx)[0], theirs(idx)[0]
        base_logits = base(idx)[0]
    assert (ours_logits - base_logits).abs().max() > 1e-2           # the adapters change things
    assert (ours_logits - theirs_logits).abs().max() < 1e-6


def test_merged_weights_equal_peft_merged_weights():
    _, ours, theirs = models()
    names = list(lora_layers(ours))
    merged_ours = merge_lora(ours)
    merged_theirs = theirs.get_submodule(names[0])
    merged_theirs.merge()
    assert (merged_ours.get_submodule(names[0]).weight
            - merged_theirs.base_layer.weight).abs().max() < 1e-6
