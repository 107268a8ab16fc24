"""What each piece of a GPT buys: an ablation ladder and four head-to-heads.

Each rung of the ladder adds one piece and keeps everything below it:

    bigram                  token embedding -> output layer: the next character from this one
    + 1 attention head      learned positions, one causal head of size n_embd per block
    + 4 heads               the same weights split into 4 heads of n_embd / 4
    + feed-forward          a GELU network (4 x n_embd wide) after attention in each block
    + residual              x + attn(x) and x + mlp(x) instead of replacing x
    + pre-norm LayerNorm    LayerNorm before attention, before the MLP and before the output
    + tied, GPT-2 init      the course's GPT as utils.trainer.build_model makes it: output
                            layer tied to the embedding, residual projections / sqrt(2 L)

The lower rungs are a `LadderLM` of the course's own modules switched on one by one, weights
from N(0, 0.02^2) as GPT draws them before its scaling (all switches on: the GPT, untied and
unscaled). The head-to-heads change one choice of the top rung: SwiGLU (8/3 x n_embd wide,
about the same parameters), RoPE, an untied output layer, "plain" init. Every arm trains with
`TRAINING`: for one seed, the same batches in the same order. data/build_ablations.py runs
`train_arm` for every arm and seed into data/ablations.json.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import MultiHeadAttention
from utils.data import load_corpus, train_val_split
from utils.device import one_thread
from utils.embeddings import TokenPositionEmbedding
from utils.layers import FeedForward, LayerNorm
from utils.model import GPT, GPTConfig, count_parameters
from utils.paths import DATA_DIR
from utils.tokenizers import CharTokenizer
from utils.train_config import PRESETS, TrainConfig
from utils.trainer import split_loss, train

RESULTS_PATH = DATA_DIR / "ablations.json"
SEEDS = (0, 1, 2)
# The fast preset's recipe (lr 8e-3, short warm-up, cosine, no biases) on a smaller model, so
# 11 arms x 3 seeds train in minutes on one core. Every knob that changes what a step computes
# is pinned here, so the cache key (`arm_key`) sees it; the trainer evaluates only at the end.
TRAINING = {**PRESETS["shakespeare-char-fast"]["cpu"], "n_layer": 2, "n_head": 4, "n_embd": 64,
            "block_size": 64, "batch_size": 16, "max_steps": 600, "warmup_steps": 50,
            "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0,
            "grad_accum_steps": 1, "dtype": "float32", "eval_interval": 600, "eval_batches": 2}

# arm name -> what it is: a LadderLM's switches, or a GPT with GPTConfig fields changed
ARMS = {
    "bigram": dict(heads=0, ffn=False, residual=False, norm=False),
    "+ 1 attention head": dict(heads=1, ffn=False, residual=False, norm=False),
    "+ 4 heads": dict(heads=4, ffn=False, residual=False, norm=False),
    "+ feed-forward": dict(heads=4, ffn=True, residual=False, norm=False),
    "+ residual": dict(heads=4, ffn=True, residual=True, norm=False),
    "+ pre-norm LayerNorm": dict(heads=4, ffn=True, residual=True, norm=True),
    "+ tied, GPT-2 init": {"gpt": {}},
    "SwiGLU": {"gpt": {"mlp": "swiglu"}},
    "RoPE": {"gpt": {"pos": "rope"}},
    "untied": {"gpt": {"tie_weights": False}},
    "plain init": {"gpt": {}, "plain_init": True},
}
LADDER = tuple(ARMS)[:7]
BASELINE = "+ tied, GPT-2 init"     # the course GPT: GELU, learned positions, tied, scaled
# question -> (the course GPT's choice, the alternative), both arms of ARMS
HEAD_TO_HEADS = {"SwiGLU vs GELU": (BASELINE, "SwiGLU"), "RoPE vs learned": (BASELINE, "RoPE"),
                 "untied vs tied": (BASELINE, "untied"), "plain vs scaled init": (BASELINE, "plain init")}


# ------------------------------------------------------------------------------- the models

class LadderBlock(nn.Module):
    """A block whose pieces can be left out: attention (0, 1 or n heads), MLP, residuals, norms."""

    def __init__(self, d: int, heads: int, ffn: bool, residual: bool, norm: bool,
                 bias: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.norm1 = LayerNorm(d, bias=bias) if norm and heads else nn.Identity()
        self.attn = MultiHeadAttention(d, heads, bias=bias, use_sdpa=True) if heads else None
        self.norm2 = LayerNorm(d, bias=bias) if norm and ffn else nn.Identity()
        self.mlp = FeedForward(d, "gelu", bias=bias) if ffn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            a = self.attn(self.norm1(x), is_causal=True)
            x = x + a if self.residual else a          # without a residual, x is replaced
        if self.mlp is not None:
            m = self.mlp(self.norm2(x))
            x = x + m if self.residual else m
        return x


class LadderLM(nn.Module):
    """A language model built from the course's pieces, each switched on or off; with
    heads=0 and ffn=False, no blocks and no positions: a bigram model. `forward(idx,
    targets)` returns (logits [B, T, vocab], mean cross-entropy or None), as `train` expects.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_embd: int,
                 heads: int = 0, ffn: bool = False, residual: bool = False,
                 norm: bool = False, bias: bool = False) -> None:
        super().__init__()
        self.embed = TokenPositionEmbedding(vocab_size, n_embd, block_size,
                                            positions="learned" if heads else "none")
        self.blocks = nn.ModuleList(LadderBlock(n_embd, heads, ffn, residual, norm, bias)
                                    for _ in range(n_layer if heads or ffn else 0))
        self.norm = LayerNorm(n_embd, bias=bias) if norm else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(GPT._init_weights)                  # N(0, 0.02^2), biases at zero

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.embed(idx)                            # [B, T, n_embd]
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm(x))            # [B, T, vocab_size]
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def plain_init_(model: GPT) -> GPT:
    """Undo GPT-2's depth scaling in place: attn.proj and mlp.down drawn again from
    N(0, 0.02^2), like every other matrix, instead of 0.02 / sqrt(2 * n_layer)."""
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.down.weight")):
            nn.init.normal_(p, mean=0.0, std=0.02)
    return model


