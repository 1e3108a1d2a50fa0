"""Adversarial examples within an L-infinity ball (chapter 7, notebook 6; chapter 8 trains against them).

On the cross-entropy loss L(x, y) of the *true* label y, with the model in ``eval()``: ``fgsm``
(one step, x + eps sign(grad_x L)) and ``pgd`` (random start, repeated signed steps, each
followed by a projection onto the ball of radius eps around x and onto the valid input range
[lo, hi]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlbook._checks import check_int as _check_int
from dlbook.interpret._checks import _box, _check_input, _check_logits, _check_model, _check_number, _EvalMode, _labels

__all__ = [
    "fgsm", "pgd",
]


def _loss_grad(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of sum_i CE(f(x_i), y_i), shape of x; the model is already in eval mode."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        _check_logits(logits, y)
        loss = F.cross_entropy(logits, y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, lo, hi) -> torch.Tensor:
    """Clamp onto the eps-ball around x, then onto [lo, hi] (their intersection when x lies in [lo, hi])."""
    x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
    if lo is not None:
        x_adv = torch.max(x_adv, lo)
    if hi is not None:
        x_adv = torch.min(x_adv, hi)
    return x_adv


def fgsm(model, x: torch.Tensor, y, eps: float, *, lo=None, hi=None) -> torch.Tensor:
    """The fast gradient sign method: one signed gradient step of size eps that raises the loss.

    .. math::

        x' = \\operatorname{clip}_{[lo, hi]}\\big(x + \\epsilon\\, \\operatorname{sign}(\\nabla_x L(f(x), y))\\big),

    with L the cross-entropy of the true label y. Of all perturbations with
    ||delta||_inf <= eps, the signed gradient maximizes the *linearized* loss
    L(x) + delta . grad L(x). Coordinates with a zero gradient stay where they are.

    The model is put in ``eval()`` for the attack (dropout off, batch-norm running
    statistics) and its mode restored afterwards; parameter gradients are untouched.

    Args:
        model: maps x (N, ...) to logits (N, C).
        x: inputs, floating point, shape (N, ...).
        y: true labels, int64 of shape (N,) (or one int for all).
        eps: the L-infinity radius, >= 0.
        lo, hi: the valid input range (numbers, or tensors broadcastable to x, e.g. the
            per-pixel range of standardized images); ``None`` leaves that side open.

    Returns:
        The adversarial inputs, detached, of the shape, dtype and device of x.

    Raises:
        ValueError: eps < 0, labels of the wrong shape or out of [0, C), lo > hi.
        TypeError: x not a floating-point tensor with a batch axis, y not integer.
    """
    _check_model(model)
    _check_input(x)
    eps = _check_number("eps", eps)
    y = _labels(y, x)
    lo, hi = _box(lo, hi, x)
    with _EvalMode(model):
        grad = _loss_grad(model, x, y)
    return _project(x.detach() + eps * grad.sign(), x.detach(), eps, lo, hi)


def pgd(model, x: torch.Tensor, y, eps: float, alpha: float | None = None, steps: int = 10,
        generator: torch.Generator | None = None, *, random_start: bool = True, lo=None, hi=None) -> torch.Tensor:
    """Projected gradient descent on the loss (an L-infinity attack, Madry et al. 2018).

    .. math::

        x^{0} = \\Pi(x + u),\\ u \\sim U[-\\epsilon, \\epsilon]^d, \\qquad
        x^{k+1} = \\Pi\\big(x^{k} + \\alpha\\, \\operatorname{sign}(\\nabla_x L(f(x^{k}), y))\\big),

    where Pi clamps each coordinate onto [x - eps, x + eps] and then onto [lo, hi]
    (the projection onto the intersection of the ball and the box when x lies in
    the box). With ``steps=1``, ``alpha=eps`` and ``random_start=False`` this is
    exactly ``fgsm``. The last iterate is returned (not the one with the highest loss).

    The model is put in ``eval()`` for the attack and its mode restored afterwards.

    Args:
        model: maps x (N, ...) to logits (N, C).
        x: inputs, floating point, shape (N, ...).
        y: true labels, int64 of shape (N,) (or one int for all).
        eps: the L-infinity radius, >= 0.
        alpha: the step size, > 0; default 2.5 * eps / steps (enough to cross the
            ball from any start).
        steps: number of gradient steps, >= 1.
        generator: a ``torch.Generator`` for the random start (on any device);
            ``None`` uses torch's global generator.
        random_start: start from a uniform point in the ball (True) or at x.
        lo, hi: the valid input range, as in ``fgsm``.

    Returns:
        The adversarial inputs, detached, of the shape, dtype and device of x, with
        ||x' - x||_inf <= eps and lo <= x' <= hi.

    Raises:
        ValueError: eps < 0, alpha <= 0, steps < 1, bad labels, lo > hi.
        TypeError: x not a floating-point tensor, y not integer, generator of the wrong type.
    """
    _check_model(model)
    _check_input(x)
    eps = _check_number("eps", eps)
    steps = _check_int("steps", steps)
    alpha = 2.5 * eps / steps if alpha is None else _check_number("alpha", alpha, strict=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    y = _labels(y, x)
    lo, hi = _box(lo, hi, x)
    x0 = x.detach()
    x_adv = x0
    if random_start and eps > 0:
        gen_device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
        x_adv = _project(x0 + (2 * u - 1) * eps, x0, eps, lo, hi)
    with _EvalMode(model):
        for _ in range(steps):
            grad = _loss_grad(model, x_adv, y)
            x_adv = _project(x_adv + alpha * grad.sign(), x0, eps, lo, hi)
    return x_adv
