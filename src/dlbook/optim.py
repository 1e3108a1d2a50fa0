"""Optimizers and learning-rate schedules from scratch, equal to ``torch.optim``.

Each optimizer is a ``torch.optim.Optimizer`` subclass whose constructor takes
the same hyperparameters, with the same defaults, as its ``torch.optim`` twin,
so the two are interchangeable (``tests/test_optim.py`` checks that they stay
within 1e-6 of each other over hundreds of float64 steps). The update rules,
for a parameter $w$ with gradient $g$ at step $t$ (learning rate $\\eta$):

* SGD with momentum $\\mu$: $b \\leftarrow \\mu b + (1 - \\tau) g$, $w \\leftarrow w - \\eta b$
  (Nesterov: $w \\leftarrow w - \\eta (g + \\mu b)$).
* RMSprop: $v \\leftarrow \\alpha v + (1 - \\alpha) g^2$, $w \\leftarrow w - \\eta\\, g / (\\sqrt{v} + \\epsilon)$.
* Adam: $m \\leftarrow \\beta_1 m + (1 - \\beta_1) g$, $v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2$,
  $w \\leftarrow w - \\eta\\, \\hat m / (\\sqrt{\\hat v} + \\epsilon)$ with $\\hat m = m / (1 - \\beta_1^t)$,
  $\\hat v = v / (1 - \\beta_2^t)$.
* AdamW: Adam whose weight decay shrinks the weights directly, $w \\leftarrow (1 - \\eta\\lambda) w$,
  instead of being added to the gradient.

Only the hyperparameters are mirrored; torch's speed options (``foreach``,
``fused``, ``capturable``, ``differentiable``) are left out on purpose: one
readable loop over the parameters is the point.

The schedules are small callables ``step -> factor`` for
``torch.optim.lr_scheduler.LambdaLR`` (the learning rate at step $s$ is the
base rate times ``schedule(s)``)::

    scheduler = LambdaLR(optimizer, WarmupCosine(warmup_steps=100, total_steps=1000))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer

__all__ = ["SGD", "RMSprop", "RMSProp", "Adam", "AdamW",
           "StepSchedule", "CosineSchedule", "WarmupCosine", "schedule_values"]


# ----------------------------------------------------------------------------- checks

def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _at_least_zero(name: str, value) -> float:
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _in_unit_interval(name: str, value, closed: bool = False) -> float:
    """value in [0, 1) (or [0, 1] with closed=True)."""
    value = _number(name, value)
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1{']' if closed else ')'}, got {value}")
    return value


def _check_betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return _in_unit_interval("betas[0]", betas[0]), _in_unit_interval("betas[1]", betas[1])


# ----------------------------------------------------------------------------- optimizers

class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum and L2 weight decay.

    Same arguments and defaults as ``torch.optim.SGD``. For each parameter w of
    any shape, with gradient g of the same shape::

        g = g + weight_decay * w                 # L2 penalty
        b = g (first step) or momentum * b + (1 - dampening) * g
        g = g + momentum * b  (nesterov)  or  b  (heavy ball)
        w = w - lr * g

    Args:
        params: an iterable of parameters or of param-group dicts.
        lr: learning rate, >= 0. momentum: in [0, 1). dampening: in [0, 1].
        weight_decay: >= 0. nesterov: needs momentum > 0 and dampening 0.
        maximize: ascend instead of descend.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False):
        _at_least_zero("lr", lr)
        _in_unit_interval("momentum", momentum)
        _in_unit_interval("dampening", dampening, closed=True)
        _at_least_zero("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0 "
                             f"(got momentum={momentum}, dampening={dampening})")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every parameter from its ``.grad``; returns ``closure()``'s loss if given."""
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, mu, damp = group["lr"], group["momentum"], group["dampening"]
            for p, w, g in _gradients(group):
                if mu:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.clone()       # the first step takes g undamped
                    else:
                        state["momentum_buffer"].mul_(mu).add_(g, alpha=1 - damp)
                    b = state["momentum_buffer"]
                    g = g + mu * b if group["nesterov"] else b
                w.add_(g, alpha=-lr)
        return loss


class RMSprop(Optimizer):
    """RMSprop: divide each gradient by a running root mean square of its recent values.

    Same arguments and defaults as ``torch.optim.RMSprop``. Per parameter w::

        g = g + weight_decay * w
        v = alpha * v + (1 - alpha) * g**2            # running mean of squares
        c = alpha * c + (1 - alpha) * g   (centered)  # running mean, so v - c**2 is a variance
        d = sqrt(v - c**2 if centered else v) + eps
        b = momentum * b + g / d   and   w = w - lr * b   (momentum > 0)
        w = w - lr * g / d                                (otherwise)

    Args:
        lr: >= 0. alpha: smoothing constant in [0, 1). eps: >= 0.
        weight_decay: >= 0. momentum: in [0, 1). centered: normalize by the variance.
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, *,
                 maximize: bool = False):
        _at_least_zero("lr", lr)
        _in_unit_interval("alpha", alpha)
        _at_least_zero("eps", eps)
        _at_least_zero("weight_decay", weight_decay)
        _in_unit_interval("momentum", momentum)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every parameter from its ``.grad``; returns ``closure()``'s loss if given."""
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, alpha, eps, mu = (group[k] for k in ("lr", "alpha", "eps", "momentum"))
            for p, w, g in _gradients(group):
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(w)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(w)
                    if mu:
                        state["momentum_buffer"] = torch.zeros_like(w)
                v = state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
                if group["centered"]:
                    c = state["grad_avg"].mul_(alpha).add_(g, alpha=1 - alpha)
                    d = (v - c * c).sqrt_().add_(eps)
                else:
                    d = v.sqrt().add_(eps)
                if mu:
                    b = state["momentum_buffer"].mul_(mu).addcdiv_(g, d)
                    w.add_(b, alpha=-lr)
                else:
                    w.addcdiv_(g, d, value=-lr)
        return loss


