"""The ablation ladder (utils/ablation.py) and its shipped results (data/ablations.json)."""

import copy
import math

import pytest
import torch

from utils import ablation
from utils.ablation import (
    ARMS,
    BASELINE,
    HEAD_TO_HEADS,
    LADDER,
    arm_cost,
    arm_key,
    build_arm,
    plain_init_,
    residual_stream_std,
    train_arm,
    verdict,
)
from utils.model import GPT, GPTConfig, estimate_flops_per_token
from utils.trainer import build_model

V = 76                                    # the corpus's characters
T = ablation.TRAINING["block_size"]


def ids(seed=0, batch=2):
    return torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(ARMS))
def test_every_arm_builds_and_scores_like_a_uniform_guess_at_init(name):
    model = build_arm(name, 0, V)
    logits, loss = model(ids(), ids(1))
    assert logits.shape == (2, T, V)
    assert abs(loss.item() - math.log(V)) < 0.05        # small init: logits near 0


def test_bigram_has_no_attention_and_reads_only_the_current_token():
    bigram, head = build_arm("bigram", 0, V), build_arm("+ 1 attention head", 0, V)
    assert not [n for n, _ in bigram.named_parameters() if "attn" in n or "position" in n]
    assert len(bigram.blocks) == 0
    x = ids()
    y = x.clone()
    y[:, :-1] = (y[:, :-1] + 1) % V                     # change every earlier token
    with torch.no_grad():
        assert torch.equal(bigram(x)[0][:, -1], bigram(y)[0][:, -1])
        assert not torch.allclose(head(x)[0][:, -1], head(y)[0][:, -1])   # attention does read them


def test_four_heads_split_the_same_weights_as_one():
    one, four = build_arm("+ 1 attention head", 0, V), build_arm("+ 4 heads", 0, V)
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in four.parameters())
    assert one.blocks[0].attn.n_heads == 1 and four.blocks[0].attn.n_heads == 4
    assert one.blocks[0].mlp is None and build_arm("+ feed-forward", 0, V).blocks[0].mlp is not None


@torch.no_grad()
def test_without_residual_a_block_replaces_the_stream():
    x = torch.randn(2, T, ablation.TRAINING["n_embd"])
    attention_only = build_arm("+ 4 heads", 0, V).blocks[0]
    attention_only.attn.proj.weight.zero_()             # attention now outputs zero...
    assert torch.equal(attention_only(x), torch.zeros_like(x))           # ...and x is gone
    with_mlp = build_arm("+ feed-forward", 0, V).blocks[0]
    with_mlp.mlp.down.weight.zero_()                    # the MLP's output replaces attention's
    assert torch.equal(with_mlp(x), torch.zeros_like(x))
    residual = build_arm("+ residual", 0, V).blocks[0]  # negative control: x passes through
    residual.attn.proj.weight.zero_()
    residual.mlp.down.weight.zero_()
    assert torch.equal(residual(x), x)


def test_the_norm_rung_adds_only_layernorm_gains():
    names = {name: {n for n, _ in build_arm(name, 0, V).named_parameters()}
             for name in ("+ residual", "+ pre-norm LayerNorm")}
    added = names["+ pre-norm LayerNorm"] - names["+ residual"]
    assert names["+ residual"] < names["+ pre-norm LayerNorm"]
    assert added == {"norm.weight"} | {f"blocks.{i}.norm{j}.weight" for i in range(2) for j in (1, 2)}


def test_top_rung_is_the_course_gpt_as_build_model_makes_it():
    for seed in (0, 3):
        ours, theirs = build_arm(BASELINE, seed, V), build_model(ablation.training_config(seed), V)
        assert ours.config == theirs.config
        for (n, p), (m, q) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert n == m and torch.equal(p, q), n


