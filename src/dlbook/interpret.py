"""Interpretability: attributions, perturbations, probes and adversarial examples.

Notation: a classifier ``model`` maps a batch ``x`` of shape (N, *F) (any feature
shape F, e.g. (64,) or (1, 8, 8)) to logits f(x) of shape (N, C). ``target`` names
one class per example (an int, or int64 of shape (N,)); f_t(x) is its logit.

* Adversarial examples within an L-infinity ball of radius eps around x, on the
  cross-entropy loss L(x, y) of the *true* label y, with the model in ``eval()``:
  ``fgsm`` (one step, x + eps sign(grad_x L)) and ``pgd`` (random start, repeated
  signed steps, each followed by a projection onto the ball and onto the valid
  input range [lo, hi]). Chapter 8 builds adversarial training on these two.

Every gradient here is taken with ``torch.autograd.grad`` with respect to the input
only: the model's parameters get no ``.grad``, and the model's train/eval mode is
restored afterwards, so the functions can be called inside a training loop.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fgsm", "pgd"]


# ----------------------------------------------------------------------------- argument checks

def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable such as an nn.Module mapping (N, ...) to logits (N, C), "
                        f"got {type(model).__name__}")


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"x must be a floating-point tensor of shape (N, ...) with a batch axis, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")


def _check_number(name: str, value, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {low}, got {value!r}")
    return float(value)


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _labels(y, x: torch.Tensor, name: str = "y") -> torch.Tensor:
    """An int or int64 (N,) tensor -> int64 (N,) on x's device (range checked later against the logits)."""
    n = x.shape[0]
    if isinstance(y, int) and not isinstance(y, bool):
        return torch.full((n,), y, dtype=torch.long, device=x.device)
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an integer tensor of shape (N,) = ({n},), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), one class per example, got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def _check_logits(logits, y: torch.Tensor, name: str = "y") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"model must return logits of shape (N, C) = ({y.shape[0]}, C), got "
                         f"{tuple(getattr(logits, 'shape', ()))}")
    c = logits.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(f"{name} must hold class ids in [0, {c}) for a model with {c} outputs, "
                         f"got {int(y.min())}..{int(y.max())}")


def _bound(name: str, value, x: torch.Tensor):
    """None, a number, or a tensor broadcastable to x -> None or a tensor like x."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        try:
            torch.broadcast_shapes(value.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to x's shape "
                             f"{tuple(x.shape)}") from None
        return value.to(device=x.device, dtype=x.dtype)
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise TypeError(f"{name} must be None, a number or a tensor broadcastable to x, got {value!r}")
    return torch.tensor(float(value), device=x.device, dtype=x.dtype)


def _box(lo, hi, x: torch.Tensor):
    lo, hi = _bound("lo", lo, x), _bound("hi", hi, x)
    if lo is not None and hi is not None and bool((lo > hi).any()):
        raise ValueError("the valid input range [lo, hi] is empty somewhere: lo must be <= hi")
    return lo, hi


class _EvalMode:
    """Puts a module in eval() for the block and restores its previous mode (plain callables pass through)."""

    def __init__(self, model):
        self.model = model if isinstance(model, nn.Module) else None

    def __enter__(self):
        if self.model is not None:
            self.modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()

    def __exit__(self, *exc):
        if self.model is not None:
            for m, mode in self.modes:
                m.training = mode
        return False


# ----------------------------------------------------------------------------- adversarial examples

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
