"""Chapter 00's experiment: why attention replaced recurrence.

Two tiny sequence models read the same inputs `x` of shape [T, d]:

* `TinyRNN` carries one hidden state from token to token, h_t = tanh(x_t W_x + h_{t-1} W_h + b).
  Whatever token 1 said must survive T - 1 multiplications by W_h to reach position T.
* `TinyAttention` lets position t read every earlier token directly, through one weighted sum.

`gradient_from_first_token` asks autograd how strongly each output depends on token 1,
`train_recall` trains each model (and a no-attention baseline) to recall the first token, and
`time_sequential_vs_parallel` times the T dependent steps of an RNN against attention's
single batched matrix product.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd import forward_ad

from utils.timing import Timing, time_call


class TinyRNN(nn.Module):
    """An Elman RNN: h_t = tanh(x_t W_x + h_{t-1} W_h + b), returning every h_t.

    `recurrent_scale` sets the largest singular value of W_h (W_h is a scaled orthogonal
    matrix): below 1 the signal from early tokens shrinks at every step, above 1 it can grow.

    >>> rnn = TinyRNN(d_in=4, d_hidden=8)
    >>> rnn(torch.randn(10, 4)).shape
    torch.Size([10, 8])
    """

    def __init__(self, d_in: int, d_hidden: int, recurrent_scale: float = 0.9):
        super().__init__()
        self.W_x = nn.Parameter(torch.randn(d_in, d_hidden) / math.sqrt(d_in))
        self.W_h = nn.Parameter(torch.linalg.qr(torch.randn(d_hidden, d_hidden))[0] * recurrent_scale)
        self.b = nn.Parameter(torch.zeros(d_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., T, d_in] -> hidden states [..., T, d_hidden]."""
        h = torch.zeros(*x.shape[:-2], self.W_h.shape[0], dtype=x.dtype, device=x.device)
        states = []
        # One step per token, each waiting for the previous one: this loop cannot be parallelised.
        for x_t in x.unbind(dim=-2):
            h = torch.tanh(x_t @ self.W_x + h @ self.W_h + self.b)
            states.append(h)
        return torch.stack(states, dim=-2)