@torch.no_grad()
def test_ladder_with_every_switch_on_is_the_untied_gpt():
    t = ablation.TRAINING
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=t["n_layer"], n_head=t["n_head"],
                        n_embd=t["n_embd"], bias=False, tie_weights=False))
    x = ids()
    full = build_arm("+ pre-norm LayerNorm", 1, V)
    full.load_state_dict(gpt.state_dict())              # same names, same shapes: strict
    assert torch.allclose(full(x)[0], gpt(x)[0], atol=1e-6)
    no_residual = build_arm("+ feed-forward", 1, V)     # negative control: same weights, one
    no_residual.load_state_dict(gpt.state_dict(), strict=False)      # switch off, other logits
    assert not torch.allclose(no_residual(x)[0], gpt(x)[0], atol=1e-3)


def test_plain_init_redraws_exactly_the_residual_projections():
    scaled, plain = build_arm(BASELINE, 0, V), build_arm("plain init", 0, V)
    redrawn = ("attn.proj.weight", "mlp.down.weight")
    for (name, p), q in zip(scaled.named_parameters(), plain.parameters(), strict=True):
        if name.endswith(redrawn):
            target = 0.02 / math.sqrt(2 * ablation.TRAINING["n_layer"])
            assert abs(p.std().item() / target - 1) < 0.1, name
            assert abs(q.std().item() / 0.02 - 1) < 0.1, name
        else:
            assert torch.equal(p, q), name
    assert plain_init_(scaled) is scaled                # in place


def test_head_to_heads_each_change_one_choice():
    base = build_arm(BASELINE, 0, V)
    assert base.lm_head.weight is base.embed.token.weight and base.blocks[0].mlp.gate is None
    assert build_arm("SwiGLU", 0, V).blocks[0].mlp.gate is not None
    rope = build_arm("RoPE", 0, V)
    assert rope.embed.position is None and rope.rope is not None
    untied = build_arm("untied", 0, V)
    assert untied.lm_head.weight is not untied.embed.token.weight
    for question, (ours, other) in HEAD_TO_HEADS.items():
        assert ours == BASELINE and other in ARMS, question


def test_cost_follows_estimate_flops_per_token():
    for name, spec in ARMS.items():
        params, flops = arm_cost(name, V)
        model = build_arm(name, 0, V)
        assert params == sum(p.numel() for p in model.parameters())
        if "gpt" in spec:
            assert flops == estimate_flops_per_token(model.config), name
    assert arm_cost("bigram", V)[1] == 2 * ablation.TRAINING["n_embd"] * V   # the output layer
    assert arm_cost("+ 1 attention head", V) == arm_cost("+ 4 heads", V)


def test_cache_key_changes_with_steps_and_config(monkeypatch):
    keys = {name: arm_key(name) for name in ARMS}
    assert len(set(keys.values())) == len(ARMS)         # every arm its own key
    assert arm_key("bigram", ablation.TRAINING["max_steps"]) == keys["bigram"]
    assert arm_key("bigram", ablation.TRAINING["max_steps"] + 1) != keys["bigram"]
    monkeypatch.setitem(ablation.TRAINING, "lr", 1e-3)
    assert arm_key("bigram") != keys["bigram"]
    monkeypatch.undo()
    monkeypatch.setitem(ARMS, "RoPE", {"gpt": {"pos": "alibi"}})
    assert arm_key("RoPE") != keys["RoPE"] and arm_key("bigram") == keys["bigram"]


def stale_parts(results):
    """What in a results file disagrees with the current code (empty: up to date)."""
    current = ablation.settings_record()
    stale = [k for k in current if results["settings"].get(k) != current[k]]
    stale += [name for name in ARMS if name not in results["arms"]
              or results["arms"][name]["key"] != arm_key(name)
              or sorted(results["arms"][name]["runs"]) != sorted(map(str, ablation.SEEDS))]
    stale += [] if results["ladder"] == list(LADDER) else ["ladder"]
    return stale


