"""How much memory the KV cache of a real model needs (chapter 09).

While generating, every layer keeps the key and the value of every token read so far
(`utils.attention.KVCache`, chapter 08). Per token and per layer that is 2 (K and V) x
n_kv_head x d_head numbers, so for a whole sequence

    bytes = 2 x n_layer x n_kv_head x d_head x seq_len x batch x bytes_per_value

It grows with the context and the batch, not with the prompt's content, and for long contexts
it rivals the weights themselves. Three ways to shrink it appear in the table below:

* grouped-query attention (GQA) lets n_head / n_kv_head query heads share one K/V head, and
  multi-query attention (MQA) is the extreme n_kv_head = 1;
* multi-head latent attention (MLA, DeepSeek-V3) caches one small latent vector per token and
  layer and re-expands it into every head's K and V;
* a sliding window (Mistral 7B v0.1) never keeps more than `window` tokens.

`MODELS` holds the attention-relevant numbers of public models. They are copied from each
model's published `config.json` on the Hugging Face Hub (the `source` field names the file);
nothing is downloaded. Parameter counts, used to compare the cache with the weights, are the
ones the model cards publish, rounded as they print them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

GIB = 2**30   # a gibibyte: memory sizes are powers of two (1 GiB = 1.074e9 bytes)

BYTES_PER_VALUE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
"""Bytes per cached number by storage type. An fp8/int8 cache also stores a few scales per
block of values; that overhead (well under 1%) is left out."""


def _positive_int(value, name: str, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        wanted = "a non-negative int" if allow_zero else "a positive int"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def _bytes_per_value(value) -> float:
    if isinstance(value, str):
        if value not in BYTES_PER_VALUE:
            raise ValueError(f"bytes_per_value: unknown dtype {value!r}; use a number of bytes "
                             f"or one of {sorted(BYTES_PER_VALUE)}")
        return BYTES_PER_VALUE[value]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"bytes_per_value must be a positive number of bytes (2 for bf16, 0.5 "
                         f"for 4-bit) or a dtype name, got {value!r}")
    return value


def kv_cache_bytes(n_layer: int, n_kv_head: int, d_head: int, seq_len: int, batch: int = 1,
                   bytes_per_value: float | str = 2) -> int | float:
    """Bytes of the K and V caches of all layers for `batch` sequences of `seq_len` tokens.

    Llama 3 8B (32 layers, 8 K/V heads of 128) at its 8,192-token context in bf16 is exactly
    1 GiB:

    >>> kv_cache_bytes(32, 8, 128, 8192, bytes_per_value=2) / GIB
    1.0
    """
    n_layer = _positive_int(n_layer, "n_layer")
    n_kv_head = _positive_int(n_kv_head, "n_kv_head")
    d_head = _positive_int(d_head, "d_head")
    seq_len = _positive_int(seq_len, "seq_len", allow_zero=True)
    batch = _positive_int(batch, "batch")
    size = _bytes_per_value(bytes_per_value)
    return 2 * n_layer * n_kv_head * d_head * seq_len * batch * size    # 2: one K and one V


def mla_cache_bytes(n_layer: int, kv_lora_rank: int, rope_dim: int, seq_len: int,
                    batch: int = 1, bytes_per_value: float | str = 2) -> int | float:
    """Bytes of a multi-head latent attention cache (DeepSeek-V2/V3).

    MLA caches, per token and layer, the compressed latent c = x W_down (kv_lora_rank
    numbers, shared by K and V and by every head) plus one small key part that carries the
    rotary position (rope_dim numbers, shared by every head). There is no factor 2: K and V
    are both re-expanded from the same latent.

    >>> mla_cache_bytes(61, 512, 64, 1) // 61      # DeepSeek-V3: bytes per token per layer
    1152
    """
    n_layer = _positive_int(n_layer, "n_layer")
    kv_lora_rank = _positive_int(kv_lora_rank, "kv_lora_rank")
    rope_dim = _positive_int(rope_dim, "rope_dim", allow_zero=True)
    seq_len = _positive_int(seq_len, "seq_len", allow_zero=True)
    batch = _positive_int(batch, "batch")
    size = _bytes_per_value(bytes_per_value)
    return n_layer * (kv_lora_rank + rope_dim) * seq_len * batch * size


def shrink_factor(n_head: int, n_kv_head: int) -> float:
    """How many times smaller the KV cache is with n_kv_head K/V heads than with one per
    query head (MHA): n_head / n_kv_head.

    >>> shrink_factor(32, 8), shrink_factor(32, 1)
    (4.0, 32.0)
    """
    n_head = _positive_int(n_head, "n_head")
    n_kv_head = _positive_int(n_kv_head, "n_kv_head")
    if n_head % n_kv_head:
        raise ValueError(f"n_kv_head={n_kv_head} must divide n_head={n_head}: each K/V head "
                         "serves the same number of query heads")
    return n_head / n_kv_head


@dataclass(frozen=True)
class AttentionSpec:
    """The numbers of a model that decide its KV-cache size.

    n_head / n_kv_head   query heads / key-value heads (equal: MHA, 1: MQA, between: GQA)
    d_head               size of one head's key (and value) vector
    context              the longest sequence the model is published for (tokens)
    params               total parameters (all experts of a mixture), for comparing with the
                         weights; None when unknown
    window               sliding-window attention: the cache never holds more tokens
    kv_lora_rank, rope_dim   multi-head latent attention (MLA): cached numbers per token and
                         layer are kv_lora_rank + rope_dim instead of 2 x n_kv_head x d_head
    """

    name: str
    n_layer: int
    n_head: int
    n_kv_head: int
    d_head: int
    context: int
    params: float | None = None
    window: int | None = None
    kv_lora_rank: int | None = None
    rope_dim: int = 0
    source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_kv_head", "d_head", "context"):
            _positive_int(getattr(self, name), f"{self.name}: {name}")
        shrink_factor(self.n_head, self.n_kv_head)          # raises if kv heads don't divide
        if self.window is not None:
            _positive_int(self.window, f"{self.name}: window")
        if self.kv_lora_rank is not None:
            _positive_int(self.kv_lora_rank, f"{self.name}: kv_lora_rank")
            _positive_int(self.rope_dim, f"{self.name}: rope_dim", allow_zero=True)
        if self.params is not None and not self.params > 0:
            raise ValueError(f"{self.name}: params must be positive or None, got {self.params!r}")

    @property
    def attention(self) -> str:
        """'MLA', 'MHA', 'MQA' or 'GQA'."""
        if self.kv_lora_rank is not None:
            return "MLA"
        if self.n_kv_head == self.n_head:
            return "MHA"
        return "MQA" if self.n_kv_head == 1 else "GQA"

    def tokens_cached(self, seq_len: int) -> int:
        """Tokens the cache holds after reading `seq_len`: all of them, or the window."""
        return seq_len if self.window is None else min(seq_len, self.window)

    def cache_bytes(self, seq_len: int | None = None, batch: int = 1,
                    bytes_per_value: float | str = 2) -> int | float:
        """KV-cache bytes at `seq_len` tokens (default: the full context)."""
        tokens = self.tokens_cached(self.context if seq_len is None else seq_len)
        if self.kv_lora_rank is not None:
            return mla_cache_bytes(self.n_layer, self.kv_lora_rank, self.rope_dim, tokens,
                                   batch, bytes_per_value)
        return kv_cache_bytes(self.n_layer, self.n_kv_head, self.d_head, tokens, batch,
                              bytes_per_value)

    def mha_cache_bytes(self, seq_len: int | None = None, batch: int = 1,
                        bytes_per_value: float | str = 2) -> int | float:
        """What the cache would take with one K/V head per query head and no window: the
        baseline every trick is measured against."""
        tokens = self.context if seq_len is None else seq_len
        return kv_cache_bytes(self.n_layer, self.n_head, self.d_head, tokens, batch,
                              bytes_per_value)

    def weights_bytes(self, bytes_per_value: float | str = 2) -> float | None:
        return None if self.params is None else self.params * _bytes_per_value(bytes_per_value)


def _gpt2(name: str, hub: str, n_layer: int, n_head: int, params: float) -> AttentionSpec:
    # GPT-2 configs give n_embd and n_head; every size uses 64-dimensional heads
    return AttentionSpec(name, n_layer, n_head, n_head, 64, 1024, params,
                         source=f"config.json of openai-community/{hub}")


def _llama(name: str, hub: str, n_layer: int, n_head: int, context: int, params: float,
           note: str = "") -> AttentionSpec:
    return AttentionSpec(name, n_layer, n_head, 8, 128, context, params,
                         source=f"config.json of {hub}", note=note)


MODELS: dict[str, AttentionSpec] = {spec.name: spec for spec in [
    _gpt2("GPT-2 small", "gpt2", 12, 12, 124e6),
    _gpt2("GPT-2 medium", "gpt2-medium", 24, 16, 355e6),
    _gpt2("GPT-2 large", "gpt2-large", 36, 20, 774e6),
    _gpt2("GPT-2 XL", "gpt2-xl", 48, 25, 1.56e9),
    _llama("Llama 3 8B", "meta-llama/Meta-Llama-3-8B", 32, 32, 8192, 8.03e9,
           note="Llama 3 (April 2024) was published with an 8K context"),
    _llama("Llama 3.1 8B", "meta-llama/Llama-3.1-8B", 32, 32, 131072, 8.03e9,
           note="Llama 3.1: the same weights' shapes, context extended to 128K"),
    _llama("Llama 3.1 70B", "meta-llama/Llama-3.1-70B", 80, 64, 131072, 70.6e9),
    _llama("Llama 3.1 405B", "meta-llama/Llama-3.1-405B", 126, 128, 131072, 405.9e9,
           note="405B exists only as Llama 3.1 (128K context)"),
    AttentionSpec("Mistral 7B v0.1", 32, 32, 8, 128, 32768, 7.24e9, window=4096,
                  source="config.json of mistralai/Mistral-7B-v0.1",
                  note=("sliding window of 4,096 tokens: a rolling cache never holds more "
                        "(later versions, v0.2 and v0.3, dropped the window)")),
    AttentionSpec("Mixtral 8x7B", 32, 32, 8, 128, 32768, 46.7e9,
                  source="config.json of mistralai/Mixtral-8x7B-v0.1",
                  note="mixture of experts: all 46.7B weights are held, about 13B used per token"),
    AttentionSpec("Mixtral 8x22B", 56, 48, 8, 128, 65536, 141e9,
                  source="config.json of mistralai/Mixtral-8x22B-v0.1",
                  note="mixture of experts: 141B held (not 8 x 22B = 176B: experts share "
                       "attention and embeddings), 39B used per token"),
    AttentionSpec("Mistral Large 2", 88, 96, 8, 128, 131072, 123e9,
                  source="config.json of mistralai/Mistral-Large-Instruct-2407",
                  note="its config has no sliding window: every token is cached"),
    AttentionSpec("Qwen 2.5 72B", 80, 64, 8, 128, 131072, 72.7e9,
                  source="config.json of Qwen/Qwen2.5-72B",
                  note=("128K as the base model's config and the model card give it; the "
                        "Instruct config says 32K and reaches 128K with YaRN rope scaling")),
    AttentionSpec("DeepSeek-V3", 61, 128, 128, 128, 131072, 671e9, kv_lora_rank=512,
                  rope_dim=64, source="config.json of deepseek-ai/DeepSeek-V3",
                  note=("MLA: 512 latent + 64 rotary-key numbers per token and layer. 128K as "
                        "in the paper (the config allows 163,840). 671B held, 37B used per "
                        "token. The MHA baseline counts 128-wide K and V heads; its real keys "
                        "are 192 wide (128 + the 64 rotary dims), so MLA saves even more")),
]}


def spec_from_config(config, name: str, params: float | None = None) -> AttentionSpec:
    """An AttentionSpec for one of our own `GPTConfig`s."""
    n_kv_head = config.n_kv_head or config.n_head
    return AttentionSpec(name, config.n_layer, config.n_head, n_kv_head,
                         config.n_embd // config.n_head, config.block_size, params,
                         source="GPTConfig stored in the checkpoint's metadata")


def shipped_spec(name: str = "shakespeare-char") -> AttentionSpec:
    """The course's own trained model (chapter 07), read from its checkpoint."""
    from utils.pretrained import load_pretrained

    model, _ = load_pretrained(name)
    return spec_from_config(model.config, f"ours ({name})", params=model.get_num_params())


