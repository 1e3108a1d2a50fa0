"""Gradient attributions of a classifier's logit f_t (chapter 7, notebook 2).

``saliency`` (grad f_t), ``input_x_gradient`` (x * grad f_t), ``smoothgrad`` (the average over
Gaussian-noised copies of x) and ``integrated_gradients`` (the path integral from a baseline,
whose attributions sum to f_t(x) - f_t(baseline) up to the quadrature error, with the rules of
``ig_weights``). Each gradient is taken with respect to the input only, with the model in
``eval()`` (its mode is restored afterwards).
"""

from __future__ import annotations

import torch

from dlbook._checks import check_int as _check_int
from dlbook.interpret._checks import _baseline, _check_number, _EvalMode, _prepare, _target_logits

__all__ = [
    "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "ig_weights", "IG_METHODS",
]


def _target_grad(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """grad_x f_t(x) row by row (the rows are independent, so the gradient of the sum), shape of x."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(_target_logits(model, x, target).sum(), x)[0]


def saliency(model, x: torch.Tensor, target, *, absolute: bool = False) -> torch.Tensor:
    """Vanilla gradient saliency: the gradient of the target logit with respect to the input.

    .. math::  S(x) = \\nabla_x f_t(x)

    It says how the logit would move under an infinitesimal change of each input
    feature: a local sensitivity, not a share of the output.

    Args:
        model: maps x ``(N, *F)`` to logits (N, C); run in ``eval()``, mode restored.
        x: inputs ``(N, *F)``, floating point.
        target: the explained class, an int or int64 of shape (N,).
        absolute: return ``|grad|`` (Simonyan et al.'s map, and Captum ``Saliency``'s default).

    Returns:
        Attributions of shape ``(N, *F)``.

    Raises:
        ValueError: a target out of [0, C) or of the wrong shape. TypeError: a non-float x.
    """
    target = _prepare(model, x, target)
    with _EvalMode(model):
        grad = _target_grad(model, x, target)
    return grad.abs() if absolute else grad


def input_x_gradient(model, x: torch.Tensor, target) -> torch.Tensor:
    """Gradient times input: x * grad_x f_t(x), shape ``(N, *F)``.

    For a linear logit f_t(x) = w . x + b this is w_i x_i, each feature's exact share
    of f_t(x) - f_t(0); for a nonlinear model it is the first-order version of that.
    Arguments and errors as in ``saliency``.
    """
    target = _prepare(model, x, target)
    with _EvalMode(model):
        return x.detach() * _target_grad(model, x, target)


def smoothgrad(model, x: torch.Tensor, target, n_samples: int = 50, sigma: float = 0.15,
               generator: torch.Generator | None = None, *, base=None) -> torch.Tensor:
    """SmoothGrad: an attribution averaged over noisy copies of the input (Smilkov et al. 2017).

    .. math::  \\hat S(x) = \\frac1n \\sum_{k=1}^{n} S(x + \\epsilon_k), \\qquad \\epsilon_k \\sim N(0, \\sigma^2 I)

    Gradients of ReLU networks jump from point to point; averaging over a small
    neighbourhood removes much of that noise. The noise is drawn as
    ``torch.randn(``(N, n_samples, *F)``, generator=generator) * sigma`` (on the
    generator's device) and the noisy copies are evaluated in one batch of N * n_samples.

    Args:
        model, x, target: as in ``saliency``.
        n_samples: noisy copies per input, >= 1.
        sigma: the noise standard deviation, in the units of x (Smilkov et al.
            suggest 10-20 % of the input range max(x) - min(x)), >= 0.
        generator: a ``torch.Generator`` for the noise, or None for torch's global one.
        base: the attribution to smooth, a function (model, x, target) -> ``(N, *F)``;
            default ``saliency`` (the signed gradient).

    Returns:
        Attributions of shape ``(N, *F)``.
    """
    target = _prepare(model, x, target)
    n_samples = _check_int("n_samples", n_samples)
    sigma = _check_number("sigma", sigma)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    base = saliency if base is None else base
    if not callable(base):
        raise TypeError(f"base must be an attribution function (model, x, target) -> (N, *F), got {base!r}")
    n, feat = x.shape[0], tuple(x.shape[1:])
    device = generator.device if generator is not None else x.device
    noise = torch.randn((n, n_samples, *feat), generator=generator, device=device, dtype=x.dtype).to(x.device)
    noisy = (x.detach()[:, None] + sigma * noise).reshape(n * n_samples, *feat)
    attr = base(model, noisy, target.repeat_interleave(n_samples))
    return attr.reshape(n, n_samples, *feat).mean(dim=1)


#: The integration rules :func:`integrated_gradients` and :func:`ig_weights` accept (Captum's names).
IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def ig_weights(steps: int, method: str = "riemann_trapezoid") -> tuple[torch.Tensor, torch.Tensor]:
    """The points alpha_k in [0, 1] and weights w_k of a quadrature rule for int_0^1 g(alpha) d alpha.

    * ``riemann_left/right/middle``: alpha_k = k/n, (k+1)/n, (k+1/2)/n, w_k = 1/n.
    * ``riemann_trapezoid``: alpha_k = k/(n-1) for k = 0..n-1, w_k = 1/(n-1) with the two
      end weights halved (they sum to 1). This is the textbook rule; Captum's version
      keeps the points but uses 1/n (its weights sum to 1 - 1/n), so Captum's
      attributions are (n - 1)/n times these.
    * ``gausslegendre``: Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1].

    Returns:
        (alphas, weights), float64 tensors of shape (steps,).

    Raises:
        ValueError: steps < 1 (< 2 for the trapezoid), an unknown method.
    """
    steps = _check_int("steps", steps, 2 if method == "riemann_trapezoid" else 1)
    n = steps
    k = torch.arange(n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        alphas, weights = k / (n - 1), torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return alphas, weights
    if method in ("riemann_left", "riemann_right", "riemann_middle"):
        shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        return (k + shift) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "gausslegendre":
        import numpy as np
        nodes, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * w)
    raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")


def integrated_gradients(model, x: torch.Tensor, target, baseline=None, steps: int = 50,
                         method: str = "riemann_trapezoid", *, return_error: bool = False,
                         batch_size: int | None = None):
    """Integrated gradients (Sundararajan et al. 2017) from a baseline x' to x.

    .. math::

        IG_i(x) = (x_i - x'_i) \\int_0^1 \\frac{\\partial f_t}{\\partial x_i}\\big(x' + \\alpha (x - x')\\big)\\, d\\alpha
        \\approx (x_i - x'_i) \\sum_k w_k\\, \\partial_i f_t\\big(x' + \\alpha_k (x - x')\\big)

    with the points and weights of ``ig_weights(steps, method)``. Completeness: the
    exact integral satisfies sum_i IG_i = f_t(x) - f_t(x') (the gradient theorem), so
    the *completeness error* sum_i IG_i - (f_t(x) - f_t(x')) measures the quadrature error.

    Args:
        model, x, target: as in ``saliency`` (x of shape ``(N, *F)``).
        baseline: the reference input x': None (zeros), a number, or a tensor of shape
            ``(N, *F)`` or ``(*F)``. A good baseline scores near zero (for the target class).
        steps: quadrature points, >= 1 (>= 2 for the trapezoid).
        method: one of ``IG_METHODS``. Captum's default is ``"gausslegendre"``.
        return_error: also return the completeness error, shape (N,).
        batch_size: how many of the N * steps path points go through the model at once
            (default: all).

    Returns:
        Attributions ``(N, *F)``, or (attributions, error) with ``return_error``.

    Raises:
        ValueError: steps < 1, an unknown method, a target out of range, a baseline
            whose shape does not match x.
    """
    target = _prepare(model, x, target)
    alphas, weights = ig_weights(steps, method)
    x0 = x.detach()
    base = _baseline(baseline, x0)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size)
    n, feat, steps = x.shape[0], tuple(x.shape[1:]), len(alphas)
    a = alphas.to(device=x.device, dtype=x.dtype).view(1, steps, *[1] * len(feat))
    w = weights.to(device=x.device, dtype=x.dtype).view(1, steps, *[1] * len(feat))
    path = (base[:, None] + a * (x0 - base)[:, None]).reshape(n * steps, *feat)       # (N * steps, *F)
    tgt = target.repeat_interleave(steps)
    chunk = batch_size or n * steps
    with _EvalMode(model):
        grads = torch.cat([_target_grad(model, path[i:i + chunk], tgt[i:i + chunk])
                           for i in range(0, n * steps, chunk)])
        attr = (x0 - base) * (w * grads.reshape(n, steps, *feat)).sum(dim=1)
        if not return_error:
            return attr
        with torch.no_grad():
            gap = _target_logits(model, x0, target) - _target_logits(model, base, target)
    return attr, attr.flatten(1).sum(1) - gap
