"""Trained weights shipped inside the package, for models a notebook cannot train within its budget.

Chapter 4 pretrains small models on Python's own prose (``dlbook.pretrain.pretrained``): the
masked-LM encoder of notebooks 1, 3 and 4 (600 steps) and the three 300-step models of notebook 2.
Training them takes longer than a notebook's CPU budget allows next to the experiments that use
them, so the full runs' weights ship here, one file per model, and ``pretrained`` loads them:

    python -m dlbook.weights train-weights NAME   # re-create NAME.pt from scratch and print its metrics
    python -m dlbook.weights train-weights all    # every model (about 90 s of one CPU thread in all)
    python -m dlbook.weights check                # every file against its SHA-256

This module handles the files (``read``, with its checks); ``dlbook.pretrain.checkpoints.pretrained``
builds the models from them, and ``dlbook.pretrain.shipped`` re-creates them (``train_weights``) and
re-runs their first steps (``replay``).

Rules:

* ``RECIPES[NAME]`` is the keyword arguments of ``pretrained`` that train the model; re-creating the
  file runs exactly that, deterministically, on the CPU with one thread.
* The file holds the weights in float16 (half the size; the logits of the stored model differ from
  the float32 one's by the ``fp16_max_logit_change`` the manifest records), the tokenizer, and the
  full run's per-step losses. ``manifest.json`` records its SHA-256, the metrics, and the SHA-256 of
  the pretraining text it was trained on.
* A file is used only where the running Python builds the *same* pretraining text: the downstream
  task's split depends on the standard library's docstrings, so on another Python version a test
  docstring could have been pretraining text for the shipped model. There ``pretrained`` trains the
  model instead (and caches it), as it did before weights shipped.
* ``tests/test_weights.py`` re-runs the first steps of each recipe and checks they give the recorded
  losses, so the shipped file provably comes from the shipped code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parent
MANIFEST = FOLDER / "manifest.json"

_DEFAULTS = dict(block_size=64, n_layer=2, n_embd=64, batch_size=32, lr=2e-3, level="word", seed=0)
RECIPES: dict[str, dict] = {
    "mlm_600": dict(objective="mlm", steps=600, **_DEFAULTS),    # notebooks 1, 3 and 4 of chapter 4
    "clm_300": dict(objective="clm", steps=300, **_DEFAULTS),    # notebook 2: one budget for three objectives
    "mlm_300": dict(objective="mlm", steps=300, **_DEFAULTS),
    "span_300": dict(objective="span", steps=300, **_DEFAULTS),
}
"""Shipped model name -> the keyword arguments of ``dlbook.pretrain.pretrained`` that train it."""

__all__ = ["RECIPES", "recipe_for", "text_sha256", "file_sha256", "manifest", "path", "read", "warmup_steps"]


def recipe_for(config: dict) -> str | None:
    """The name of the shipped model trained by ``pretrained(**config)``, or None."""
    for name, recipe in RECIPES.items():
        if all(config.get(k) == v for k, v in recipe.items()):
            return name
    return None


def text_sha256(text: str) -> str:
    """SHA-256 of a pretraining text (UTF-8): which corpus a model was trained on."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(file: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


def manifest() -> dict:
    """``{name: {"sha256", "text_sha256", "metrics", "recipe"}}`` of the shipped files."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def _check_name(name: str) -> None:
    if name not in RECIPES:
        raise ValueError(f"unknown shipped model {name!r}: expected one of {', '.join(RECIPES)}")


def path(name: str) -> Path:
    """Where the shipped file of ``name`` lives (``src/dlbook/weights/NAME.pt``)."""
    _check_name(name)
    return FOLDER / f"{name}.pt"


def read(name: str, text: str | None = None) -> dict | None:
    """The verified contents of ``NAME.pt`` (``"model"`` float16 state dict, ``"tokenizer"`` state,
    ``"losses"``), or None when ``text`` (the pretraining text this Python builds) is not the text
    the file was trained on. ``dlbook.pretrain.pretrained`` builds the model from it.

    Raises:
        ValueError: the file is missing, or its SHA-256 is not the manifest's (a corrupt or
            hand-edited file is never used).
    """
    file, entry = path(name), manifest().get(name)
    if entry is None or not file.is_file():
        raise ValueError(f"shipped weights {name!r} are missing: run `python -m dlbook.weights train-weights {name}`")
    if file_sha256(file) != entry["sha256"]:
        raise ValueError(f"{file} does not match its SHA-256 in {MANIFEST.name}: re-create it with "
                         f"`python -m dlbook.weights train-weights {name}`")
    if text is not None and text_sha256(text) != entry["text_sha256"]:
        return None
    return torch.load(file, map_location="cpu", weights_only=True)


def warmup_steps(name: str) -> int:
    """How many steps of ``name``'s run are learning-rate warmup (``steps // 20``): a run of that many
    steps, with that warmup, takes exactly the full run's first steps."""
    _check_name(name)
    return max(1, RECIPES[name]["steps"] // 20)
