"""Argument checks shared by the regularization modules: tensors, probabilities, ints, class ids, parameters."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


def _tensor(name: str, x, floating: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _probability(name: str, value, closed_right: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if closed_right else ')'}, got {value!r}")
    return float(value)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _class_ids(name: str, target, n: int, num_classes: int | None = None) -> torch.Tensor:
    _tensor(name, target, floating=False)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one class id per row, got {tuple(target.shape)}")
    if num_classes is not None and n and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"{name} must hold class ids in [0, {num_classes}), got {int(target.min())}..{int(target.max())}")
    return target.long()


def _params(params) -> list[torch.Tensor]:
    if isinstance(params, nn.Module):
        params = params.parameters()
    if isinstance(params, torch.Tensor):
        params = [params]
    if not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of tensors or an nn.Module, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the tensors to penalize, e.g. model.parameters()")
    for p in params:
        _tensor("every parameter", p)
    return params
