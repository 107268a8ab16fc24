"""utils/moe.py: top-k routing, the load-balancing loss, parameter counts, the MoE GPT."""

import pytest
import torch
from torch import nn

from utils.layers import FeedForward
from utils.model import GPT, GPTConfig
from utils.moe import (
    MoEFeedForward,
    count_moe_parameters,
    moe_aux_loss,
    moe_gpt,
    train_briefly,
)


def test_each_token_goes_to_exactly_k_experts_with_weights_summing_to_one():
    torch.manual_seed(0)
    moe = MoEFeedForward(8, n_experts=5, top_k=2, hidden=12)
    x = torch.randn(3, 7, 8)
    y = moe(x)
    assert y.shape == x.shape
    assert moe.router_probs.shape == (21, 5) and moe.expert_counts.tolist() != [0] * 5
    assert moe.expert_counts.sum().item() == 21 * 2
    # rebuild the output by hand from the router's choice: exactly the top-2 experts, each
    # weighted by its probability renormalised over the two
    tokens = x.reshape(-1, 8)
    probs = torch.softmax(moe.router(tokens), dim=-1)
    torch.testing.assert_close(moe.router_probs, probs.detach())
    top_p, top_e = probs.topk(2, dim=-1)
    gates = top_p / top_p.sum(-1, keepdim=True)
    torch.testing.assert_close(gates.sum(-1), torch.ones(21))
    expected = torch.stack([
        sum(gates[n, j] * moe.experts[int(top_e[n, j])](tokens[n]) for j in range(2))
        for n in range(21)])
    torch.testing.assert_close(y.reshape(-1, 8), expected, rtol=1e-5, atol=1e-6)
    # and no other expert matters: zeroing an expert a token did not pick leaves it unchanged
    unused = [e for e in range(5) if e not in top_e[0].tolist()][0]
    with torch.no_grad():
        for p in moe.experts[unused].parameters():
            p.zero_()
    assert torch.allclose(moe(x).reshape(-1, 8)[0], y.reshape(-1, 8)[0])


def test_one_expert_top1_equals_the_dense_feed_forward():
    torch.manual_seed(1)
    dense = FeedForward(16, hidden=40)
    moe = MoEFeedForward(16, n_experts=1, top_k=1, hidden=40)
    moe.experts[0].load_state_dict(dense.state_dict())
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(moe(x), dense(x))
    assert moe.aux_loss.item() == pytest.approx(1.0)


def test_aux_loss_matches_a_hand_computation():
    moe = MoEFeedForward(2, n_experts=2, top_k=1, hidden=4)
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])     # 3 tokens
    moe(x)
    probs = torch.softmax(x[0] @ moe.router.weight.T, dim=-1)    # [3, 2]
    # tokens 0 and 2 prefer expert 0, token 1 expert 1: f = (2/3, 1/3)
    f = torch.tensor([2 / 3, 1 / 3])
    expected = 2 * (f * probs.mean(0)).sum()
    assert moe.expert_counts.tolist() == [2, 1]
    assert moe.aux_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert moe.aux_loss.item() > 1.0                             # unbalanced: above the floor


def test_aux_loss_is_one_for_a_uniform_router_and_not_below_for_others():
    torch.manual_seed(2)
    moe = MoEFeedForward(8, n_experts=4, top_k=2, hidden=8)
    with torch.no_grad():
        moe.router.weight.zero_()                                # every probability 1/4
    moe(torch.randn(4, 8, 8))
    assert moe.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    # a router that sends everyone to the same experts is penalised
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 5.0
    moe(torch.ones(2, 4, 8))
    assert moe.aux_loss.item() > 1.5


