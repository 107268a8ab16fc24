"""How busy a run keeps its device: tokens per second and MFU, model FLOPs utilisation.

MFU = (tokens per second x FLOPs the model needs per token) / the device's peak FLOPs per
second. The FLOPs per token come from chapter 05's count (`utils.model.estimate_flops_per_token`,
attention included). The peak is the honest part: a GPU's public *dense* tensor-core figure
for the dtype the run uses (vendors also print a "with sparsity" figure, twice as large, that no
ordinary training run can reach), and on a CPU, or a GPU not in the table, a peak we measure
with one large matrix multiply. One card's number is never used for another.
"""

from __future__ import annotations

import torch

from utils.timing import time_call

# Dense (no structured sparsity) tensor-core peaks in TFLOP/s, from NVIDIA's product
# datasheets. Keys are matched against torch.cuda.get_device_name(), longest key first, so
# "H100 PCIe" wins over "H100". None: the card has no native bf16 (use float16 there).
PEAK_TFLOPS: dict[str, dict[str, float | None]] = {
    "H200 NVL": {"bfloat16": 835.0, "float16": 835.0},
    "H200": {"bfloat16": 989.4, "float16": 989.4},
    "H100 NVL": {"bfloat16": 835.0, "float16": 835.0},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0},
    "H100": {"bfloat16": 989.4, "float16": 989.4},          # SXM5 ("NVIDIA H100 80GB HBM3")
    "A100": {"bfloat16": 312.0, "float16": 312.0},
    "L40S": {"bfloat16": 362.0, "float16": 362.0},
    "L4": {"bfloat16": 121.0, "float16": 121.0},
    "A10": {"bfloat16": 125.0, "float16": 125.0},
    "V100": {"bfloat16": None, "float16": 125.0},
    "T4": {"bfloat16": None, "float16": 65.0},
}
PEAK_SOURCE = "NVIDIA datasheets, dense tensor-core TFLOP/s (half the 'with sparsity' figure)"


def table_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak (FLOP/s) for a GPU name and dtype, or None when we do not know it.

    >>> table_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16)
    989400000000000.0
    >>> table_peak_flops("NVIDIA H100 PCIe", torch.bfloat16)
    756000000000000.0
    >>> table_peak_flops("Some New GPU", torch.bfloat16) is None
    True
    """
    key = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype)
    if key is None:       # float32 peaks depend on TF32 and are rarely what a run uses
        return None
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in device_name.lower():
            tflops = PEAK_TFLOPS[name][key]
            return None if tflops is None else tflops * 1e12
    return None


def measured_matmul_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                          n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of one n x n by n x n matrix multiply on `device` (2 n³ FLOPs), the fastest of
    `repeats`: the peak we compare against where no datasheet number applies.

    The fastest, not the median: a peak is what the device can do, and on a machine shared
    with other jobs most repeats are slowed by them (on this course's 2-core CPU the median
    of five fell from 80 to 46 GFLOP/s while other jobs ran, which made MFU look twice as
    good as it was)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = time_call(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    return 2 * n ** 3 / timing.best


def device_peak(device: torch.device | str, dtype: torch.dtype, n: int = 2048) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for this device and dtype."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak_flops(name, dtype)
        if peak is not None:
            return peak, f"{name}: {PEAK_SOURCE}"
        return measured_matmul_flops(device, dtype, n), f"{name}: measured {n}x{n} matmul"
    return measured_matmul_flops(device, dtype, n), f"{device.type}: measured {n}x{n} matmul"


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation, a fraction: 0.45 means 45 % of the peak did useful model work.

    >>> mfu(tokens_per_second=1000.0, flops_per_token=6e9, peak_flops=1.2e13)
    0.5
    """
    return tokens_per_second * flops_per_token / peak_flops
