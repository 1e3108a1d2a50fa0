"""Reference functions, captured when dlbook.grading is first imported.

A learner's notebook imports ``dlbook.grading`` in its setup cell, and the
instructor's grader imports it before a submission's first cell runs. Both
happen before any learner code, so what is captured here is the real torch and
numpy. Two defences follow from that:

* ``assert_close`` computes with the functions bound in this module, so a
  notebook that replaces ``torch.allclose`` or ``torch.testing.assert_close``
  changes nothing about how answers are compared;
* :func:`clean_references` puts every public function of torch, numpy and math
  back as it was while the tests run (and restores the learner's versions
  afterwards), so a test that calls ``torch.allclose`` or ``F.cross_entropy``
  directly gets the real one too.

In the learner's own ``check()`` this is a defence against the easy cheat only: code
that runs in the same process can always reach further (a learner can only fool
themselves there). The instructor's grader does not rely on it: it runs the tests in a
process that never executes submitted code (see dlbook.grading.worker and
book/instructors.md).
"""

from __future__ import annotations

import contextlib
import math
import types

import numpy as np
import numpy.testing
import torch
import torch.linalg
import torch.nn.functional
import torch.testing

# Functions assert_close relies on, bound once.
as_tensor = torch.as_tensor
is_tensor = torch.is_tensor
isfinite = torch.isfinite
torch_abs = torch.abs
torch_argmax = torch.argmax
torch_where = torch.where
float64 = torch.float64

_MODULES: tuple[types.ModuleType, ...] = (
    torch,
    torch.nn.functional,
    torch.testing,
    torch.linalg,
    np,
    numpy.testing,
    math,
)
_CLASSES: tuple[type, ...] = (torch.Tensor, np.ndarray)


def _public_callables(namespace: dict) -> dict:
    return {name: value for name, value in namespace.items() if not name.startswith("__") and callable(value)}


# name -> original object, per module and per class, captured at import.
_MODULE_SNAPSHOT = {module: _public_callables(vars(module)) for module in _MODULES}
_CLASS_SNAPSHOT = {cls: dict(vars(cls)) for cls in _CLASSES}


def _restore_module(module, original: dict, undo: list) -> None:
    current = vars(module)
    for name, value in original.items():
        if current.get(name, value) is not value:
            undo.append((module, name, current[name]))
            setattr(module, name, value)


def _restore_class(cls, original: dict, undo: list) -> None:
    for name, value in list(vars(cls).items()):
        if name not in original:
            if not any(name in vars(base) for base in cls.__mro__[1:]):
                continue  # a new name shadows nothing: leave it
            # Added by the learner over a base-class method (``torch.Tensor.allclose = ...``): hide it.
            undo.append((cls, name, value))
            with contextlib.suppress(AttributeError, TypeError):
                delattr(cls, name)
        elif original[name] is not value:
            undo.append((cls, name, value))
            with contextlib.suppress(AttributeError, TypeError):
                setattr(cls, name, original[name])


@contextlib.contextmanager
def clean_references():
    """While the block runs, torch, numpy and math are as they were at import.

    Whatever the learner replaced is put back on exit, so ``check()`` never
    changes the learner's own notebook state.
    """
    undo: list = []
    for module, original in _MODULE_SNAPSHOT.items():
        _restore_module(module, original, undo)
    for cls, original in _CLASS_SNAPSHOT.items():
        _restore_class(cls, original, undo)
    try:
        yield [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, _ in undo]
    finally:
        for owner, name, value in reversed(undo):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(owner, name, value)