@pytest.mark.parametrize("n_experts,top_k", [(4, 2), (8, 2), (4, 1), (8, 1), (6, 3)])
def test_aux_loss_of_a_collapsed_router_approaches_n_experts_over_top_k(n_experts, top_k):
    # Every token picks the same top_k experts (f = 1/top_k for each of them) and the router
    # is sure of one of them (P = 1 there): aux = n_experts * (1/top_k) * 1. Nothing scores more,
    # since sum_i f_i P_i <= max_i f_i <= 1/top_k. "About twice the floor" holds only for n/k = 2.
    moe = MoEFeedForward(8, n_experts=n_experts, top_k=top_k, hidden=8)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 20.0                 # expert 0 wins every positive token
        moe.router.weight[1:top_k] = 10.0           # and the same runners-up fill the top_k
    moe(torch.ones(2, 16, 8))
    assert moe.aux_loss.item() == pytest.approx(n_experts / top_k, rel=1e-3)
    torch.manual_seed(0)
    moe.router.weight.data.normal_(std=3.0)
    moe(torch.randn(4, 16, 8))
    assert moe.aux_loss.item() <= n_experts / top_k + 1e-6


def test_gradients_reach_the_router_through_gates_and_aux_loss():
    torch.manual_seed(3)
    moe = MoEFeedForward(8, n_experts=4, top_k=2, hidden=8)
    x = torch.randn(2, 6, 8)
    moe(x).pow(2).sum().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    moe.zero_grad()
    moe(x)
    moe.aux_loss.backward()                   # the balancing loss alone also trains the router
    assert moe.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in moe.experts.parameters())


def test_invalid_top_k_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(8, n_experts=2, top_k=3)


def test_parameter_counts_total_and_active():
    moe = MoEFeedForward(8, n_experts=4, top_k=2, hidden=16)
    per_expert = 8 * 16 + 16 + 16 * 8 + 8
    router = 8 * 4
    assert count_moe_parameters(moe) == (router + 4 * per_expert, router + 2 * per_expert)
    linear = nn.Linear(3, 3)
    assert count_moe_parameters(linear) == (12, 12)


@pytest.fixture(scope="module")
def config():
    return GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_moe_gpt_has_equal_active_compute_to_the_dense_gpt(config):
    torch.manual_seed(0)
    dense, moe = GPT(config), moe_gpt(config, n_experts=4, top_k=2)
    assert all(isinstance(b.mlp, MoEFeedForward) for b in moe.blocks)
    assert moe.blocks[0].mlp.experts[0].up.out_features == 2 * config.n_embd   # 4d / top-2
    total, active = count_moe_parameters(moe)
    dense_total = sum(p.numel() for p in dense.parameters())
    routers = config.n_layer * config.n_embd * 4
    # a token uses two half-width experts: the dense FFN's weights, plus the router's, plus
    # one extra bias vector of the output layer per layer (each expert has its own)
    assert active == dense_total + routers + config.n_layer * config.n_embd
    assert total > active
    idx = torch.randint(0, 20, (3, 16))
    logits, loss = moe(idx, idx)
    assert logits.shape == (3, 16, 20) and torch.isfinite(loss)
    assert moe_aux_loss(moe).dim() == 0
    with pytest.raises(ValueError, match="no MoEFeedForward"):
        moe_aux_loss(dense)


def test_train_briefly_lowers_the_loss_and_counts_expert_usage(config):
    torch.manual_seed(0)
    data = torch.arange(600) % 7                          # a periodic sequence: easy to learn
    model = moe_gpt(config)
    history = train_briefly(model, data, steps=30, batch_size=4, block_size=16, lr=1e-2,
                            log_every=10)
    assert history["step"] == [10, 20, 30]
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["expert_counts"]) == 2
    assert sum(history["expert_counts"][0]) == 30 * 4 * 16 * 2
    assert all(a == a for a in history["aux"])           # recorded (not nan) for an MoE
    dense = train_briefly(GPT(config), data, steps=10, batch_size=4, block_size=16, log_every=5)
    assert dense["expert_counts"] == []


def test_moe_gpt_experts_split_the_configured_ffn_width():
    """With `ffn_hidden` set, the dense width the experts share is that one, not the 4x rule."""
    cfg = GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16, ffn_hidden=40)
    model = moe_gpt(cfg, n_experts=4, top_k=2)
    assert model.blocks[0].mlp.experts[0].up.weight.shape == (20, 16)          # 40 / top_k
    rule = moe_gpt(GPTConfig(**{**cfg.__dict__, "ffn_hidden": None}), n_experts=4, top_k=2)
    assert rule.blocks[0].mlp.experts[0].up.weight.shape == (32, 16)           # 4 * 16 / 2
