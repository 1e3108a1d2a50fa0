"""dlbook.device: the device choice, seeding and autocast behave as documented."""

import random

import numpy as np
import pytest
import torch

from dlbook import device as dev


def test_default_device_is_cpu_without_accelerators(monkeypatch):
    """With no CUDA and no MPS, the book computes on the CPU."""
    monkeypatch.delenv("DLBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.get_device() == torch.device("cpu")


def test_cuda_is_preferred_over_mps(monkeypatch):
    monkeypatch.delenv("DLBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.get_device() == torch.device("cuda")


def test_mps_is_used_when_there_is_no_cuda(monkeypatch):
    monkeypatch.delenv("DLBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.get_device() == torch.device("mps")


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device() == torch.device("cpu")


@pytest.mark.parametrize("bad", ["tpu", "gpu", "cuda0x"])
def test_unknown_device_names_are_rejected(bad):
    with pytest.raises(ValueError, match="unknown device"):
        dev.get_device(bad)


def test_unavailable_cuda_request_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        dev.get_device("cuda")


def test_seed_everything_makes_python_numpy_and_torch_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    dev.seed_everything(123)
    first = draw()
    dev.seed_everything(123)
    assert draw() == first
    dev.seed_everything(124)
    assert draw() != first


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), ("0", TypeError), (True, TypeError)])
def test_seed_rejects_bad_values(bad, error):
    with pytest.raises(error):
        dev.seed_everything(bad)


def test_deterministic_mode_switches_torch_flag():
    try:
        dev.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_autocast_is_a_no_op_on_cpu():
    """On CPU the context leaves float32 matmuls in float32."""
    x = torch.randn(4, 4)
    with dev.autocast("cpu"):
        assert (x @ x).dtype == torch.float32


def test_set_threads_validates_and_applies():
    before = torch.get_num_threads()
    try:
        assert dev.set_threads(1) == 1
        with pytest.raises(ValueError):
            dev.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_info_prints_the_device(capsys):
    assert dev.info("cpu") == torch.device("cpu")
    assert "device=cpu" in capsys.readouterr().out