def kv_cache_table(specs: list[AttentionSpec] | None = None, seq_len: int | None = None,
                   batch: int = 1, bytes_per_value: float | str = 2) -> list[dict]:
    """One row per model: its attention numbers, bytes per token, and the cache at `seq_len`
    tokens (default: each model's own context) next to the weights, in GiB."""
    rows = []
    for spec in MODELS.values() if specs is None else specs:
        tokens = spec.context if seq_len is None else seq_len
        cache = spec.cache_bytes(tokens, batch, bytes_per_value)
        weights = spec.weights_bytes(bytes_per_value)
        rows.append({
            "model": spec.name, "attention": spec.attention, "layers": spec.n_layer,
            "heads": spec.n_head, "kv heads": spec.n_kv_head, "d_head": spec.d_head,
            "tokens": tokens,
            "bytes/token": spec.cache_bytes(1, 1, bytes_per_value),
            "cache GiB": cache / GIB,
            "MHA cache GiB": spec.mha_cache_bytes(tokens, batch, bytes_per_value) / GIB,
            "weights GiB": None if weights is None else weights / GIB,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of `kv_cache_table` as aligned text, for printing in a notebook."""
    head = (f"{'model':<26}{'attn':>5}{'layers':>7}{'heads':>6}{'kv':>5}{'d_head':>7}"
            f"{'tokens':>9}{'KiB/token':>10}{'cache GiB':>11}{'if MHA':>9}{'weights GiB':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        kv = "-" if r["attention"] == "MLA" else str(r["kv heads"])
        weights = "?" if r["weights GiB"] is None else _gib(r["weights GiB"])
        lines.append(f"{r['model']:<26}{r['attention']:>5}{r['layers']:>7}{r['heads']:>6}"
                     f"{kv:>5}{r['d_head']:>7}{r['tokens']:>9,}{r['bytes/token'] / 1024:>10.1f}"
                     f"{_gib(r['cache GiB']):>11}{_gib(r['MHA cache GiB']):>9}{weights:>12}")
    return "\n".join(lines)


def _gib(x: float) -> str:
    """GiB with about three significant digits, small sizes included."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 0.01 else f"{x:.2g}"