def training_config(seed: int, steps: int | None = None) -> TrainConfig:
    """The TrainConfig every arm trains with: `TRAINING`, this seed, on the CPU."""
    steps = steps or TRAINING["max_steps"]
    return TrainConfig(**{**TRAINING, "max_steps": steps, "eval_interval": max(steps, 1)},
                       seed=seed, device="cpu")


def build_arm(name: str, seed: int, vocab_size: int) -> nn.Module:
    """The untrained model of arm `name`, its weights drawn from `seed`. A GPT arm gets the
    GPTConfig `utils.trainer.build_model` makes from TRAINING, with the arm's fields changed."""
    spec, t = ARMS[name], TRAINING
    shape = {k: t[k] for k in ("block_size", "n_layer", "n_embd", "bias")}
    torch.manual_seed(seed)
    if "gpt" not in spec:
        return LadderLM(vocab_size, **shape, **spec)
    model = GPT(GPTConfig(vocab_size=vocab_size, n_head=t["n_head"], dropout=t["dropout"],
                          **shape, **spec["gpt"]))
    return plain_init_(model) if spec.get("plain_init") else model


def arm_cost(name: str, vocab_size: int) -> tuple[int, int]:
    """(parameters, forward FLOPs per token) of arm `name`, by the rule of
    `utils.model.estimate_flops_per_token` (the tests check they agree on every GPT arm): 2
    per weight of every matrix multiply, plus 2 * 2 * T * n_embd per attention layer."""
    model = build_arm(name, 0, vocab_size)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    layers = sum(isinstance(m, MultiHeadAttention) for m in model.modules())
    return count_parameters(model), 2 * matmul + 4 * layers * model.embed.max_len * model.embed.d_model


