"""Argument checks shared by the interpretability modules: models, inputs, targets, logits, baselines and bounds,
and the context that puts a model in ``eval()`` and restores its mode.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable such as an nn.Module mapping (N, ...) to logits (N, C), "
                        f"got {type(model).__name__}")


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a floating-point tensor of shape (N, ...) with a batch axis, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")


class _Call:
    """A Captum-style call ``model(*inputs, *additional_forward_args)`` as a function of one tensor.

    ``inputs`` is a tensor (N, *F) (N scalars when 1-D), or a tuple of tensors
    (N, *F_j) with one batch axis N; a tuple is flattened into one (N, sum_j prod F_j)
    tensor ``self.x``, so that every method below works on one tensor, and ``out``
    splits an attribution of that shape back into the tuple. ``additional_forward_args``
    (one object, or a tuple or list of them) are passed after the inputs, unperturbed and
    unattributed; a tensor among them whose first axis is N follows its example when the
    methods expand the batch (``rows``, the example of each row; Captum repeats such
    tensors the same way), anything else is passed as is.
    """

    def __init__(self, model, inputs, additional_forward_args=None, floating: bool = True):
        _check_model(model)
        self.model = model
        self.is_tuple = isinstance(inputs, tuple)
        xs = inputs if self.is_tuple else (inputs,)
        if not xs:
            raise ValueError("inputs must be a tensor or a non-empty tuple of tensors")
        for t in xs:
            if floating:
                _check_input(t)
            elif not isinstance(t, torch.Tensor) or t.dim() < 1 or t.is_complex():
                raise TypeError(f"x must be a real tensor of shape (N, ...) with a batch axis, got "
                                f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
        self.n = xs[0].shape[0]
        if any(t.shape[0] != self.n for t in xs):
            raise ValueError(f"every input must have the same batch size N, got {[t.shape[0] for t in xs]}")
        self.shapes = [tuple(t.shape[1:]) for t in xs]
        self.sizes = [math.prod(s) for s in self.shapes]
        if self.is_tuple and len({t.dtype for t in xs}) > 1:
            raise TypeError(f"the inputs of a tuple must share one dtype, got {[t.dtype for t in xs]}")
        self.x = torch.cat([t.detach().reshape(self.n, -1) for t in xs], 1) if self.is_tuple else xs[0].detach()
        args = additional_forward_args
        self.args = () if args is None else tuple(args) if isinstance(args, (tuple, list)) else (args,)

    def parts(self, x: torch.Tensor) -> tuple:
        """(M, *F) or the flat (M, D) -> the model's positional inputs."""
        if not self.is_tuple:
            return (x,)
        return tuple(p.reshape(x.shape[0], *s) for p, s in zip(x.split(self.sizes, dim=1), self.shapes))

    def __call__(self, x: torch.Tensor, rows: torch.Tensor | None = None):
        args = self.args
        if rows is not None:
            args = tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == self.n else a
                         for a in args)
        return self.model(*self.parts(x), *args)

    def flat_like(self, name: str, value, convert):
        """A per-input value (a tuple for tuple inputs) -> one value for ``self.x`` via ``convert(v, x_j)``."""
        if not self.is_tuple:
            return convert(value, self.x)
        vals = value if isinstance(value, tuple) else (value,) * len(self.shapes)
        if len(vals) != len(self.shapes):
            raise ValueError(f"{name} must be one value or a tuple of {len(self.shapes)} (one per input), "
                             f"got {len(vals)}")
        out = [convert(v, xj) for v, xj in zip(vals, self.parts(self.x))]
        return None if any(o is None for o in out) else \
            torch.cat([o.expand_as(xj).reshape(self.n, -1) for o, xj in zip(out, self.parts(self.x))], 1)

    def out(self, attr: torch.Tensor):
        """An attribution of the shape of ``self.x`` -> the shape of the inputs (a tuple for a tuple)."""
        return self.parts(attr) if self.is_tuple else attr

    def labels(self, y, name: str = "y") -> torch.Tensor | None:
        return _labels(y, self.x, name)


