"""Re-create the weights that ship in ``dlbook.weights`` and re-run their first steps.

``train_weights(NAME)`` trains ``dlbook.weights.RECIPES[NAME]`` from scratch with ``pretrained`` (one CPU
thread, deterministic), stores it in float16 and records its metrics; ``replay(NAME)`` re-runs the warmup
steps of that training, which must give the recorded losses (chapter 4 notebooks 1 and 2 show it live,
``tests/test_weights.py`` checks it). ``python -m dlbook.weights train-weights NAME`` calls ``train_weights``.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch

from dlbook import weights
from dlbook.pretrain.checkpoints import build_model, pretrained
from dlbook.pretrain.corpus import docstring_task, pretraining_text
from dlbook.pretrain.tokenizer import PretrainTokenizer
from dlbook.pretrain.training import pretrain

__all__ = ["replay", "train_weights"]


def replay(name: str, steps: int | None = None, tokenizer=None, ids=None) -> list[float]:
    """Re-run the first ``steps`` (default and at most: the warmup) steps of ``name``'s training from
    scratch and return their losses, to compare with the recorded ones.

    ``tokenizer`` and ``ids`` (the tokenized pretraining text) default to the ones this Python builds.
    """
    warmup = weights.warmup_steps(name)
    steps = warmup if steps is None else steps
    if not isinstance(steps, int) or not 1 <= steps <= warmup:
        raise ValueError(f"steps must be an int in [1, {warmup}] (the warmup, where a short run equals the "
                         f"full one), got {steps!r}")
    r = weights.RECIPES[name]
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
    file = weights.path(name)                              # checks the name
    recipe = weights.RECIPES[name]
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
    torch.save({"model": half.state_dict(), "tokenizer": tok.state_dict(), "losses": losses}, file)
    entries = weights.manifest()
    text_sha = weights.text_sha256(pretraining_text(docstring_task()))
    entries[name] = {"sha256": weights.file_sha256(file), "text_sha256": text_sha,
                     "metrics": metrics, "recipe": recipe, "torch": torch.__version__.split("+")[0],
                     "python": ".".join(map(str, sys.version_info[:2]))}
    weights.MANIFEST.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return metrics
