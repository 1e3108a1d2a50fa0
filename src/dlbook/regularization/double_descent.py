"""The random-features model of double descent (chapter 5, notebook 7): ``random_relu_features`` and
``ridge_regression``.
"""

from __future__ import annotations

import math

import torch

from dlbook.regularization._checks import _positive_int, _tensor

__all__ = [
    "random_relu_features", "ridge_regression",
]


def random_relu_features(x: torch.Tensor, num_features: int, seed: int = 0) -> torch.Tensor:
    """Random ReLU features: phi(x) = max(0, x W) with W (d, p) fixed, W_ij ~ N(0, 1/d).

    Only a linear read-out on phi is trained, so "model size" is just p, and least
    squares on phi is a convex problem with a closed-form solution. The same seed
    gives the same W, so train and test inputs share their features, and a larger
    p with the same seed adds columns only after drawing all of W.

    Args:
        x: (N, d) inputs. num_features: p >= 1. seed: seeds W.

    Returns:
        (N, p) features in x's dtype.
    """
    _tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
    p = _positive_int("num_features", num_features)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(x.shape[1], p, generator=g, dtype=torch.float64) / math.sqrt(x.shape[1])
    return torch.relu(x @ W.to(x.device, x.dtype))


def ridge_regression(features: torch.Tensor, targets: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Least-squares weights w = argmin ||Phi w - Y||^2 + ridge * ||w||^2; with ridge 0, the minimum-norm solution.

    ridge = 0: w = pinv(Phi) Y, the interpolating solution of smallest norm when
    p > n (what gradient descent from 0 converges to). ridge > 0:
    w = Phi^T (Phi Phi^T + ridge I)^{-1} Y, the same as (Phi^T Phi + ridge I)^{-1} Phi^T Y,
    solved in whichever of the two n x n or p x p forms is smaller. Computed in float64.

    Args:
        features: Phi (n, p). targets: Y (n,) or (n, K). ridge: >= 0.

    Returns:
        w of shape (p,) or (p, K), float64.
    """
    _tensor("features", features)
    _tensor("targets", targets)
    if features.dim() != 2 or targets.dim() not in (1, 2) or len(targets) != len(features):
        raise ValueError(f"features must be (n, p) and targets (n,) or (n, K) with the same n, "
                         f"got {tuple(features.shape)} and {tuple(targets.shape)}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    Phi, Y = features.double(), targets.double()
    n, p = Phi.shape
    if ridge == 0:
        return torch.linalg.pinv(Phi) @ Y
    if p > n:
        return Phi.T @ torch.linalg.solve(Phi @ Phi.T + ridge * torch.eye(n, dtype=Phi.dtype, device=Phi.device), Y)
    return torch.linalg.solve(Phi.T @ Phi + ridge * torch.eye(p, dtype=Phi.dtype, device=Phi.device), Phi.T @ Y)
