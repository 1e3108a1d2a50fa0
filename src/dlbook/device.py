"""Device choice, seeding and mixed precision: the only hardware-aware module.

Every notebook calls these three at its top, so the same notebook runs on a
laptop CPU, a CUDA GPU or Apple's MPS without an edit::

    device = get_device()          # cuda > mps > cpu, or $DLBOOK_DEVICE
    seed_everything(0)             # python, numpy, torch (and cuda)
    with autocast(device):         # bf16 on CUDA, a no-op elsewhere
        loss = model(x).sum()

This module imports nothing else from dlbook; everything else may import it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random

import numpy as np
import torch

__all__ = ["get_device", "seed_everything", "autocast", "set_threads", "info"]

_KNOWN = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(prefer: str | None = None) -> torch.device:
    """Return the device the book should compute on.

    The order is: the argument ``prefer``, then the environment variable
    ``DLBOOK_DEVICE``, then the first available of cuda, mps and cpu.

    Args:
        prefer: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``None``.

    Raises:
        ValueError: if the requested device is unknown or not available here.
    """
    choice = prefer if prefer is not None else os.environ.get("DLBOOK_DEVICE", "").strip()
    if not choice:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(choice, str):
        raise TypeError(f"prefer must be a string such as 'cpu' or 'cuda', got {type(choice).__name__}")
    kind = choice.split(":")[0].lower()
    if kind not in _KNOWN:
        raise ValueError(f"unknown device {choice!r}: expected one of {', '.join(_KNOWN)} (optionally 'cuda:N')")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} was requested but CUDA is not available on this machine")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"device {choice!r} was requested but MPS is not available on this machine")
    return torch.device(choice.lower())


def seed_everything(seed: int = 0, deterministic: bool = False) -> int:
    """Seed Python's ``random``, NumPy and torch (all CUDA devices too) with one call.

    Args:
        seed: a non-negative integer.
        deterministic: also ask torch for deterministic kernels (slower on GPU;
            operations without a deterministic version then raise).

    Returns:
        The seed, so that ``seed = seed_everything(0)`` reads naturally.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this workspace setting for reproducible matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return seed


def autocast(device: torch.device | str, dtype: torch.dtype | None = None, enabled: bool = True):
    """Mixed precision where it pays off, a no-op context elsewhere.

    On CUDA this is ``torch.autocast("cuda", dtype)`` with bf16 by default (no
    loss scaling needed). On CPU and MPS it returns a context that does nothing,
    so a notebook's numbers on CPU are exact float32.
    """
    device = torch.device(device)
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype or torch.bfloat16)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: ``DLBOOK_THREADS`` or all cores).

    Tiny models on few cores can run faster with fewer threads, so the choice
    is explicit. Returns the number now in use.
    """
    if n is None:
        n = int(os.environ.get("DLBOOK_THREADS", "0")) or os.cpu_count() or 1
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def info(device: torch.device | str | None = None) -> torch.device:
    """Print what the book will compute on, and return that device."""
    device = get_device() if device is None else torch.device(device)
    line = f"dlbook: device={device.type}"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        line += f" ({torch.cuda.get_device_name(index)})"
    line += f" | torch {torch.__version__} | python {platform.python_version()} | threads {torch.get_num_threads()}"
    print(line)
    return device
