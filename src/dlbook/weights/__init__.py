"""Trained weights shipped inside the package, for models a notebook cannot train within its budget.

Chapter 4 pretrains small models on Python's own prose (``dlbook.pretrain.pretrained``): the
masked-LM encoder of notebooks 1, 3 and 4 (600 steps) and the three 300-step models of notebook 2.
Training them takes longer than a notebook's CPU budget allows next to the experiments that use
them, so the full runs' weights ship here, one file per model, and ``pretrained`` loads them:

    python -m dlbook.weights train-weights NAME   # re-create NAME.pt from scratch and print its metrics
    python -m dlbook.weights train-weights all    # every model (about 90 s of one CPU thread in all)
    python -m dlbook.weights check                # every file against its SHA-256

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

import copy
import hashlib
import json
import sys
import time
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

__all__ = ["RECIPES", "recipe_for", "text_sha256", "file_sha256", "manifest", "path", "load", "train_weights",
           "replay", "warmup_steps"]


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


def load(name: str, text: str | None = None):
    """The shipped model ``name``: ``(model in eval mode on the CPU, tokenizer, info)``, or None when
    ``text`` (the pretraining text this Python builds) is not the text it was trained on.

    ``info`` has ``"losses"`` (the full run's per-step losses), ``"metrics"``, ``"path"``.

    Raises:
        ValueError: the file is missing, or its SHA-256 is not the manifest's (a corrupt or
            hand-edited file is never used).
    """
    from dlbook.pretrain import PretrainTokenizer, build_model

    file, entry = path(name), manifest().get(name)
    if entry is None or not file.is_file():
        raise ValueError(f"shipped weights {name!r} are missing: run `python -m dlbook.weights train-weights {name}`")
    if file_sha256(file) != entry["sha256"]:
        raise ValueError(f"{file} does not match its SHA-256 in {MANIFEST.name}: re-create it with "
                         f"`python -m dlbook.weights train-weights {name}`")
    if text is not None and text_sha256(text) != entry["text_sha256"]:
        return None
    state = torch.load(file, map_location="cpu", weights_only=True)
    recipe = RECIPES[name]
    tok = PretrainTokenizer.from_state_dict(state["tokenizer"])
    model = build_model(recipe["objective"], tok.vocab_size, recipe["block_size"], recipe["n_layer"], 4,
                        recipe["n_embd"])
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    return model.eval(), tok, {"losses": list(state["losses"]), "metrics": entry["metrics"], "path": file}


def warmup_steps(name: str) -> int:
    """How many steps of ``name``'s run are learning-rate warmup (``steps // 20``): a run of that many
    steps, with that warmup, takes exactly the full run's first steps."""
    _check_name(name)
    return max(1, RECIPES[name]["steps"] // 20)


def replay(name: str, steps: int | None = None, tokenizer=None, ids=None) -> list[float]:
    """Re-run the first ``steps`` (default and at most: the warmup) steps of ``name``'s training from
    scratch and return their losses, to compare with the recorded ones.

    ``tokenizer`` and ``ids`` (the tokenized pretraining text) default to the ones this Python builds.
    """
    from dlbook.pretrain import PretrainTokenizer, build_model, docstring_task, pretrain, pretraining_text

    warmup = warmup_steps(name)
    steps = warmup if steps is None else steps
    if not isinstance(steps, int) or not 1 <= steps <= warmup:
        raise ValueError(f"steps must be an int in [1, {warmup}] (the warmup, where a short run equals the "
                         f"full one), got {steps!r}")
    r = RECIPES[name]
    if ids is None:
        text = pretraining_text(docstring_task())
        tokenizer = PretrainTokenizer(text, level=r["level"]) if tokenizer is None else tokenizer
        ids = tokenizer.encode(text)
    torch.manual_seed(r["seed"])
    model = build_model(r["objective"], tokenizer.vocab_size, r["block_size"], r["n_layer"], 4, r["n_embd"])
    return pretrain(model, ids, r["objective"], steps, tokenizer=None if r["objective"] == "clm" else tokenizer,
                    batch_size=r["batch_size"], lr=r["lr"], seed=r["seed"], warmup=warmup)


def _max_logit_change(model, rounded, tok, recipe) -> float:
    """Largest |logit| change that storing ``model`` in float16 makes, on 8 windows of ids."""
    idx = torch.randint(tok.n_special, tok.vocab_size, (8, recipe["block_size"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if recipe["objective"] == "span":
            a, b = model(idx, idx), rounded(idx, idx)
        else:
            a, b = model(idx)[0], rounded(idx)[0]
    return (a - b).abs().max().item()


def train_weights(name: str) -> dict:
    """Train ``name`` from scratch (one CPU thread, deterministic), write ``NAME.pt`` and its manifest
    entry, and return the metrics: the mean loss over the first 5 and 10 steps and the last 30 and
    50, the vocabulary size, the CPU seconds, and the largest logit change float16 storage makes."""
    from dlbook.pretrain import build_model, docstring_task, pretrained, pretraining_text

    _check_name(name)
    recipe = RECIPES[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        model, tok, info = pretrained(**recipe, cache=False, verbose=False)
        seconds = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    half = copy.deepcopy(model).half()                      # .half() keeps tied weights tied: stored once
    rounded = build_model(recipe["objective"], tok.vocab_size, recipe["block_size"], recipe["n_layer"], 4,
                          recipe["n_embd"])
    rounded.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    losses = info["losses"]
    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    metrics = {"loss_first5": mean(losses[:5]), "loss_first10": mean(losses[:10]), "loss_last30": mean(losses[-30:]),
               "loss_last50": mean(losses[-50:]), "vocab_size": tok.vocab_size, "cpu_seconds": round(seconds, 1),
               "fp16_max_logit_change": float(f"{_max_logit_change(model, rounded.eval(), tok, recipe):.2e}")}
    file = path(name)
    torch.save({"model": half.state_dict(), "tokenizer": tok.state_dict(), "losses": losses}, file)
    entries = manifest()
    entries[name] = {"sha256": file_sha256(file), "text_sha256": text_sha256(pretraining_text(docstring_task())),
                     "metrics": metrics, "recipe": recipe, "torch": torch.__version__.split("+")[0],
                     "python": ".".join(map(str, sys.version_info[:2]))}
    MANIFEST.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return metrics
