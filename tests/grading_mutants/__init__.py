"""Mutants of every exercise question: the usual wrong answers, and right answers written differently.

One module per set (``s00_preliminaries.py`` for set ``00_preliminaries``) holds plain data:

* ``NAMES``: question id -> the learner names the question reads;
* ``RIGHT``: question id -> {label: source}, answers written differently from the reference (float32, another
  algorithm, another library call), each of which must earn every point with no warning;
* ``WRONG``: question id -> {label: (source, phrase)}, usual mistakes, each of which must lose points and get
  the feedback that contains ``phrase`` (the hint written for that mistake);
* ``CHEAT``: one source that implements nothing and only rewrites the tests' input tensors in place; it must
  earn what a stub earns (0) on every question.

A source is run on top of the set's reference namespace (every code cell of ``exercises/_source/<set>.ipynb``
but the setup cell and the ``check`` calls), so it defines only the names it changes. The stub, the constant and
the no-op of every question are made here from ``NAMES``.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SETS = sorted(p.stem for p in (ROOT / "exercises" / "_source").glob("*.ipynb"))


def module(set_id: str):
    return importlib.import_module(f"grading_mutants.s{set_id}")


@functools.lru_cache(maxsize=None)
def _reference_cells(set_id: str) -> tuple[str, ...]:
    nb = json.loads((ROOT / "exercises" / "_source" / f"{set_id}.ipynb").read_text(encoding="utf-8"))
    cells = []
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code" or "%pip" in source or "checker(" in source:
            continue
        cells.append(re.sub(r"^check(_all)?\(.*\)$", "pass", source, flags=re.M))
    return tuple(cells)


@functools.lru_cache(maxsize=None)
def _reference(set_id: str) -> dict:
    """The reference namespace, run once per set (its functions' globals are this dict, which nothing changes)."""
    ns: dict = {"__name__": "__main__"}
    exec("import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn", ns)  # noqa: S102
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for cell in _reference_cells(set_id):
            exec(compile(cell, f"<{set_id} reference>", "exec"), ns)  # noqa: S102  (our own notebooks)
    return ns


def namespace(set_id: str, source: str = "") -> dict:
    """The set's reference namespace with ``source`` run on top of it (a fresh dict each time).

    The reference functions are rebound to the new dict, so that one the source replaces is the one they call
    (``dp_gradient`` calls the mutant's ``clip_and_sum``, as in a notebook).
    """
    base = _reference(set_id)
    ns = dict(base)
    for name, value in base.items():
        if isinstance(value, types.FunctionType) and value.__globals__ is base:
            copy = types.FunctionType(value.__code__, ns, value.__name__, value.__defaults__, value.__closure__)
            copy.__kwdefaults__, copy.__doc__ = value.__kwdefaults__, value.__doc__
            ns[name] = copy
    if source:
        exec(compile(source, f"<{set_id} mutant>", "exec"), ns)  # noqa: S102  (our own mutants)
    return ns


def _stub(*args, **kwargs):
    raise NotImplementedError


def _noop(*args, **kwargs):
    """Hands back its first tensor argument (or its first argument) untouched."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return tensors[0] if tensors else (args[0] if args else None)


def _constant(*args, **kwargs):
    return 0.0


GENERIC = {"stub": _stub, "constant": _constant, "no-op": _noop}


def generic(set_id: str, qid: str, kind: str) -> dict:
    """The reference namespace with every name of question ``qid`` replaced by the generic mutant ``kind``."""
    ns = namespace(set_id)
    for name in module(set_id).NAMES[qid]:
        value = ns.get(name)
        if callable(value) or value is None:
            ns[name] = GENERIC[kind]
        else:  # a value the learner sets (n_params, total_steps, reduction_axes, ...)
            empty = type(value)() if isinstance(value, (dict, str)) else 0
            ns[name] = {"stub": ..., "constant": 0, "no-op": empty}[kind]
    return ns
