"""What training keeps in memory for the backward pass, counted and measured (chapter 07).

To compute gradients, backward needs some of the tensors the forward pass made: a linear
layer's weight gradient is (its input)ᵀ @ (the gradient of its output), so the input must
still be there; GELU's derivative needs GELU's input; LayerNorm's needs its input and the two
statistics of each row. Autograd keeps exactly these "saved tensors" from the forward pass
until backward has used them. They are the activation memory, and unlike the weights and the
optimizer state they grow with the batch and the sequence length.

    block_terms(batch, seq_len, n_embd, n_head)   one block, tensor by tensor (bytes)
    activation_bytes_per_layer(...)               their sum
    activation_bytes(config, batch)               the whole GPT: blocks, embedding, head, loss
    saved_tensor_bytes(model, idx, targets)       the same number, measured
    cuda_memory_bytes(model, idx, targets)        the allocator's view on a GPU
    checkpointing_cost(config, batch)             memory and seconds per step, with and without

Activation checkpointing (`GPTConfig.checkpoint_activations`) keeps only each block's input
and reruns the block's forward in backward, just before its gradients are needed: about
16 B T d values per block become B T d, for one more forward pass of the blocks per step.
Backward's peak adds one block's worth back, while that block is recomputed.

The count is exact (tests/test_activation_memory.py checks it to the byte on CPU) for the
GPT-2-style models the course trains: LayerNorm, a GELU or ReLU² feed-forward, learned or no
positions, one key/value head per query head, no dropout. The attention is PyTorch's fused
kernel, as in `utils.model.Block` (`attention="sdpa"`), or the from-scratch softmax of
`utils.attention` (`attention="math"`), which keeps the [T, T] weights of every head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Iterator

import torch
from torch import nn

from utils.model import GPT, GPTConfig
from utils.timing import stopwatch

FLOAT32 = 4   # bytes: the logsumexp and the loss's log-probabilities are float32 always
INT64 = 8     # bytes: token ids and targets
BOOL = 1      # bytes: a mask entry


def block_terms(batch: int, seq_len: int, n_embd: int, n_head: int, bytes_per_value: int = 4,
                ffn_hidden: int | None = None, attention: str = "sdpa") -> dict[str, int]:
    """Bytes one pre-norm block (`utils.model.Block`) keeps for backward, by tensor.

    With N = batch * seq_len rows, d = n_embd, h = n_head, F = ffn_hidden (4d by default)
    and b = bytes_per_value (4 for float32, 2 for bfloat16):

    | term               | tensor kept                                  | bytes           |
    |--------------------|----------------------------------------------|-----------------|
    | norm1 input        | x, the block's input (LayerNorm's backward)  | N d b           |
    | norm1 statistics   | each row's mean and 1/std                    | 2 N b           |
    | qkv input          | norm1's output (qkv's weight gradient)       | N d b           |
    | q, k, v            | qkv's output: one [N, 3d] tensor, all heads  | 3 N d b         |
    | attention output   | the kernel's output, also proj's input       | N d b           |
    | logsumexp          | per row and head: the kernel recomputes the  | N h x 4         |
    |                    | softmax in backward from it                  |                 |
    | norm2 input        | x + attn(...), the residual stream           | N d b           |
    | norm2 statistics   | mean and 1/std again                         | 2 N b           |
    | up input           | norm2's output                               | N d b           |
    | hidden, pre-act.   | up's output, GELU's input                    | N F b           |
    | hidden, activated  | GELU's output, down's input                  | N F b           |

    Total (16 d + 4) N b + 4 h N bytes for F = 4d; the hidden layer, kept before and after
    the activation, is half of it. The residual additions keep nothing, and the block's
    output is the next block's input, counted there. The logsumexp is float32 whatever the
    dtype; the norm statistics take the activations' dtype on a CPU (float32 on CUDA).
    The fused kernel never forms the [T, T] weights. `attention="math"` (the from-scratch
    softmax, `use_sdpa=False`) keeps instead of the logsumexp the causal mask (T² bools),
    two "row has a key" masks (2 N h bools) and the weights twice, out of the softmax and
    after zeroing empty rows (2 batch h T² b): quadratic in the length. (Its q, k and v are
    copies in batched-matmul layout: the same 3 N d b.)
    """
    if attention not in ("sdpa", "math"):
        raise ValueError(f"attention must be 'sdpa' or 'math', got {attention!r}")
    N, d, h, b = batch * seq_len, n_embd, n_head, bytes_per_value
    F = 4 * d if ffn_hidden is None else ffn_hidden
    terms = {"norm1 input": N * d * b, "norm1 statistics": 2 * N * b, "qkv input": N * d * b,
             "q, k, v": 3 * N * d * b, "attention output": N * d * b}
    if attention == "sdpa":
        terms["logsumexp"] = N * h * FLOAT32
    else:
        terms["causal mask"] = seq_len * seq_len * BOOL
        terms["row-has-a-key masks"] = 2 * N * h * BOOL
        terms["attention weights (twice)"] = 2 * batch * h * seq_len * seq_len * b
    terms |= {"norm2 input": N * d * b, "norm2 statistics": 2 * N * b, "up input": N * d * b,
              "hidden, pre-activation": N * F * b, "hidden, activated": N * F * b}
    return terms


def activation_bytes_per_layer(batch: int, seq_len: int, n_embd: int, n_head: int,
                               bytes_per_value: int = 4, ffn_hidden: int | None = None,
                               attention: str = "sdpa") -> int:
    """Bytes one block keeps for backward: the sum of `block_terms`.

    >>> activation_bytes_per_layer(16, 128, 128, 4)     # (16 d + 4) N x 4 + 4 h N
    16842752
    """
    return sum(block_terms(batch, seq_len, n_embd, n_head, bytes_per_value, ffn_hidden,
                           attention).values())


def _check_supported(config: GPTConfig) -> None:
    """The count covers the models the course trains; say which setting it does not."""
    unsupported = {"norm": config.norm != "layer", "pos": config.pos not in ("learned", "none"),
                   "mlp": config.mlp not in ("gelu", "gelu_exact", "relu2"),
                   "n_kv_head": config.kv_heads != config.n_head, "dropout": config.dropout > 0,
                   "qk_norm": config.qk_norm, "logit_softcap": config.logit_softcap is not None}
    if wrong := [name for name, bad in unsupported.items() if bad]:
        raise ValueError(f"activation_bytes counts GPT-2-style blocks (LayerNorm, GELU or ReLU², "
                         f"learned positions, no dropout...); this config sets {wrong}, whose "
                         f"layers keep other tensors: measure it with saved_tensor_bytes")


def head_terms(config: GPTConfig, batch: int, seq_len: int,
               bytes_per_value: int = 4) -> dict[str, int]:
    """Bytes kept outside the blocks: the embedding's ids, the final norm, the output layer
    and the cross-entropy (computed in float32 whatever the model's dtype)."""
    N, d, b = batch * seq_len, config.n_embd, bytes_per_value
    return {
        "token ids": N * INT64,                       # the embedding's backward scatters by id
        "final norm input": N * d * b,                # the last block's output
        "final norm statistics": 2 * N * b,
        "lm_head input": N * d * b,
        "log-probabilities": N * config.vocab_size * FLOAT32,  # log_softmax's output
        "targets": N * INT64,
        "loss normaliser": FLOAT32,                   # the count the mean divides by
    }


def activation_bytes(config: GPTConfig, batch: int, seq_len: int | None = None,
                     checkpointed: bool = False, bytes_per_value: int = 4,
                     attention: str = "sdpa") -> int:
    """Bytes a GPT's forward pass keeps for backward, from the config alone.

    n_layer blocks (`activation_bytes_per_layer`) plus `head_terms`; `checkpointed=True`
    keeps only each block's input instead of the block's tensors. `seq_len` defaults to
    block_size. Raises ValueError for settings whose layers keep other tensors.

    >>> cfg = GPTConfig(vocab_size=65, block_size=128, n_layer=2, n_head=4, n_embd=128)
    >>> activation_bytes(cfg, 16), activation_bytes(cfg, 16, checkpointed=True)
    (36364292, 4775940)
    """
    _check_supported(config)
    T = config.block_size if seq_len is None else seq_len
    if checkpointed:
        per_block = batch * T * config.n_embd * bytes_per_value
    else:
        per_block = activation_bytes_per_layer(batch, T, config.n_embd, config.n_head,
                                               bytes_per_value, config.ffn_width, attention)
    return config.n_layer * per_block + sum(head_terms(config, batch, T, bytes_per_value).values())


# --------------------------------------------------------------------------- measuring it

@contextlib.contextmanager
def _training(model: nn.Module) -> Iterator[None]:
    """Training mode with gradients on (so checkpointing applies), then the mode as it was."""
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def saved_tensor_bytes(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> int:
    """Run one training forward pass and add up the bytes autograd saved for backward.

    `saved_tensors_hooks` sees every tensor as it is saved. Several are views of one block of
    memory (q, k and v are slices of qkv's output; log_softmax's output is saved twice), so
    each storage is counted once, by address, at its full size; the storages are held until
    the end so no address can be freed and reused meanwhile. Parameters and buffers are left
    out: a linear layer keeps its weight for the input's gradient, but that memory exists
    anyway. The model runs in training mode (so checkpointing applies), then is put back.
    """
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            kept[storage.data_ptr()] = storage
        return t

    with _training(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets)
    return sum(s.nbytes() for s in kept.values())


def cuda_memory_bytes(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor
                      ) -> dict[str, int]:
    """The CUDA allocator's view of one training forward pass (tensors on a GPU).

    "held": allocated after forward less before: the saved tensors and the loss, each
    allocation rounded up to 512 bytes, so a little above `saved_tensor_bytes`. "peak":
    `max_memory_allocated` less before: also the temporaries that lived inside a layer.
    """
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with _training(model):
        _, loss = model(idx, targets)     # the logits are freed: log_softmax kept its own
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
        peak = torch.cuda.max_memory_allocated() - before
    del loss
    return {"held": held, "peak": peak}


def checkpointing_cost(config: GPTConfig, batch: int, steps: int = 5,
                       device: torch.device | str = "cpu", seed: int = 0) -> dict[str, dict]:
    """Bytes kept for backward and seconds per training step (forward, backward, AdamW step),
    without and with activation checkpointing, from the same initial weights and one batch.

    Returns {"plain": {...}, "checkpointed": {...}}, each with "saved_bytes" (measured by
    `saved_tensor_bytes`) and "seconds" (the median of `steps` steps, after one untimed step
    each). The two alternate step by step: a busy moment of a shared machine slows both.
    """
    g = torch.Generator().manual_seed(seed)
    idx, targets = (torch.randint(config.vocab_size, (batch, config.block_size), generator=g)
                    .to(device) for _ in range(2))
    runs, result = {}, {}
    for name, flag in (("plain", False), ("checkpointed", True)):
        torch.manual_seed(seed)
        model = GPT(dataclasses.replace(config, checkpoint_activations=flag)).to(device)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), [])
        result[name] = {"saved_bytes": saved_tensor_bytes(model, idx, targets)}

    def step(model: GPT, optimizer: torch.optim.Optimizer) -> None:
        model(idx, targets)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for model, optimizer, _ in runs.values():      # the first step allocates the state
        step(model, optimizer)
    for _ in range(steps):
        for model, optimizer, seconds in runs.values():
            with stopwatch(device) as watch:
                step(model, optimizer)
            seconds.append(watch.seconds)
    for name, (_, _, seconds) in runs.items():
        result[name]["seconds"] = statistics.median(seconds)
    return result