def _check_number(name: str, value, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {low}, got {value!r}")
    return float(value)


def _labels(y, x: torch.Tensor, name: str = "y") -> torch.Tensor | None:
    """Targets -> None, int64 (N,) class ids, or int64 (N, k) indices into a multi-axis output.

    Accepted: None (for a model with one output per example), an int, a list of N ints,
    an integer tensor of shape () or (N,), a tuple of ints (one index into an output of
    shape (N, d1, ..., dk), the same for every example) or a list of N such tuples (Captum's).
    """
    n = x.shape[0]
    if y is None:
        return None
    if isinstance(y, int) and not isinstance(y, bool):
        return torch.full((n,), y, dtype=torch.long, device=x.device)
    if isinstance(y, tuple):
        if not y or not all(isinstance(v, int) and not isinstance(v, bool) for v in y):
            raise TypeError(f"a tuple {name} is one index into a multi-axis output and must hold ints, got {y!r}")
        return torch.tensor(y, dtype=torch.long, device=x.device).expand(n, len(y))   # the same for every example
    if isinstance(y, list):
        if len(y) != n:
            raise ValueError(f"{name} must have one entry per example, {n}, got a list of {len(y)}")
        try:
            y = torch.tensor(y, dtype=torch.long, device=x.device)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a list of ints or of equal-length int tuples, got {y!r}") from None
        return y
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an integer tensor of shape (N,) = ({n},), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), one class per example, got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def _check_logits(logits, y: torch.Tensor | None, name: str = "y") -> None:
    n = None if y is None else y.shape[0]
    if y is None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 1:
            raise ValueError(f"with no {name}, the model must return one output per example, shape (N,); got "
                             f"{tuple(getattr(logits, 'shape', ()))}: pass {name} to pick an output")
        return
    need = 2 if y.dim() == 1 else 1 + y.shape[1]
    if not isinstance(logits, torch.Tensor) or logits.dim() != need or logits.shape[0] != n:
        raise ValueError(f"model must return logits of shape (N, C) = ({n}, C) (or (N, d1, ..., dk) for a "
                         f"k-index {name}), got {tuple(getattr(logits, 'shape', ()))}")
    sizes = torch.tensor(logits.shape[1:], device=y.device)
    yy = y if y.dim() == 2 else y[:, None]
    if y.numel() and (bool((yy < 0).any()) or bool((yy >= sizes).any())):
        c = logits.shape[1]
        raise ValueError(f"{name} must hold class ids in [0, {c}) for a model with {c} outputs, "
                         f"got {int(y.min())}..{int(y.max())}" if y.dim() == 1 else
                         f"{name} indexes outside the model's output of shape {tuple(logits.shape)}")


def _select(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """f_t(x) for each row, shape (N,): the output itself, a class logit, or a multi-index into the outputs."""
    _check_logits(logits, target, "target")
    if target is None:
        return logits
    if target.dim() == 1:
        return logits.gather(1, target[:, None])[:, 0]
    flat = torch.zeros_like(target[:, 0])
    for j, size in enumerate(logits.shape[1:]):
        flat = flat * size + target[:, j]
    return logits.flatten(1).gather(1, flat[:, None])[:, 0]


def _bound(name: str, value, x: torch.Tensor):
    """None, a number, or a tensor broadcastable to x -> None or a tensor like x."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        try:
            torch.broadcast_shapes(value.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to x's shape "
                             f"{tuple(x.shape)}") from None
        return value.to(device=x.device, dtype=x.dtype)
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise TypeError(f"{name} must be None, a number or a tensor broadcastable to x, got {value!r}")
    return torch.tensor(float(value), device=x.device, dtype=x.dtype)


def _box(lo, hi, call: _Call):
    lo = call.flat_like("lo", lo, lambda v, xj: _bound("lo", v, xj))
    hi = call.flat_like("hi", hi, lambda v, xj: _bound("hi", v, xj))
    if lo is not None and hi is not None and bool((lo > hi).any()):
        raise ValueError("the valid input range [lo, hi] is empty somewhere: lo must be <= hi")
    return lo, hi


class _EvalMode:
    """Puts a module in eval() for the block and restores its previous mode (plain callables pass through)."""

    def __init__(self, model):
        self.model = model if isinstance(model, nn.Module) else None

    def __enter__(self):
        if self.model is not None:
            self.modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()

    def __exit__(self, *exc):
        if self.model is not None:
            for m, mode in self.modes:
                m.training = mode
        return False


# ----------------------------------------------------------------------------- gradient attributions

def _target_logits(call: _Call, x: torch.Tensor, target, rows=None) -> torch.Tensor:
    """f_t(x) for each row, shape (N,); checks the logits' shape and the target range.

    ``rows``: the example each row of x belongs to (for additional forward args), None if x is the batch.
    """
    return _select(call(x, rows), target)


def _prepare(model, x, target, additional_forward_args=None, floating: bool = True):
    """(call, flat x, targets) for a Captum-style call; see ``_Call``."""
    call = _Call(model, x, additional_forward_args, floating)
    return call, call.x, call.labels(target, "target")


def _baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """None (zeros), a number, or a tensor of shape ``(N, *F)``, ``(*F)`` or ``(1, *F)`` -> a tensor of x's shape."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, Real) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be None, a number or a tensor, got {type(baseline).__name__}")
    shape, feat = tuple(baseline.shape), tuple(x.shape[1:])
    if shape not in (tuple(x.shape), feat, (1, *feat)):
        raise ValueError(f"baseline of shape {shape} does not match x of shape {tuple(x.shape)}: expected "
                         f"{tuple(x.shape)} (one per input) or {feat} (one for all)")
    return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)

def _expand(target, k: int):
    """Targets of N examples -> of N * k rows (each example's k copies together), None stays None."""
    return None if target is None else target.repeat_interleave(k, dim=0)


def _rows(n: int, k: int, device) -> torch.Tensor:
    return torch.arange(n, device=device).repeat_interleave(k)
