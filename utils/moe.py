"""Mixture of experts: many feed-forward networks, each token uses only a few (chapter 09).

A dense block sends every token through the same feed-forward network (FFN). A mixture-of-
experts (MoE) block holds `n_experts` FFNs and a small *router*, one Linear layer that scores
the experts for each token; the token goes through its `top_k` best experts only, and their
outputs are mixed with the router's (renormalised) probabilities:

    probs = softmax(router(x))                    [N tokens, n_experts]
    best  = the top_k experts of each token       [N, top_k]
    y     = sum over the chosen e of  probs_e / (sum of the chosen probs) * expert_e(x)

So the model has n_experts times the FFN parameters, but each token pays for top_k experts:
more capacity at the same compute per token. Mixtral 8x7B: 8 experts, top 2.

Left alone, a router tends to favour the experts that happen to be good early, which then get
all the gradient and get better still; the others starve. A load-balancing loss, added to
the language-model loss with a small weight, pushes back (see `MoEFeedForward`).

`moe_gpt(config)` builds the course's GPT (utils/model.py) with every block's FFN swapped for
an MoE, and `train_briefly` is the short training loop chapter 09 uses to compare it with a
dense GPT of the same compute per token.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import get_batch
from utils.layers import FeedForward
from utils.model import GPT, GPTConfig


class MoEFeedForward(nn.Module):
    """A top-k routed mixture of `n_experts` feed-forward networks, with a load-balancing loss.

    forward(x [B, T, C]) -> y [B, T, C]. After each call it keeps, for the last batch:

    aux_loss      the load-balancing loss (Switch Transformer style), a scalar with gradient:
                      n_experts * sum_i f_i * P_i
                  f_i = the fraction of (token, slot) assignments that went to expert i,
                  P_i = the router's mean probability for expert i over the tokens.
                  f counts, so it has no gradient; P carries it, and the product is largest
                  when the same experts both get the tokens and are rated highly, so
                  minimising it spreads probability (and then tokens) out. A perfectly
                  uniform router gives f_i = P_i = 1 / n_experts and aux_loss = 1; a
                  collapsed one (every token to the same experts, the router sure of one)
                  approaches the maximum n_experts / top_k, since each f_i <= 1 / top_k.
    router_probs  the router's probabilities [B * T, n_experts] (detached), for plotting
    expert_counts how many tokens each expert processed [n_experts] (a token counts once
                  for each of its top_k experts)

    >>> moe = MoEFeedForward(16, n_experts=4, top_k=2)
    >>> moe(torch.randn(2, 5, 16)).shape, moe.expert_counts.sum().item()   # 10 tokens x 2
    (torch.Size([2, 5, 16]), 20)
    """

    def __init__(self, n_embd: int, n_experts: int = 4, top_k: int = 2, hidden: int | None = None,
                 dropout: float = 0.0, mlp: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be between 1 and n_experts={n_experts}, got {top_k}")
        hidden = 4 * n_embd if hidden is None else hidden
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(n_embd, n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(n_embd, mlp, hidden=hidden, bias=bias)
                                     for _ in range(n_experts))
        self.dropout = nn.Dropout(dropout)
        self.aux_loss = torch.tensor(0.0)
        self.router_probs: torch.Tensor | None = None
        self.expert_counts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)                                    # [N, C]
        probs = F.softmax(self.router(tokens).float(), dim=-1)          # [N, E]
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)         # [N, k]
        gates = top_probs / top_probs.sum(dim=-1, keepdim=True)         # each row sums to 1
        y = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            # which tokens chose expert e, and in which of their k slots
            rows, slot = (top_experts == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue                                                # nobody chose e
            out = expert(tokens[rows]) * gates[rows, slot, None].to(tokens.dtype)
            y = y.index_add(0, rows, out)                               # scatter back
        counts = torch.bincount(top_experts.flatten(), minlength=self.n_experts)
        fraction = counts.float() / counts.sum()                        # f_i, sums to 1
        self.aux_loss = self.n_experts * (fraction * probs.mean(dim=0)).sum()
        self.router_probs, self.expert_counts = probs.detach(), counts.detach()
        return self.dropout(y.view(B, T, C))


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor:
    """The mean load-balancing loss of all MoE layers of `model` from its last forward."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model has no MoEFeedForward layer")
    return torch.stack([layer.aux_loss for layer in layers]).mean()


