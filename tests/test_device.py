import pytest
import torch

from utils.device import available_devices, describe_environment, get_device, set_seed


def test_cpu_always_available():
    assert "cpu" in available_devices()
    assert get_device("cpu") == torch.device("cpu")


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_automatic_choice_prefers_cuda(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device().type == "cuda"


def test_falls_back_to_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.mps_usable", lambda: False)
    assert get_device() == torch.device("cpu")


def test_mps_only_with_new_enough_torch(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr("utils.device._torch_version", lambda: (2, 4))
    from utils.device import mps_usable
    assert not mps_usable()
    monkeypatch.setattr("utils.device._torch_version", lambda: (2, 13))
    assert mps_usable()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_unavailable_device_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device("cuda")
    monkeypatch.setenv("COURSE_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device"):
        get_device()


def test_set_seed_repeats_every_generator():
    import random

    import numpy as np

    set_seed(3)
    first = (random.random(), np.random.rand(), torch.rand(2))
    set_seed(3)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_describe_environment_names_versions():
    info = describe_environment()
    assert info["torch"] == torch.__version__ and info["device"] in ("cpu", "cuda", "mps")
