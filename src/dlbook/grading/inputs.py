"""Inputs the learner's code cannot touch: every call into it gets fresh copies of its arguments.

A test computes its expected value from its own tensors, before or after it calls the learner's function. If the
function received those very tensors, an in-place change (a bug, or a trick such as zeroing the inputs) would
reach the expected value, and a wrong answer could pass. So every call that crosses into learner code, in the
learner's own ``check()`` (:class:`LearnerObject`, here) and under the instructor's grader (the submission decodes
fresh tensors from bytes, and :mod:`dlbook.grading.proxy` no longer writes its changes back), works on copies:

* tensors are cloned (``detach().clone()``; a tensor that requires grad is cloned *with* its graph, so a probe's
  gradient still flows back to the probe's own leaf), numpy arrays copied, modules deep-copied, and lists, tuples
  and dicts rebuilt around copied items, with an object passed twice copied once;
* a ``torch.Generator`` is passed as is: drawing from it is part of what a function such as ``minibatch_indices``
  is asked to do (two calls on one generator give two epochs);
* learner objects (functions, classes, models) stay learner objects, wrapped again.

What changed in place is not lost: it is recorded on ``ns`` (:func:`changed_inputs`), so a question that says
"do not modify the input" checks it with :func:`assert_inputs_unchanged`, and a failing test's message notes it.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

__all__ = ["LearnerObject", "guard", "unwrap", "fresh", "changed_inputs", "assert_inputs_unchanged", "describe_change"]

_DATA = (str, bytes, int, float, complex, bool, type(None), type(Ellipsis), torch.Tensor, np.ndarray, np.generic,
         torch.Generator, torch.dtype, torch.device, slice, range)


def _is_data(value) -> bool:
    if isinstance(value, _DATA):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(_is_data(k) and _is_data(v) for k, v in value.items())
    return False


def fresh(value, memo: dict | None = None):
    """A copy of ``value`` that shares no tensor, array or module with it (generators and learner objects shared).

    ``memo`` maps ``id(original) -> copy``, so an object that appears twice is copied once (aliasing kept).
    """
    memo = {} if memo is None else memo
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunctionSubclass():
            if value.requires_grad:  # keep the graph: a probe differentiates through the call
                copy = value.clone()
            else:
                copy = value.detach().clone()
            if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
                copy = copy.as_subclass(torch.Tensor)
    elif isinstance(value, np.ndarray):
        copy = value.copy()
    elif isinstance(value, torch.nn.Module):
        import copy as _copy

        copy = _copy.deepcopy(value)
    elif isinstance(value, list):
        copy = []
        memo[key] = copy
        copy.extend(fresh(v, memo) for v in value)
        return copy
    elif isinstance(value, tuple):  # a plain tuple, a named tuple or a torch.Size keeps its type
        items = [fresh(v, memo) for v in value]
        copy = type(value)(*items) if hasattr(value, "_fields") else tuple(items) if type(value) is tuple else \
            type(value)(items)
    elif isinstance(value, dict):
        copy = {k: fresh(v, memo) for k, v in value.items()}
    else:  # numbers, strings, generators, learner objects: immutable, or shared on purpose
        copy = value
    memo[key] = copy
    return copy


def _differs(before, after) -> bool:
    """Whether a copied tensor or array changed (shape, dtype or any value; NaN equals NaN)."""
    if isinstance(before, np.ndarray):
        return before.shape != after.shape or not np.array_equal(before, after, equal_nan=before.dtype.kind in "fc")
    with torch._C.DisableTorchFunctionSubclass():
        a, b = before.detach(), after.detach()
        if a.shape != b.shape or a.dtype != b.dtype:
            return True
        same = a == b
        if a.is_floating_point() or a.is_complex():
            same = same | (a.isnan() & b.isnan())
        return not bool(same.all())


def _leaves(value, found: list, seen: set) -> None:
    """(tensor or array) leaves of ``value``, depth first."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, (torch.Tensor, np.ndarray)):
        found.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, found, seen)
    elif isinstance(value, dict):
        for v in value.values():
            _leaves(v, found, seen)


def describe_change(function: str, argument: str) -> str:
    """The finding's words, the same in both grading paths: "`f` changed its argument `x`"."""
    return f"`{function}` changed its argument {argument}"


def _argument_names(target, args, kwargs) -> list[str]:
    try:
        names = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        names = []
    labels = [f"`{names[i]}`" if i < len(names) and not names[i].startswith("*") else f"{i + 1}"
              for i in range(len(args))]
    return labels + [f"`{k}`" for k in kwargs]


class LearnerObject:
    """A learner's function, class or object in the learner's own process, called only with fresh copies.

    It behaves as the proxy's ``RemoteObject`` does under the instructor's grader: it can be called and asked for
    an attribute, and what comes back is data, or another :class:`LearnerObject`.
    """

    __slots__ = ("_dlbook_target", "_dlbook_label", "_dlbook_changes")

    def __init__(self, target, label: str, changes: list):
        object.__setattr__(self, "_dlbook_target", target)
        object.__setattr__(self, "_dlbook_label", label)
        object.__setattr__(self, "_dlbook_changes", changes)

    def __call__(self, *args, **kwargs):
        target = self._dlbook_target
        memo: dict = {}
        copies = fresh((args, kwargs), memo)
        result = target(*copies[0], **copies[1])
        names = _argument_names(target, args, kwargs)
        for position, value in enumerate([*args, *kwargs.values()]):
            mine: list = []
            _leaves(value, mine, set())
            change = describe_change(self._dlbook_label, names[position])
            if change not in self._dlbook_changes and any(_differs(v, memo[id(v)]) for v in mine if id(v) in memo):
                self._dlbook_changes.append(change)
        return guard(result, f"{self._dlbook_label}(...)", self._dlbook_changes)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return guard(getattr(self._dlbook_target, name), f"{self._dlbook_label}.{name}", self._dlbook_changes)

    def __setattr__(self, name, value):
        raise AttributeError("a learner's object is read-only to a test")

    def __repr__(self) -> str:
        return f"<the learner's {type(self._dlbook_target).__name__}>"

    def __bool__(self) -> bool:
        return True


def guard(value, label: str, changes: list):
    """``value`` itself if it is data; else a :class:`LearnerObject` around it."""
    if _is_data(value) or isinstance(value, LearnerObject):
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(guard(v, label, changes) for v in value)
    if isinstance(value, dict):
        return {k: guard(v, label, changes) for k, v in value.items()}
    return LearnerObject(value, label, changes)


def unwrap(value):
    """The learner's object inside a :class:`LearnerObject` (for a probe, which runs it under its own rules)."""
    return value._dlbook_target if isinstance(value, LearnerObject) else value


def changed_inputs(ns) -> list[str]:
    """What the learner's calls in the current test changed in place, one line each (empty when nothing)."""
    return list(getattr(ns, "_changes", ()))


def assert_inputs_unchanged(ns, hint: str = "") -> None:
    """Fail when a call into the learner's code in this test changed one of its arguments in place.

    The grader gave the call copies, so the test's own tensors are intact either way; this reports the
    change as its own finding, for a question that says "do not modify the input" or "return a copy".
    """
    changes = changed_inputs(ns)
    if changes:
        raise AssertionError(f"{changes[0]} in place" + (f": {hint}" if hint else ""))

