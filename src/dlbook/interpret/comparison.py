"""Comparing attribution maps: ``rank_correlation`` (Spearman), for the sanity checks of chapter 7, notebook 4."""

from __future__ import annotations

import torch

__all__ = [
    "rank_correlation",
]


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..d of each row of v (M, d), ties given the mean of their ranks (scipy's 'average')."""
    m, d = v.shape
    order = v.argsort(dim=1, stable=True)
    s = v.gather(1, order)
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    group = (new.cumsum(1) - 1) + torch.arange(m, device=v.device)[:, None] * d                  # (M, d) ids
    pos = torch.arange(1, d + 1, device=v.device, dtype=torch.float64).expand(m, d)
    total = torch.zeros(m * d, device=v.device, dtype=torch.float64).scatter_add_(0, group.flatten(), pos.flatten())
    count = torch.zeros(m * d, device=v.device, dtype=torch.float64).scatter_add_(
        0, group.flatten(), torch.ones_like(pos).flatten())
    mean_rank = (total / count.clamp_min(1))[group]                                              # (M, d)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation between two maps, per example.

    .. math::  \\rho(a, b) = \\operatorname{corr}\\big(\\operatorname{rank}(a), \\operatorname{rank}(b)\\big)

    the Pearson correlation of the ranks (ties get their mean rank). It is 1 when
    the two maps order the features the same way, whatever their scales, which is
    what the sanity checks of Adebayo et al. (2018) compare. A constant map gives nan.

    Args:
        a, b: tensors of the same shape: (d,) for one pair of maps, or ``(N, *F)`` for N
            pairs (each row flattened).

    Returns:
        A float64 scalar for 1-D inputs, else shape (N,).

    Raises:
        ValueError: shapes differ, or fewer than two values per map.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape or a.dim() == 0:
        raise ValueError(f"a and b must have the same shape, (d,) or (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    single = a.dim() == 1
    a2, b2 = (a[None], b[None]) if single else (a.flatten(1), b.flatten(1))
    if a2.shape[1] < 2:
        raise ValueError("each map needs at least two values to be ranked")
    ra, rb = _average_ranks(a2.detach()), _average_ranks(b2.detach().to(a2.device))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))
    return rho[0] if single else rho
