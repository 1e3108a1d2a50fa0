"""``build_model`` makes a fresh model for an objective; ``pretrained`` trains one once and caches its weights.

The cache file is written to a temporary file and then renamed (atomically), so two processes
never read a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from dlbook.data import cache_dir
from dlbook.pretrain.corpus import docstring_task, pretraining_text
from dlbook.pretrain.representations import MLMEncoder
from dlbook.pretrain.tokenizer import PretrainTokenizer
from dlbook.pretrain.training import pretrain
from dlbook.transformer import GPT, EncoderDecoder, gpt2_init_

__all__ = [
    "pretrained", "build_model",
]


def build_model(objective: str, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4,
                n_embd: int = 64, std: float | None = None) -> nn.Module:
    """A fresh model for an objective: ``MLMEncoder`` (mlm), ``GPT`` (clm) or ``EncoderDecoder`` (span),
    all with the same width and depth (the encoder-decoder has n_layer // 2 layers on each side,
    so the three have a similar parameter count), one vocabulary matrix shared by input and output
    embeddings, and the same init scale (default 1/sqrt(C))."""
    std = 1 / math.sqrt(n_embd) if std is None else std
    if objective == "mlm":
        return MLMEncoder(vocab_size, block_size, n_layer, n_head, n_embd, pad_id=0, std=std)
    if objective == "clm":
        model = GPT(vocab_size, block_size, n_layer, n_head, n_embd)
        model.reset_parameters(std)
        return model
    if objective == "span":
        model = EncoderDecoder(vocab_size, vocab_size, block_size, max(1, n_layer // 2), n_head, n_embd,
                               src_pad_id=0)
        model.tgt_emb.weight = model.src_emb.weight            # one shared vocabulary matrix, as T5
        model.head.weight = model.src_emb.weight
        gpt2_init_(model, max(1, n_layer // 2), std)
        return model
    raise ValueError(f"objective must be 'mlm', 'clm' or 'span', got {objective!r}")


def pretrained(objective: str = "mlm", steps: int = 600, block_size: int = 64, n_layer: int = 2,
               n_embd: int = 64, batch_size: int = 32, lr: float = 2e-3, level: str = "word", seed: int = 0,
               cache: bool = True, root: str | Path | None = None, verbose: bool = True):
    """Pretrain a model on ``pretraining_text(docstring_task())`` once and cache its weights.

    The models chapter 4 uses ship with dlbook (``dlbook.weights.RECIPES``): with ``cache`` and
    those arguments, the shipped float16 weights are loaded (``info["shipped"]``), provided this Python
    builds the very pretraining text they were trained on; otherwise the model is trained here.
    Any other model's file lives in ``root`` (default ``dlbook.data.cache_dir() / "pretrain"``), named by a hash
    of every argument and the running torch version; when it is missing it is re-created
    (deterministically, on the CPU, one thread-count independent seed) and written to a
    temporary file that is then renamed, so two processes doing this at once never read a
    half-written file.

    Returns:
        ``(model, tokenizer, info)`` with the model on the CPU in eval mode and ``info`` a dict
        with ``"losses"`` (per-step pretraining losses), ``"seconds"`` and ``"cached"``.
    """
    import time

    from dlbook import weights

    config = dict(objective=objective, steps=steps, block_size=block_size, n_layer=n_layer, n_embd=n_embd,
                  batch_size=batch_size, lr=lr, level=level, seed=seed, torch=torch.__version__.split("+")[0], v=2)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root) if root is not None else cache_dir() / "pretrain"
    path = folder / f"{objective}-{key}.pt"
    task = docstring_task()
    if cache and (name := weights.recipe_for(config)) is not None:
        state = weights.read(name, pretraining_text(task))
        if state is not None:
            tok = PretrainTokenizer.from_state_dict(state["tokenizer"])
            model = build_model(objective, tok.vocab_size, block_size, n_layer, 4, n_embd)
            model.load_state_dict({k: v.float() for k, v in state["model"].items()})
            return model.eval(), tok, {"losses": list(state["losses"]), "seconds": 0.0, "cached": True,
                                       "path": weights.path(name), "shipped": True}
    if cache and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            tok = PretrainTokenizer.from_state_dict(state["tokenizer"])
            model = build_model(objective, tok.vocab_size, block_size, n_layer, 4, n_embd)
            model.load_state_dict(state["model"])
            return model.eval(), tok, {"losses": state["losses"], "seconds": 0.0, "cached": True, "path": path,
                                       "shipped": False}
        except Exception:  # noqa: BLE001 - a corrupt or stale file is simply re-created
            pass
    text = pretraining_text(task)
    tok = PretrainTokenizer(text, level=level)
    ids = tok.encode(text)
    torch.manual_seed(seed)
    model = build_model(objective, tok.vocab_size, block_size, n_layer, 4, n_embd)
    t0 = time.perf_counter()
    if verbose:
        print(f"pretraining {objective} for {steps} steps (cached afterwards in {folder})", file=sys.stderr)
    losses = pretrain(model, ids, objective, steps, tokenizer=None if objective == "clm" else tok,
                      batch_size=batch_size, lr=lr, seed=seed)
    seconds = time.perf_counter() - t0
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        torch.save({"model": model.state_dict(), "tokenizer": tok.state_dict(), "losses": losses,
                    "config": config}, tmp)
        os.replace(tmp, path)
    return model.eval(), tok, {"losses": losses, "seconds": seconds, "cached": False, "path": path, "shipped": False}
