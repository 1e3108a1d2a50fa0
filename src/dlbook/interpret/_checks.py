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
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"x must be a floating-point tensor of shape (N, ...) with a batch axis, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")


def _check_number(name: str, value, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {low}, got {value!r}")
    return float(value)


def _labels(y, x: torch.Tensor, name: str = "y") -> torch.Tensor:
    """An int or int64 (N,) tensor -> int64 (N,) on x's device (range checked later against the logits)."""
    n = x.shape[0]
    if isinstance(y, int) and not isinstance(y, bool):
        return torch.full((n,), y, dtype=torch.long, device=x.device)
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an integer tensor of shape (N,) = ({n},), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), one class per example, got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def _check_logits(logits, y: torch.Tensor, name: str = "y") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"model must return logits of shape (N, C) = ({y.shape[0]}, C), got "
                         f"{tuple(getattr(logits, 'shape', ()))}")
    c = logits.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(f"{name} must hold class ids in [0, {c}) for a model with {c} outputs, "
                         f"got {int(y.min())}..{int(y.max())}")


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


def _box(lo, hi, x: torch.Tensor):
    lo, hi = _bound("lo", lo, x), _bound("hi", hi, x)
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

def _target_logits(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """f_t(x) for each row, shape (N,); checks the logits' shape and the target range."""
    logits = model(x)
    _check_logits(logits, target, "target")
    return logits.gather(1, target[:, None])[:, 0]


def _prepare(model, x, target):
    _check_model(model)
    _check_input(x)
    return _labels(target, x, "target")


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