def arm_key(name: str, steps: int | None = None) -> str:
    """The cache key of an arm: a hash of its spec and the training settings (steps too)."""
    settings = {**TRAINING, "max_steps": steps or TRAINING["max_steps"]}
    text = json.dumps({"arm": ARMS[name], "training": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- training

@lru_cache(maxsize=1)
def ablation_data() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids, validation ids, vocab size): characters of the course's split. The
    validation text is the last 10 %, the end of the Dream and all of Twelfth Night."""
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    return (*train_val_split(torch.tensor(tokenizer.encode(text))), tokenizer.vocab_size)


@torch.no_grad()
def residual_stream_std(model: GPT, idx: torch.Tensor) -> list[float]:
    """Standard deviation of the residual stream: the embeddings, then after each block."""
    was_training = model.training
    hidden = model.eval()(idx, return_hidden=True).hidden_states
    model.train(was_training)
    return [round(h.std().item(), 5) for h in hidden]


def train_arm(name: str, seed: int = SEEDS[0], steps: int | None = None) -> dict:
    """Train arm `name` from `seed` as data/build_ablations.py does (so a rerun repeats the
    file's number): {"val" (whole validation split), "train", "seconds"}, plus for a GPT
    "residual_stream_std" at init and trained."""
    train_ids, val_ids, vocab_size = ablation_data()
    config = training_config(seed, steps)
    probe = val_ids[: 8 * config.block_size].view(8, config.block_size)   # for the std
    with one_thread():                  # the build's setting, so a rerun repeats it exactly
        start = time.perf_counter()
        model = build_arm(name, seed, vocab_size)
        before = residual_stream_std(model, probe) if "gpt" in ARMS[name] else None
        result = train(model, train_ids, val_ids, config, progress=False)
        run = {"val": round(split_loss(model, val_ids, config.block_size), 6),
               "train": round(result.history["loss"][-1], 6),      # the last step's batch
               "seconds": round(time.perf_counter() - start, 1)}
        if before is not None:
            after = residual_stream_std(model, probe)
            run["residual_stream_std"] = {"init": before, "trained": after}
    return run


# ------------------------------------------------------------------------------- reading

def load_results(path=RESULTS_PATH) -> dict:
    return json.loads(Path(path).read_text())


def settings_record() -> dict:
    """The settings data/ablations.json records: a file built with other ones is stale."""
    return {"training": TRAINING, "seeds": list(SEEDS), "keys": {n: arm_key(n) for n in ARMS}}


def summary(losses: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the seeds' losses: two seeds at least."""
    return statistics.fmean(losses), statistics.stdev(losses)


def verdict(a: list[float], b: list[float], k: float = 2.0) -> str:
    """How b compares with a: "better" (lower loss), "worse", or "within noise" when the
    gap of the means is under k times the larger seed-to-seed standard deviation: a gap
    that another seed could open by itself says nothing.

    >>> verdict([2.0, 2.1, 1.9], [1.5, 1.6, 1.4]), verdict([2.0, 2.1, 1.9], [1.95, 2.05, 1.9])
    ('better', 'within noise')
    """
    (mean_a, std_a), (mean_b, std_b) = summary(a), summary(b)
    if abs(mean_b - mean_a) < k * max(std_a, std_b):
        return "within noise"
    return "better" if mean_b < mean_a else "worse"


def _losses(results: dict, name: str) -> list[float]:
    """The arm's validation losses, in the order of the file's seeds (so they pair up)."""
    return [results["arms"][name]["runs"][str(s)]["val"] for s in results["settings"]["seeds"]]


def _row(results: dict, name: str, base: str | None) -> str:
    """One arm: params, MFLOP/token, loss; then its gap to `base`, wins and verdict."""
    arm, losses = results["arms"][name], _losses(results, name)
    line = (f"{name:<22} {arm['params']:>8,} {arm['flops_per_token'] / 1e6:>9.3f}  "
            "{:.4f} ± {:.4f}".format(*summary(losses)))
    if base is None:
        return line
    ref = _losses(results, base)
    wins = sum(b < a for a, b in zip(ref, losses, strict=True))
    gap = summary(losses)[0] - summary(ref)[0]
    return line + f"  {gap:+.4f}  {wins}/{len(losses)}  {verdict(ref, losses)}"


_HEADER = f"{'arm':<22} {'params':>8} {'MFLOP/tok':>9}  val loss mean ± std  gap      wins"


def ladder_table(results: dict) -> str:
    """The ladder as text: parameters, forward MFLOP per token, validation loss (mean ± std
    over seeds), then against the rung below: the gap (negative = better), the seeds on
    which this rung is better (same seed = same batches: a paired comparison), a verdict."""
    return "\n".join([_HEADER, _row(results, LADDER[0], None)]
                     + [_row(results, LADDER[i], LADDER[i - 1]) for i in range(1, len(LADDER))])


def head_to_head_table(results: dict) -> str:
    """Each head-to-head: the course GPT, then the alternative with its gap, wins and
    verdict against it (the columns of `ladder_table`)."""
    lines = [_HEADER]
    for question, (ours, other) in HEAD_TO_HEADS.items():
        lines += [f"{question}:", _row(results, ours, None), _row(results, other, ours)]
    return "\n".join(lines)


def plot_ladder(results: dict):
    """Bar chart of the ladder's validation loss, error bars one std over the seeds."""
    import matplotlib.pyplot as plt

    means, stds = zip(*(summary(_losses(results, name)) for name in LADDER), strict=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    bars = ax.bar(LADDER, means, yerr=stds, capsize=4, color="tab:blue",
                  label=f"mean ± std over {len(results['settings']['seeds'])} seeds")
    ax.bar_label(bars, fmt="%.3f", padding=2)
    ax.tick_params(axis="x", labelrotation=20)
    # The axis starts near the best loss, not at 0, so gaps of a few hundredths show.
    ax.set_ylim(min(means) - 0.5, max(means) + 0.2)
    ax.set(ylabel="validation loss (nats / character)", xlabel="rung (each adds one piece)",
           title=f"What each piece buys: {results['settings']['training']['max_steps']} "
                 "steps each, loss on the held-out text")
    ax.legend()
    fig.tight_layout()
    return fig
