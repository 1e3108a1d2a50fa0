"""Mixup (chapter 5, notebook 6): convex combinations of examples and of their targets."""

from __future__ import annotations

import math

import numpy as np
import torch

from dlbook.regularization._checks import _tensor
from dlbook.regularization.smoothing import smoothed_targets

__all__ = [
    "mixup",
]


def _beta_sample(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta distribution takes no generator; draw a seed from the generator (or the global
    # torch RNG) and sample with NumPy, so that results are reproducible either way.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup: train on convex combinations of pairs of examples and of their targets.

    One lam ~ Beta(alpha, alpha) per batch and a random pairing pi (a permutation)::

        x_mix = lam * x + (1 - lam) * x[pi]
        y_mix = lam * onehot(y) + (1 - lam) * onehot(y[pi])

    Train with a loss that takes probability targets, e.g.
    :func:`~dlbook.regularization.smoothing.smoothed_cross_entropy` or ``F.cross_entropy``.
    Small alpha puts lam near 0 or 1 (little mixing); alpha = 1 makes it uniform.

    Args:
        x: inputs (N, ...), floating point. y: class ids (N,) or probability rows (N, K).
        alpha: > 0. num_classes: K.
        generator: optional CPU ``torch.Generator`` for lam and the pairing.

    Returns:
        (x_mix of x's shape, y_mix of shape (N, K) in x's dtype).
    """
    _tensor("x", x)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or math.isinf(alpha):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    if x.dim() < 1 or len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    q = smoothed_targets(y, num_classes, 0.0, dtype=x.dtype)
    lam = _beta_sample(float(alpha), generator)
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * q + (1 - lam) * q[perm]
