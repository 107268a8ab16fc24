"""MFU's denominator: the right card's datasheet peak, or a measured one; never another card's."""

import pytest
import torch

from utils import throughput
from utils.throughput import mfu, table_peak_flops


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),     # SXM5
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),           # not the SXM number
    ("NVIDIA H100 NVL", torch.float16, 835.0),
    ("NVIDIA H200", torch.bfloat16, 989.4),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
    ("NVIDIA L4", torch.bfloat16, 121.0),
    ("Tesla T4", torch.float16, 65.0),
])
def test_known_cards_get_their_own_dense_peak(name, dtype, tflops):
    assert table_peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


def test_no_number_where_the_table_has_none():
    assert table_peak_flops("Tesla T4", torch.bfloat16) is None       # no native bf16
    assert table_peak_flops("NVIDIA H100 80GB HBM3", torch.float32) is None
    assert table_peak_flops("Some Future GPU", torch.bfloat16) is None


def test_an_unknown_gpu_is_measured_not_given_an_a100_number(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some Future GPU")
    monkeypatch.setattr(throughput, "measured_matmul_flops", lambda device, dtype, n: 1.5e14)
    peak, source = throughput.device_peak(torch.device("cuda"), torch.bfloat16)
    assert peak == 1.5e14 and "measured" in source


def test_cpu_peak_is_measured():
    peak, source = throughput.device_peak("cpu", torch.float32, n=256)
    assert 1e6 < peak < 1e14 and "measured" in source


def test_mfu_is_useful_flops_over_peak():
    assert mfu(2000.0, 3e9, 1.2e13) == pytest.approx(0.5)


def test_the_measured_peak_is_the_fastest_repeat_not_the_median(monkeypatch):
    # on a shared machine most repeats are slowed by other jobs; a peak is the best one
    from utils.timing import Timing

    monkeypatch.setattr(throughput, "time_call", lambda *a, **k: Timing([4.0, 1.0, 2.0, 8.0]))
    assert throughput.measured_matmul_flops("cpu", n=8) == 2 * 8 ** 3 / 1.0