def test_shipped_results_match_the_current_settings():
    results = ablation.load_results()
    assert stale_parts(results) == [], ("data/ablations.json is stale: rebuild it with "
                                        "OMP_NUM_THREADS=1 python data/build_ablations.py")
    changed = copy.deepcopy(results)                     # negative control: other steps
    changed["settings"]["training"]["max_steps"] += 1
    changed["arms"]["bigram"]["key"] = arm_key("bigram", ablation.TRAINING["max_steps"] + 1)
    assert stale_parts(changed) == ["training", "bigram"]
    for name in ARMS:
        arm = results["arms"][name]
        assert (arm["params"], arm["flops_per_token"]) == arm_cost(name, V)
        assert all(0 < run["val"] < math.log(V) for run in arm["runs"].values())


def test_retraining_a_rung_repeats_the_shipped_number():
    run = train_arm("bigram", 0)                         # a few seconds on one core
    shipped = ablation.load_results()["arms"]["bigram"]["runs"]["0"]["val"]
    assert abs(run["val"] - shipped) < 2e-4


def test_retraining_is_exact_and_depends_on_the_seed():
    first, again = train_arm("+ 1 attention head", 0, steps=5), train_arm("+ 1 attention head", 0, steps=5)
    assert first["val"] == again["val"] and first["train"] == again["train"]
    assert train_arm("+ 1 attention head", 1, steps=5)["val"] != first["val"]   # another seed


def test_residual_stream_std_grows_less_with_the_scaled_init():
    config = GPTConfig(vocab_size=V, block_size=T, n_layer=12, n_head=4, n_embd=64, bias=False)
    torch.manual_seed(0)
    scaled = residual_stream_std(GPT(config), ids())
    torch.manual_seed(0)
    plain = residual_stream_std(plain_init_(GPT(config)), ids())
    assert len(scaled) == len(plain) == 13
    assert scaled[0] == plain[0]                         # same embeddings
    assert plain[-1] > 1.5 * scaled[-1]


def test_verdict_separates_real_gaps_from_noise():
    a = [2.00, 2.02, 1.98]                               # std 0.02
    assert verdict(a, [1.90, 1.92, 1.88]) == "better"    # gap 0.10 > 2 x 0.02
    assert verdict(a, [2.10, 2.12, 2.08]) == "worse"
    assert verdict(a, [1.97, 1.99, 1.95]) == "within noise"    # gap 0.03 < 0.04
    assert verdict(a, [1.90, 2.10, 1.70]) == "within noise"    # the same 0.1 gap, noisier seeds
    assert verdict(a, [1.97, 1.99, 1.95], k=1.0) == "better"
    with pytest.raises(ValueError):
        verdict([2.0], [1.0])                            # one seed: no noise estimate


def synthetic_results():
    losses = {name: [3.0 - 0.1 * i, 3.01 - 0.1 * i, 2.99 - 0.1 * i] for i, name in enumerate(ARMS)}
    losses["+ 4 heads"] = [x + 0.095 for x in losses["+ 4 heads"]]   # no better than 1 head
    return {"settings": {"seeds": [0, 1, 2], "training": dict(ablation.TRAINING)},
            "arms": {name: {"params": 1000, "flops_per_token": 2e6,
                            "runs": {str(s): {"val": v} for s, v in enumerate(vals)}}
                     for name, vals in losses.items()}}


def test_tables_and_plot_say_what_the_numbers_say():
    results = synthetic_results()
    rows = ablation.ladder_table(results).splitlines()
    assert len(rows) == 1 + len(LADDER)
    assert rows[3].startswith("+ 4 heads") and rows[3].endswith("within noise")
    assert rows[4].startswith("+ feed-forward") and rows[4].endswith("better")
    text = ablation.head_to_head_table(results)
    assert text.count("better") == len(HEAD_TO_HEADS) and "3/3" in text
    fig = ablation.plot_ladder(results)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.patches) == len(LADDER)
    assert [round(p.get_height(), 3) for p in ax.patches][:2] == [3.0, 2.9]