def count_moe_parameters(module: nn.Module) -> tuple[int, int]:
    """(total parameters, parameters one token uses) of a module containing MoE layers.

    A token runs through top_k of each layer's n_experts, so the other experts' weights are
    subtracted; everything else (attention, embeddings, the routers) every token uses.
    Shared (tied) tensors count once.

    >>> count_moe_parameters(MoEFeedForward(8, n_experts=4, top_k=1, hidden=16))
    (1152, 312)
    """
    total = sum(p.numel() for p in module.parameters())
    active = total
    for layer in moe_layers(module):
        per_expert = sum(p.numel() for p in layer.experts[0].parameters())
        active -= (layer.n_experts - layer.top_k) * per_expert
    return total, active


def moe_gpt(config: GPTConfig, n_experts: int = 4, top_k: int = 2,
            expert_hidden: int | None = None) -> GPT:
    """The course GPT with each block's feed-forward network replaced by an MoE.

    `expert_hidden` defaults to the dense FFN's width divided by top_k, so a token's FFN
    compute equals the dense model's (4 experts of width 2d, top-2: as much work as one FFN of
    width 4d) while the FFN parameters grow by n_experts / top_k. utils/model.py is not
    changed: we build a GPT and swap `block.mlp`, then initialise the new weights the way
    GPT does (std 0.02; the output layer of each expert scaled by 1/sqrt(2 * n_layer)).
    """
    dense_hidden = config.ffn_width
    hidden = max(1, dense_hidden // top_k) if expert_hidden is None else expert_hidden
    model = GPT(config)
    for block in model.blocks:
        block.mlp = MoEFeedForward(config.n_embd, n_experts, top_k, hidden=hidden,
                                   dropout=config.dropout, mlp=config.mlp, bias=config.bias)
        for name, p in block.mlp.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("down.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))
            else:
                nn.init.normal_(p, std=0.02)
    return model


def train_briefly(model: nn.Module, train_data: torch.Tensor, steps: int = 200,
                  batch_size: int = 16, block_size: int = 64, lr: float = 3e-3,
                  aux_weight: float = 0.01, seed: int = 0, log_every: int = 10,
                  device: torch.device | str = "cpu") -> dict:
    """A short AdamW loop for comparisons: the same batches for every model given the same
    seed. For MoE models the load-balancing loss is added with weight `aux_weight`.

    Returns {"step", "loss" (the language-model loss, averaged over each log_every steps),
    "aux", "expert_counts" (per MoE layer, summed over training), "seconds"}.
    """
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    layers = moe_layers(model)
    counts = [torch.zeros(layer.n_experts, dtype=torch.long) for layer in layers]
    history: dict[str, list] = {"step": [], "loss": [], "aux": []}
    window_lm, window_aux = [], []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = get_batch(train_data, batch_size, block_size, generator, device)
        _, lm_loss = model(x, y)
        loss = lm_loss
        if layers:
            aux = moe_aux_loss(model)
            loss = lm_loss + aux_weight * aux
            window_aux.append(aux.item())
            for total, layer in zip(counts, layers, strict=True):
                total += layer.expert_counts.cpu()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window_lm.append(lm_loss.item())
        if step % log_every == 0 or step == steps:
            history["step"].append(step)
            history["loss"].append(sum(window_lm) / len(window_lm))
            history["aux"].append(sum(window_aux) / len(window_aux) if window_aux else math.nan)
            window_lm, window_aux = [], []
    history["seconds"] = time.perf_counter() - start
    history["expert_counts"] = [c.tolist() for c in counts]
    model.eval()
    return history
