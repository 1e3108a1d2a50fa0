"""Argument checks shared by the pretraining modules: probabilities and integer id tensors."""

from __future__ import annotations

import torch


def _check_p(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {p!r}")
    return float(p)


def _check_long(name: str, ids, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() not in dims:
        shape = tuple(getattr(ids, "shape", ()))
        raise TypeError(f"{name} must be an integer tensor of token ids with {' or '.join(map(str, dims))} "
                        f"dimension(s), got {getattr(ids, 'dtype', type(ids).__name__)} of shape {shape}")
    return ids