RMSProp = RMSprop  # the spelling of the literature; torch spells it RMSprop


class Adam(Optimizer):
    """Adam: momentum on the gradient, RMSprop-style scaling, both bias-corrected.

    Same arguments and defaults as ``torch.optim.Adam``. Per parameter w, at step t = 1, 2, ...::

        g = g + weight_decay * w                     # L2 penalty (AdamW decouples it instead)
        m = beta1 * m + (1 - beta1) * g              # first moment
        v = beta2 * v + (1 - beta2) * g**2           # second moment
        v_max = max(v_max, v)   (amsgrad; then v_max replaces v below)
        w = w - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

    Args:
        lr: >= 0. betas: (beta1, beta2), each in [0, 1). eps: >= 0.
        weight_decay: >= 0. amsgrad: use the running maximum of v.
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False):
        _at_least_zero("lr", lr)
        betas = _check_betas(betas)
        _at_least_zero("eps", eps)
        _at_least_zero("weight_decay", weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every parameter from its ``.grad``; returns ``closure()``'s loss if given."""
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p, w, g in _gradients(group, l2=not self.decoupled):   # Adam: L2 penalty through the gradient
                if wd and self.decoupled:
                    w.mul_(1 - lr * wd)                     # AdamW: shrink the weights themselves
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(w)
                    state["exp_avg_sq"] = torch.zeros_like(w)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(w)
                state["step"] += 1
                t = state["step"]
                m = state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                v = state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                if group["amsgrad"]:
                    v = torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
                w.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay: ``w = (1 - lr * weight_decay) * w`` before the Adam step.

    Same arguments and defaults as ``torch.optim.AdamW`` (note weight_decay=0.01
    by default). Decoupling matters because Adam divides the gradient by
    sqrt(v): an L2 term added to the gradient is scaled down exactly where
    gradients are large, while decoupled decay shrinks every weight alike.
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize)


def _gradients(group: dict, l2: bool = True):
    """Yield (p, w, g) for each parameter p of ``group`` that has a gradient.

    ``p`` is the key of the optimizer's state. ``w`` is p itself, or for a
    complex p its real view ``torch.view_as_real(p)`` of shape (*p.shape, 2):
    like torch, the optimizers treat the real and imaginary parts as two real
    parameters, so Adam's second moment is re^2 and im^2 separately, not the
    complex square g*g (which is not even a non-negative number). g has w's
    shape: the gradient, negated when ``maximize``, plus ``weight_decay * w``
    when ``l2`` (the L2 penalty's gradient).
    """
    wd = group["weight_decay"]
    for p in group["params"]:
        if p.grad is None:
            continue
        w, g = p, p.grad
        if torch.is_complex(p):
            w, g = torch.view_as_real(p), torch.view_as_real(g)
        g = -g if group["maximize"] else g
        if l2 and wd:
            g = g + wd * w
        yield p, w, g


def _run_closure(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# ----------------------------------------------------------------------------- schedules

def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class StepSchedule:
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps: factor = gamma ** (s // step_size).

    Equal to ``torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma)``.
    """

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _at_least_zero("gamma", gamma)

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)

    def __repr__(self) -> str:
        return f"StepSchedule(step_size={self.step_size}, gamma={self.gamma})"


class CosineSchedule:
    """Half a cosine from 1 down to ``min_factor`` over ``total_steps``, then flat.

    factor(s) = min + (1 - min) * (1 + cos(pi * s / total)) / 2 for s <= total.
    With ``min_factor = eta_min / lr`` it equals ``CosineAnnealingLR(optimizer, T_max=total_steps, eta_min)``
    for s <= total_steps.
    """

    def __init__(self, total_steps: int, min_factor: float = 0.0):
        self.total_steps = _positive_int("total_steps", total_steps)
        self.min_factor = _in_unit_interval("min_factor", min_factor, closed=True)

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return f"CosineSchedule(total_steps={self.total_steps}, min_factor={self.min_factor})"


class WarmupCosine:
    """Linear warmup for ``warmup_steps`` steps, then a cosine decay to ``min_factor`` at ``total_steps``.

    factor(s) = (s + 1) / warmup for s < warmup (so the very first step does move),
    then the cosine of ``CosineSchedule`` over the remaining total - warmup steps.
    Warmup keeps the first updates small while Adam's second-moment estimate,
    built from only a few gradients, is still unreliable.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        _positive_int("total_steps", total_steps)
        if warmup_steps >= total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps})")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.cosine = CosineSchedule(total_steps - warmup_steps, min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.cosine(step - self.warmup_steps)

    def __repr__(self) -> str:
        return (f"WarmupCosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
                f"min_factor={self.cosine.min_factor})")


def schedule_values(schedule: Callable[[int], float], steps: int, lr: float = 1.0) -> list[float]:
    """The learning rate ``lr * schedule(s)`` for s = 0 .. steps-1, for plotting.

    Returns:
        A list of ``steps`` floats.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be callable as schedule(step) -> factor, got {type(schedule).__name__}")
    _positive_int("steps", steps)
    return [lr * schedule(s) for s in range(steps)]

