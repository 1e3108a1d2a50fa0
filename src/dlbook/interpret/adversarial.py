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
from dlbook.interpret._checks import _box, _Call, _check_logits, _check_number, _EvalMode

__all__ = [
    "fgsm", "pgd",
]


#: In ``fgsm`` and ``pgd`` a gradient coordinate of example i counts as zero when
#: ``|g| <= ZERO_GRAD_EPS * eps(dtype) * ||dL_i/dz_i||_1``, with z_i the model's outputs.
ZERO_GRAD_EPS = 8


def _loss_grad(call: _Call, x: torch.Tensor, y, loss_fn=None, zero_threshold=None) -> torch.Tensor:
    """grad_x of sum_i L(f(x_i), y_i), shape of x (L: CE, or ``loss_fn``), with the coordinates that are
    zero up to rounding set to exactly 0 (see ``fgsm``); the model is already in eval mode."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = call(x)
        if loss_fn is None:
            if y is None:
                raise TypeError("y must give the true labels for the cross-entropy (or pass loss_fn)")
            _check_logits(logits, y)
            loss = F.cross_entropy(logits, y, reduction="sum")
        else:
            loss = loss_fn(logits, y)
            if not isinstance(loss, torch.Tensor) or loss.dim() > 1:
                raise ValueError(f"loss_fn must return a scalar or one loss per example (N,), got "
                                 f"{tuple(getattr(loss, 'shape', ()))}")
            loss = loss.sum()
        if zero_threshold is not None:
            grad = torch.autograd.grad(loss, x)[0]
            return grad.masked_fill(grad.abs() <= _check_number("zero_threshold", zero_threshold), 0.0)
        grad, upstream = torch.autograd.grad(loss, (x, logits))
        # The backward pass multiplies dL/dz by the model's Jacobian, so where the exact input
        # gradient is zero what is left is a few rounding errors of the size of ||dL/dz||_1.
        scale = upstream.detach().abs().reshape(len(upstream), -1).sum(1).view(-1, *[1] * (x.dim() - 1))
        tol = ZERO_GRAD_EPS * torch.finfo(grad.dtype).eps * scale
        return grad.masked_fill(grad.abs() <= tol, 0.0)



def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, lo, hi) -> torch.Tensor:
    """Clamp onto the eps-ball around x, then onto [lo, hi] (their intersection when x lies in [lo, hi])."""
    x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
    if lo is not None:
        x_adv = torch.max(x_adv, lo)
    if hi is not None:
        x_adv = torch.min(x_adv, hi)
    return x_adv


def fgsm(model, x: torch.Tensor, y, eps: float, *, lo=None, hi=None, loss_fn=None,
         additional_forward_args=None, zero_threshold: float | None = None) -> torch.Tensor:
    """The fast gradient sign method: one signed gradient step of size eps that raises the loss.

    .. math::

        x' = \\operatorname{clip}_{[lo, hi]}\\big(x + \\epsilon\\, \\operatorname{sign}(\\nabla_x L(f(x), y))\\big),

    with L the cross-entropy of the true label y. Of all perturbations with
    ||delta||_inf <= eps, the signed gradient maximizes the *linearized* loss
    L(x) + delta . grad L(x). Coordinates with a zero gradient stay where they are. In
    floating point a gradient that is zero exactly is left a rounding residue (1.8e-7 in
    float32 on Captum's ``test_attack_loss_defined``), of the size of machine epsilon times
    the gradient flowing back from the outputs, ||dL_i/dz_i||_1; so for example i a
    coordinate with ``|g| <= ZERO_GRAD_EPS (8) * eps(dtype) * ||dL_i/dz_i||_1`` counts as zero
    (9.5e-7 for an O(1) output gradient in float32). Captum uses a fixed 1e-6 instead; a
    threshold that scales with dL/dz does not freeze a confidently classified example,
    whose whole gradient is tiny but real (pass ``zero_threshold=1e-6`` for Captum's rule).

    The model is put in ``eval()`` for the attack (dropout off, batch-norm running
    statistics) and its mode restored afterwards; parameter gradients are untouched.

    Args:
        model: maps x (N, ...) to logits (N, C).
        x: inputs, floating point, shape (N, ...).
        y: true labels, int64 of shape (N,) (or one int for all).
        eps: the L-infinity radius, >= 0.
        lo, hi: the valid input range (numbers, or tensors broadcastable to x, e.g. the
            per-pixel range of standardized images); ``None`` leaves that side open.
        loss_fn: ``loss_fn(outputs, y)`` -> a scalar or (N,) losses to raise instead of the
            cross-entropy (y is then passed through as given); e.g. minus the CE of a
            target class for a targeted attack, or Captum's default, the target's output.
        additional_forward_args: Captum's: passed to the model after x, not perturbed.
        zero_threshold: an absolute threshold to use instead: a ``|g|`` at or below it counts as zero.

    x may also be a tuple of tensors with one batch axis (the model takes them as
    positional arguments, as in Captum); each is perturbed and a tuple is returned.
    Tensor bounds lo/hi then go per input, as a tuple.

    Returns:
        The adversarial inputs, detached, of the shape, dtype and device of x.

    Raises:
        ValueError: eps < 0, labels of the wrong shape or out of [0, C), lo > hi.
        TypeError: x not a floating-point tensor with a batch axis, y not integer.
    """
    call = _Call(model, x, additional_forward_args)
    eps = _check_number("eps", eps)
    y = call.labels(y) if loss_fn is None else y
    lo, hi = _box(lo, hi, call)
    x0 = call.x
    with _EvalMode(model):
        grad = _loss_grad(call, x0, y, loss_fn, zero_threshold)
    return call.out(_project(x0 + eps * grad.sign(), x0, eps, lo, hi))


def pgd(model, x: torch.Tensor, y, eps: float, alpha: float | None = None, steps: int = 10,
        generator: torch.Generator | None = None, *, random_start: bool = True, lo=None, hi=None,
        loss_fn=None, additional_forward_args=None, zero_threshold: float | None = None) -> torch.Tensor:
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
        loss_fn, additional_forward_args, zero_threshold: as in ``fgsm`` (tuple x too).
            Only the L-infinity ball is offered (Captum's PGD also has an L2 one).

    Returns:
        The adversarial inputs, detached, of the shape, dtype and device of x, with
        ||x' - x||_inf <= eps and lo <= x' <= hi.

    Raises:
        ValueError: eps < 0, alpha <= 0, steps < 1, bad labels, lo > hi.
        TypeError: x not a floating-point tensor, y not integer, generator of the wrong type.
    """
    call = _Call(model, x, additional_forward_args)
    eps = _check_number("eps", eps)
    steps = _check_int("steps", steps)
    alpha = 2.5 * eps / steps if alpha is None else _check_number("alpha", alpha, strict=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    y = call.labels(y) if loss_fn is None else y
    lo, hi = _box(lo, hi, call)
    x0 = call.x
    x_adv = x0
    if random_start and eps > 0:
        gen_device = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
        x_adv = _project(x0 + (2 * u - 1) * eps, x0, eps, lo, hi)
    with _EvalMode(model):
        for _ in range(steps):
            grad = _loss_grad(call, x_adv, y, loss_fn, zero_threshold)
            x_adv = _project(x_adv + alpha * grad.sign(), x0, eps, lo, hi)
    return call.out(x_adv)
