"""The Laplace and Gaussian mechanisms: noise calibrated to a query's sensitivity.

``laplace_mechanism`` adds Laplace(sensitivity / epsilon) noise ((epsilon, 0)-DP);
``gaussian_sigma`` gives the noise scale of the Gaussian mechanism for (epsilon, delta)-DP, by the
classic bound or the analytic one (Balle and Wang 2018), and ``gaussian_mechanism`` adds it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dlbook.privacy._checks import _check_delta, _check_positive

__all__ = [
    "laplace_mechanism", "gaussian_sigma", "gaussian_mechanism",
]


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.double()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating, list, tuple, np.ndarray)):
        raise TypeError(f"value must be a number or a tensor, got {type(value).__name__}")
    return torch.as_tensor(value, dtype=torch.float64)


def laplace_mechanism(value, sensitivity: float, epsilon: float, generator: torch.Generator | None = None):
    """Release ``value + Laplace(0, b)`` with b = L1 sensitivity / epsilon: epsilon-DP (delta = 0).

    Args:
        value: a number or tensor (the exact answer f(D)). sensitivity: max over neighbours of
            ||f(D) - f(D')||_1 (> 0). epsilon: > 0. generator: optional, for reproducible noise.

    Returns:
        A float64 tensor (or a tensor of the input's float dtype) of the value's shape.
    """
    value = _as_tensor(value)
    b = _check_positive("sensitivity", sensitivity) / _check_positive("epsilon", epsilon)
    u = torch.rand(value.shape, generator=generator, dtype=value.dtype, device=value.device) - 0.5
    return value - b * torch.sign(u) * torch.log1p(-2 * u.abs())


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float, analytic: bool = False) -> float:
    """The noise std of the Gaussian mechanism for (epsilon, delta)-DP with L2 sensitivity Delta.

    Classic (Dwork and Roth, Theorem A.1): :math:`\\sigma = \\Delta\\sqrt{2\\ln(1.25/\\delta)}/\\varepsilon`,
    proved only for epsilon < 1 (it raises otherwise). ``analytic=True`` gives the smallest sigma
    that is exactly enough for any epsilon (Balle and Wang 2018): the sigma where
    :math:`\\Phi(\\tfrac{\\Delta}{2\\sigma} - \\tfrac{\\varepsilon\\sigma}{\\Delta})
    - e^\\varepsilon\\Phi(-\\tfrac{\\Delta}{2\\sigma} - \\tfrac{\\varepsilon\\sigma}{\\Delta}) = \\delta`,
    found by bisection.
    """
    sens = _check_positive("sensitivity", sensitivity)
    eps = _check_positive("epsilon", epsilon)
    delta = _check_delta(delta)
    if not analytic:
        if eps >= 1:
            raise ValueError(f"the classic Gaussian-mechanism sigma is only proved for epsilon < 1, got {eps}; "
                             "use analytic=True")
        return sens * math.sqrt(2 * math.log(1.25 / delta)) / eps

    def dlt(s):
        return _phi(sens / (2 * s) - eps * s / sens) - math.exp(eps) * _phi(-sens / (2 * s) - eps * s / sens)

    lo, hi = 1e-6 * sens, sens
    while dlt(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if dlt(mid) > delta else (lo, mid)
        if hi / lo < 1 + 1e-12:
            break
    return hi


def gaussian_mechanism(value, sensitivity: float, epsilon: float, delta: float,
                       generator: torch.Generator | None = None, analytic: bool = False):
    """Release ``value + N(0, sigma^2)`` with sigma from ``gaussian_sigma`` (L2 sensitivity)."""
    value = _as_tensor(value)
    sigma = gaussian_sigma(sensitivity, epsilon, delta, analytic)
    return value + sigma * torch.randn(value.shape, generator=generator, dtype=value.dtype, device=value.device)
