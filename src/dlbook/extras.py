"""Reference libraries a chapter needs, installed only when missing.

Chapters 4-8 check their from-scratch code against the libraries people use
(peft, torchao, captum, opacus). They are *not* dependencies of dlbook: a
chapter's setup cell asks for them::

    from dlbook.extras import ensure
    ensure("captum")          # a no-op where captum is already importable

``ensure`` installs the version the book is tested with, and pins the torch and
numpy that are already installed while it does, so pip can never replace them
(on Colab that would break the runtime). If the install would need another torch
or numpy, or there is no network, it raises an error that says so.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile

__all__ = ["REFERENCE_VERSIONS", "ensure", "allow_old_torchao_in_peft"]

#: The versions the book is tested with (tests/test_extras.py checks they equal
#: requirements/constraints.txt): import name -> version.
REFERENCE_VERSIONS = {
    "peft": "0.21.2",
    "torchao": "0.18.0",
    "captum": "0.9.0",
    "opacus": "1.6.0",
}

# Packages that must never change under a notebook (Colab preinstalls them).
_FROZEN = ("torch", "numpy", "ipywidgets")


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure(*names: str, quiet: bool = True) -> None:
    """Make each reference library importable, installing it only if it is missing.

    Args:
        *names: import names from ``REFERENCE_VERSIONS`` (``"captum"``, ``"opacus"``,
            ``"peft"``, ``"torchao"``).
        quiet: pass ``-q`` to pip.

    An already installed version is kept as it is (Colab ships its own peft and
    torchao). A missing one is installed at the tested version with torch, numpy
    and ipywidgets held at their installed versions.

    Raises:
        ValueError: for a name the book does not use as a reference library.
        RuntimeError: if pip fails (no network, or a version conflict with the
            installed torch or numpy).
    """
    unknown = [n for n in names if n not in REFERENCE_VERSIONS]
    if unknown:
        raise ValueError(f"unknown reference library {unknown}: expected some of {sorted(REFERENCE_VERSIONS)}")
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if not missing:
        return
    held = [f"{d}=={v}" for d in _FROZEN if (v := _installed(d)) is not None]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(held) + "\n")
        constraints = f.name
    cmd = [sys.executable, "-m", "pip", "install", *(["-q"] if quiet else []), "-c", constraints,
           *[f"{n}=={REFERENCE_VERSIONS[n]}" for n in missing]]
    print(f"installing {', '.join(missing)} (torch, numpy and ipywidgets stay as they are)", flush=True)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(constraints)
    if result.returncode != 0:
        raise RuntimeError(
            f"could not install {', '.join(missing)}: pip said\n{result.stderr.strip()[-2000:]}\n"
            "This needs the network (the package registry), and a torch/numpy that these versions accept "
            f"({', '.join(held)} are held fixed).")
    importlib.invalidate_caches()


def allow_old_torchao_in_peft() -> bool:
    """Let peft wrap ordinary layers when an older torchao is installed (Colab's pair); True if it patched.

    peft 0.20 and later check torchao's version whenever LoRA wraps a layer (for their torchao
    dispatcher) and raise ``ImportError`` for torchao older than 0.16, even when the model holds
    no torchao tensor at all. Colab preinstalls peft 0.20 with torchao 0.10, so plain LoRA on an
    ``nn.Linear`` fails there. When the installed torchao is that old, this tells peft's
    dispatcher that torchao is absent; with torchao 0.16 or newer it changes nothing. Call it
    after ``import peft``.
    """
    import importlib

    version = _installed("torchao")
    if version is None:
        return False
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if major_minor >= (0, 16):
        return False
    patched = False
    for name in ("peft.import_utils", "peft.tuners.lora.torchao"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "is_torchao_available"):
            module.is_torchao_available = lambda: False
            patched = True
    return patched
