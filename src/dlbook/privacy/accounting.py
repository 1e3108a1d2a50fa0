"""Privacy accounting: the Renyi DP of the sampled Gaussian mechanism and its conversion to (epsilon, delta).

One DP-SGD step with sampling rate q and noise multiplier sigma is the subsampled Gaussian
mechanism; its Renyi divergence of order alpha is computed exactly for integer orders and with
a convergent series for fractional ones (Mironov, Talwar and Zhang 2019). T steps compose by
adding the RDP, and ``rdp_to_epsilon`` converts to (epsilon, delta)-DP at the best order:
``rdp_sampled_gaussian``, ``rdp_to_epsilon``, ``epsilon`` and ``noise_for_epsilon`` (its inverse
by bisection). ``tests/test_privacy.py`` checks them against Opacus's ``RDPAccountant``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from dlbook.privacy._checks import _check_delta, _check_int, _check_positive, _check_rate

__all__ = [
    "DEFAULT_ORDERS", "rdp_sampled_gaussian", "rdp_to_epsilon", "epsilon", "noise_for_epsilon",
]


DEFAULT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
"""The Renyi orders alpha searched by default (1.1, 1.2, ..., 10.9 and 12, ..., 63)."""


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b) for a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    from scipy.special import log_ndtr
    return math.log(2.0) + float(log_ndtr(-x * math.sqrt(2.0)))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    # A_alpha = sum_k C(alpha, k) q^k (1-q)^(alpha-k) exp((k^2 - k) / (2 sigma^2))
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
             + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma ** 2)
             for k in range(alpha + 1)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # Mironov, Talwar, Zhang (2019), section 3.3: A = A0 + A1, each an alternating series split at
    # z0 = sigma^2 log(1/q - 1) + 1/2, summed in log space until its terms are negligible.
    from scipy.special import binom
    log_a0 = log_a1 = -math.inf
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = float(binom(alpha, i))
        log_coef = math.log(abs(coef))
        j = alpha - i
        s0 = (log_coef + i * math.log(q) + j * math.log1p(-q) + (i * i - i) / (2 * sigma ** 2)
              + math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma)))
        s1 = (log_coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) / (2 * sigma ** 2)
              + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, s0), _log_add(log_a1, s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, s0), _log_sub(log_a1, s1)
        i += 1
        if max(s0, s1) < -30:
            break
    return _log_add(log_a0, log_a1)


def _check_orders(orders) -> np.ndarray:
    orders = np.atleast_1d(np.asarray(orders, dtype=float))
    if orders.ndim != 1 or len(orders) == 0 or not np.all(orders > 1) or not np.all(np.isfinite(orders)):
        raise ValueError(f"orders must be a non-empty list of Renyi orders alpha > 1, got {orders!r}")
    return orders


def rdp_sampled_gaussian(q: float, noise_multiplier: float, orders=DEFAULT_ORDERS) -> np.ndarray:
    """Renyi DP of one step of the sampled Gaussian mechanism, at each order alpha.

    With sampling rate q and noise multiplier sigma (sensitivity 1), the RDP at order alpha is
    :math:`\\frac{1}{\\alpha-1}\\log A_\\alpha` with
    :math:`A_\\alpha = \\mathbb E_{z\\sim\\mu_0}[(\\mu(z)/\\mu_0(z))^\\alpha]`,
    :math:`\\mu = (1-q)\\mu_0 + q\\mu_1`, :math:`\\mu_0 = \\mathcal N(0,\\sigma^2)`,
    :math:`\\mu_1 = \\mathcal N(1,\\sigma^2)` (Mironov et al. 2019): a binomial sum for integer
    alpha, a convergent series otherwise. For q = 1 it is the Gaussian's alpha / (2 sigma^2).
    RDP composes additively: T steps cost T times this.

    Args:
        q: sample rate in (0, 1]. noise_multiplier: sigma > 0. orders: alphas > 1.

    Returns:
        float64 array of the same length as ``orders``.
    """
    q = _check_rate(q)
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    orders = _check_orders(orders)
    return np.array(_rdp_cached(q, sigma, tuple(float(a) for a in orders)))


@functools.lru_cache(maxsize=4096)
def _rdp_cached(q: float, sigma: float, orders: tuple) -> tuple:
    out = []
    for alpha in orders:
        if q == 1.0:
            out.append(alpha / (2 * sigma ** 2))
        elif float(alpha).is_integer():
            out.append(_log_a_int(q, sigma, int(alpha)) / (alpha - 1))
        else:
            out.append(_log_a_frac(q, sigma, float(alpha)) / (alpha - 1))
    return tuple(out)


def rdp_to_epsilon(rdp, orders, delta: float) -> float:
    """Convert RDP values (already summed over steps) to the smallest (epsilon, delta) guarantee.

    Uses the conversion of Balle et al. (2020):
    :math:`\\varepsilon = \\min_\\alpha \\big[\\mathrm{RDP}(\\alpha) + \\log\\tfrac{\\alpha-1}{\\alpha}
    - \\tfrac{\\log\\delta + \\log\\alpha}{\\alpha-1}\\big]`, which is tighter than the classic
    :math:`\\mathrm{RDP}(\\alpha) + \\log(1/\\delta)/(\\alpha-1)`.

    Args:
        rdp: array of RDP values, one per order. orders: the alphas (> 1). delta: in (0, 1).

    Returns:
        epsilon >= 0 (a float; ``inf`` if every order gives infinity).
    """
    delta = _check_delta(delta)
    orders = _check_orders(orders)
    rdp = np.atleast_1d(np.asarray(rdp, dtype=float))
    if rdp.shape != orders.shape:
        raise ValueError(f"rdp and orders must have the same length, got {rdp.shape} and {orders.shape}")
    eps = rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return float(max(0.0, eps.min()))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            orders=DEFAULT_ORDERS) -> float:
    """Epsilon spent by ``steps`` DP-SGD steps with Poisson rate q and noise multiplier sigma.

    ``rdp_to_epsilon(steps * rdp_sampled_gaussian(q, sigma, orders), orders, delta)``.
    """
    steps = _check_int("steps", steps, 1)
    orders = _check_orders(orders)
    return rdp_to_epsilon(steps * rdp_sampled_gaussian(sample_rate, noise_multiplier, orders), orders, delta)


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      orders=DEFAULT_ORDERS, tol: float = 1e-3) -> float:
    """The smallest noise multiplier sigma (to ``tol`` relative) whose ``epsilon`` is at most the target.

    Epsilon falls as sigma grows, so a bisection on log sigma finds it.

    Returns:
        sigma > 0 with ``epsilon(sigma, ...) <= target_epsilon``.
    """
    target = _check_positive("target_epsilon", target_epsilon)
    lo, hi = 1e-2, 1.0
    while epsilon(hi, sample_rate, steps, delta, orders) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target}")
    if epsilon(lo, sample_rate, steps, delta, orders) <= target:
        return lo
    while hi / lo > 1 + tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if epsilon(mid, sample_rate, steps, delta, orders) > target else (lo, mid)
    return hi
