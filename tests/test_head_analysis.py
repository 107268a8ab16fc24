import math

import pytest
import torch

from utils.attention_lm import AttentionLM, LMConfig
from utils.head_analysis import (
    attention_weights,
    distance_profile,
    head_ablation,
    head_grid,
    landmark_weights,
    word_landmarks,
    zero_head,
)
from utils.model import GPT, GPTConfig


def small_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()


def small_lm(seed=0):
    torch.manual_seed(seed)
    return AttentionLM(LMConfig(vocab_size=11, d_model=16, n_heads=2, block_size=8)).eval()


DATA = torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(0))


def uniform_heads(model):
    """Zero every query and key weight: all scores are equal, so each head is uniform."""
    with torch.no_grad():
        for block in model.blocks:
            d = block.attn.n_heads * block.attn.d_head
            block.attn.qkv.weight[:2 * d] = 0
            if block.attn.qkv.bias is not None:
                block.attn.qkv.bias[:2 * d] = 0
    return model


@pytest.mark.parametrize("make", [small_gpt, small_lm])
def test_attention_weights_one_causal_map_per_layer(make):
    model = make()
    weights = attention_weights(model, DATA[:8][None])
    assert len(weights) == 2 and weights[0].shape == (1, 2, 8, 8)
    assert torch.allclose(weights[1].sum(-1), torch.ones(1, 2, 8))
    assert weights[0][0, 0].triu(1).abs().max() == 0          # nothing from the future


def test_uniform_heads_give_the_exact_one_over_t_profile():
    # With zero query/key weights every score is equal, so query t puts 1/(t+1) on each of
    # the t+1 positions it sees; the profile at k is the mean of 1/(t+1) over t = k..T-1.
    model = uniform_heads(small_gpt())
    profile = distance_profile(model, DATA, max_distance=7, n_windows=4)
    T = 8
    expected = torch.tensor([sum(1 / (t + 1) for t in range(k, T)) / (T - k) for k in range(T)])
    assert profile.shape == (2, 2, 8)
    assert torch.allclose(profile, expected.expand(2, 2, 8), atol=1e-5)


def test_zeroing_a_head_equals_removing_its_columns_of_w_o():
    model = small_gpt()
    x = DATA[:8][None]
    with zero_head(model, layer=1, head=0), torch.no_grad():
        ablated = model(x)[0]
    assert not torch.allclose(ablated, model(x)[0])             # the hook is gone afterwards too
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.proj.weight[:, :attn.d_head] = 0                  # head 0's slice of the input
        by_hand = model(x)[0]
    assert torch.allclose(ablated, by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="head"):
        with zero_head(model, layer=0, head=2):
            pass


@pytest.mark.parametrize("make", [small_gpt, small_lm])
def test_ablation_measures_each_head_against_the_same_windows(make):
    model = make()
    attn = (model.blocks if hasattr(model, "blocks") else model.layers)[0].attn
    with torch.no_grad():
        attn.proj.weight[:, attn.d_head:] = 0                   # head 1 of layer 0 already silent
    base, increase = head_ablation(model, DATA, n_windows=4)
    assert increase.shape == (2, 2)
    assert increase[0, 1] == 0                                  # removing nothing changes nothing
    assert increase.abs().sum() > 0
    assert math.isfinite(base) and base > 0


def test_head_grid_draws_every_layer_and_head():
    model = small_lm()
    maps = [w[0] for w in attention_weights(model, DATA[:8][None])]
    fig = head_grid(maps, list("abcdefgh"), "test")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title() == "head 0" and fig.axes[0].get_ylabel() == "layer 0"


def test_uniform_profile_and_its_plot():
    from utils.head_analysis import plot_distance_profiles, uniform_profile
    assert torch.allclose(uniform_profile(4, 3), torch.tensor([(1 + 1 / 2 + 1 / 3 + 1 / 4) / 4,
                                                              (1 / 2 + 1 / 3 + 1 / 4) / 3,
                                                              (1 / 3 + 1 / 4) / 2, 1 / 4]))
    fig = plot_distance_profiles(torch.rand(4, 2, 5), T=8, title="t", columns=3)
    assert [ax.get_title() for ax in fig.axes[:4]] == [f"layer {i}" for i in range(4)]
    assert len(fig.axes[0].get_lines()) == 3                   # two heads + the uniform line


def _last_space_before(is_space):
    """Written as a loop, independently of the library: last space strictly before each t."""
    last = torch.full(is_space.shape, -1)
    for b in range(is_space.size(0)):
        seen = -1
        for t in range(is_space.size(1)):
            last[b, t] = seen
            seen = t if is_space[b, t] else seen
    return last


def test_landmarks_of_heads_built_to_look_at_one_landmark():
    is_space = torch.rand(3, 12, generator=torch.Generator().manual_seed(0)) < 0.3
    is_space[:, 0] = True                                   # every later query has a space
    last = _last_space_before(is_space)
    T = 12
    on_previous = torch.zeros(3, T, T)
    on_space = torch.zeros(3, T, T)
    on_self = torch.eye(T).expand(3, T, T)
    for b in range(3):
        for t in range(T):
            on_previous[b, t, max(t - 1, 0)] = 1
            on_space[b, t, max(last[b, t].item(), 0)] = 1
    heads = torch.stack([on_previous, on_space, on_self], dim=1)          # [B, 3 heads, T, T]
    marks = landmark_weights(heads, is_space)
    assert torch.allclose(marks["previous character"][0], torch.tensor(1.0))
    assert torch.allclose(marks["last space"][1], torch.tensor(1.0))
    assert torch.allclose(marks["current word"], torch.tensor([
        # the previous character is in the current word unless it is the space itself
        (last[:, 1:] < torch.arange(T - 1)).float().mean(), 0.0, 1.0]))


def test_uniform_heads_score_the_uniform_baseline():
    model = uniform_heads(small_gpt())
    marks, uniform = word_landmarks(model, DATA, space_id=3, n_windows=8)
    for name, score in marks.items():
        assert score.shape == (2, 2)
        assert torch.allclose(score, torch.tensor(uniform[name]), atol=1e-5), name
    assert uniform["current word"] > uniform["last space"] > 0