class TinyAttention(nn.Module):
    """One causal attention layer: position t mixes the values of tokens 0..t.

    All positions are computed at once with two matrix products; chapter 03 takes this
    apart line by line.

    >>> attn = TinyAttention(d_in=4, d_head=8)
    >>> attn(torch.randn(10, 4)).shape
    torch.Size([10, 8])
    """

    def __init__(self, d_in: int, d_head: int):
        super().__init__()
        self.W_q = nn.Parameter(torch.randn(d_in, d_head) / math.sqrt(d_in))
        self.W_k = nn.Parameter(torch.randn(d_in, d_head) / math.sqrt(d_in))
        self.W_v = nn.Parameter(torch.randn(d_in, d_head) / math.sqrt(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., T, d_in] -> outputs [..., T, d_head]."""
        q, k, v = x @ self.W_q, x @ self.W_k, x @ self.W_v
        # [..., T, T]: every token scored against every token in one matrix product
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
        future = torch.triu(torch.ones_like(scores, dtype=torch.bool), diagonal=1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return weights @ v


def gradient_from_first_token(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """For every position t, the size of d(output_t)/d(token 1): how loudly token 1 is heard.

    `model` maps [..., T, d] to [..., T, d_out] and must accept a batch of sequences. Returns
    a tensor of T norms: entry t is the Frobenius norm of the Jacobian d(output_t)/d(x_1), a
    [d_out, d] matrix (the square root of the sum of its squared entries).

    >>> g = gradient_from_first_token(TinyRNN(4, 8), torch.randn(20, 4))
    >>> g.shape, bool(g[19] < g[0])
    (torch.Size([20]), True)
    """
    # float64, because an RNN's gradient shrinks geometrically and would underflow float32 to
    # exactly zero after ~100 steps; we want to see how small it gets, not a flat zero.
    model = model.double()
    x = x.detach().double()
    T, d = x.shape
    # Forward-mode autodiff: nudge one coordinate of token 1 and let autograd carry the nudge
    # through the model, giving d(output_t)/d(x_1[i]) for every t in the same pass. A batch of
    # d copies of the sequence, copy i nudging coordinate i, gets all of token 1's Jacobian in
    # one forward pass, where backward passes would need one per output coordinate and t.
    nudges = torch.zeros(d, T, d, dtype=x.dtype)
    nudges[torch.arange(d), 0, torch.arange(d)] = 1.0
    with forward_ad.dual_level():
        outputs = model(forward_ad.make_dual(x.expand(d, T, d).clone(), nudges))
        moves = forward_ad.unpack_dual(outputs).tangent   # [d, T, d_out]: d output / d x_1[i]
    return moves.square().sum(dim=(0, 2)).sqrt().detach()   # [T]: one Jacobian norm per t


def compare_gradients(seq_len: int, recurrent_scale: float = 0.9, d: int = 32, seed: int = 0,
                      models: tuple[str, ...] = ("rnn", "attention")) -> dict[str, torch.Tensor]:
    """Run `gradient_from_first_token` for both models on the same random sequence.

    `models` picks which of "rnn" and "attention" to run (the attention model does not depend
    on `recurrent_scale`, so a caller that varies only the scale can skip it); each model's
    weights and the input are the same whichever are picked.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(seq_len, d, generator=generator)
    torch.manual_seed(seed)
    built = {"rnn": TinyRNN(d, d, recurrent_scale), "attention": TinyAttention(d, d)}
    return {name: gradient_from_first_token(built[name], x) for name in models}


@torch.no_grad()
def time_sequential_vs_parallel(seq_lens: list[int], d: int = 64, batch: int = 16,
                                repeats: int = 5, device: str | torch.device = "cpu") -> list[dict]:
    """Wall time of an RNN's T dependent steps vs one attention layer, per length.

    Each row: {"seq_len", "rnn_steps", "attention_steps", "rnn_ms", "attention_ms", "rnn",
    "attention"}: "steps" counts operations that must wait for the previous one to finish,
    "*_ms" is the median over `repeats` calls and "rnn"/"attention" the `utils.timing.Timing`
    of every call. The two models take turns, one call each, so a change in a shared
    machine's load between repeats slows both alike and their ratio stays honest.
    """
    device = torch.device(device)
    rnn = TinyRNN(d, d).to(device)
    attention = TinyAttention(d, d).to(device)
    rows = []
    for seq_len in seq_lens:
        x = torch.randn(batch, seq_len, d, device=device)
        timings = {"rnn": Timing(), "attention": Timing()}
        rnn(x), attention(x)  # warm-up: first calls pay one-off allocation costs
        for _ in range(repeats):
            for name, model in (("rnn", rnn), ("attention", attention)):
                timings[name].seconds += time_call(lambda m=model, x=x: m(x), repeats=1, warmup=0,
                                                   device=device).seconds
        rows.append({"seq_len": seq_len, "rnn_steps": seq_len, "attention_steps": 1,
                     "rnn_ms": 1000 * timings["rnn"].median,
                     "attention_ms": 1000 * timings["attention"].median, **timings})
    return rows


# --- Experiment 2: does the whisper matter? Recall the first token after `distance` steps. ---

def make_recall_batch(batch: int, distance: int, n_symbols: int = 8,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences that ask "what was the first token?" after `distance` steps.

    Each row is [s, f_1, ..., f_{distance-1}, ?]: the symbol s to remember and distance-1
    fillers, all drawn from the same ids 0 .. n_symbols-1, then a query id n_symbols at position
    `distance`. The target is s. Nothing but its *position* marks s: the same id may occur among
    the fillers, so a model must know which token came first. Guessing gives 1 / n_symbols.

    >>> x, y = make_recall_batch(2, distance=4, generator=torch.Generator().manual_seed(0))
    >>> x.shape, y.shape, bool((x[:, 0] == y).all()), x[0, -1].item()
    (torch.Size([2, 5]), torch.Size([2]), True, 8)
    """
    if distance < 1:
        raise ValueError(f"distance must be at least 1, got {distance}")
    tokens = torch.randint(0, n_symbols, (batch, distance), generator=generator)
    query = torch.full((batch, 1), n_symbols)
    return torch.cat([tokens, query], dim=1), tokens[:, 0]


class MeanOfEmbeddings(nn.Module):
    """The no-attention baseline: position t outputs the mean of inputs 0..t, fixed weights.

    It sees every token equally, so it can count which symbols occurred but never tell which
    one came first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., T, d] -> running means [..., T, d]."""
        counts = torch.arange(1, x.shape[-2] + 1, dtype=x.dtype, device=x.device)
        return x.cumsum(dim=-2) / counts[:, None]


RECALL_KINDS = ("mean", "rnn", "attention")


class RecallModel(nn.Module):
    """Token embedding + learned position embedding -> a core -> a linear read-out at the end.

    The core is "rnn" (TinyRNN), "attention" (TinyAttention) or "mean" (MeanOfEmbeddings, no
    weights at all). All three read the same inputs: attention by itself knows no order
    (chapter 02), so every token gets a learned vector for its position added, and the answer
    can be found only through that position. Embeddings start small (std 1/sqrt(d)) so that
    attention's scores start near uniform instead of saturating the softmax.
    """

    def __init__(self, kind: str, n_symbols: int = 8, d: int = 32, max_len: int = 128):
        super().__init__()
        if kind not in RECALL_KINDS:
            raise ValueError(f"kind must be one of {RECALL_KINDS}, got {kind!r}")
        self.embed = nn.Embedding(n_symbols + 1, d)
        self.position = nn.Embedding(max_len, d)
        for table in (self.embed, self.position):
            nn.init.normal_(table.weight, std=d**-0.5)
        cores = {"rnn": lambda: TinyRNN(d, d), "attention": lambda: TinyAttention(d, d),
                 "mean": MeanOfEmbeddings}
        self.core = cores[kind]()
        self.readout = nn.Linear(d, n_symbols)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> logits [B, n_symbols] for the symbol asked for at the last position."""
        positions = torch.arange(ids.shape[-1], device=ids.device)
        return self.readout(self.core(self.embed(ids) + self.position(positions))[:, -1])


def recall_training_batches(distance: int, steps: int = 200, batch: int = 64, n_symbols: int = 8,
                            seed: int = 0):
    """The `steps` training batches `train_recall` uses, (x, y) each, the same for every model."""
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield make_recall_batch(batch, distance, n_symbols, data)


def recall_test_batch(distance: int, n_symbols: int = 8, seed: int = 0, rows: int = 1000):
    """The 1,000 fresh random rows every model is scored on (a separate random stream)."""
    return make_recall_batch(rows, distance, n_symbols, torch.Generator().manual_seed(seed + 1))


def recall_test_overlap(distance: int, steps: int = 200, batch: int = 64,
                               n_symbols: int = 8, seed: int = 0) -> float:
    """Fraction of the test rows that also occur among the training rows.

    There are only n_symbols ** distance different sequences (64 at distance 2), so at short
    distances the "fresh" test rows are rows the models trained on; only where this fraction
    is ~0 is the test held out."""
    seen = {tuple(row) for x, _ in recall_training_batches(distance, steps, batch, n_symbols, seed)
            for row in x.tolist()}
    test, _ = recall_test_batch(distance, n_symbols, seed)
    return sum(tuple(row) in seen for row in test.tolist()) / len(test)


def train_recall(kind: str, distance: int, steps: int = 200, batch: int = 64, n_symbols: int = 8,
                 d: int = 32, lr: float = 1e-2, seed: int = 0) -> float:
    """Train a RecallModel for a fixed number of steps; return its accuracy on 1,000 fresh rows.

    Every kind gets the same batches, steps, optimiser (Adam) and learning rate.
    """
    torch.manual_seed(seed)
    model = RecallModel(kind, n_symbols, d, max_len=distance + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for x, y in recall_training_batches(distance, steps, batch, n_symbols, seed):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = recall_test_batch(distance, n_symbols, seed)
    with torch.no_grad():
        return (model(x).argmax(dim=-1) == y).float().mean().item()


def recall_by_distance(distances: list[int], steps: int = 200, seed: int = 0,
                       kinds: tuple[str, ...] = RECALL_KINDS, **kwargs) -> dict[str, list[float]]:
    """Accuracy of each kind of model trained separately at each distance: {kind: [...]}."""
    return {kind: [train_recall(kind, distance, steps=steps, seed=seed, **kwargs)
                   for distance in distances]
            for kind in kinds}
