"""Interpretability: attributions, perturbations, probes and adversarial examples.

Notation: a classifier ``model`` maps a batch ``x`` of shape ``(N, *F)`` (any feature
shape F, e.g. (64,) or (1, 8, 8)) to logits f(x) of shape (N, C). ``target`` names
one class per example (an int, or int64 of shape (N,)); f_t(x) is its logit.
Attributions always explain the *logit* f_t, not the softmax probability (which
saturates: near p = 1 its gradient vanishes however much the input matters), and
are computed with the model in ``eval()``.

* Gradient attributions: ``saliency`` (grad f_t), ``input_x_gradient``
  (x * grad f_t), ``smoothgrad`` (the average over Gaussian-noised copies of x) and
  ``integrated_gradients`` (the path integral from a baseline, whose attributions
  sum to f_t(x) - f_t(baseline) up to the quadrature error).
* Perturbation attributions: ``occlusion`` (slide a patch of baseline values over
  the input) and ``permutation_importance`` (shuffle one feature column on held-out
  data and measure how much a metric drops).
* Probing: ``gpt_hidden_states`` and ``gpt_attention`` collect the residual stream
  and the attention weights of ``dlbook.transformer.GPT``, ``gpt_head_outputs`` what
  each head would write from each key position; ``linear_probe`` trains a
  linear (or one-hidden-layer) classifier on frozen features.
* ``rank_correlation`` (Spearman) compares two attribution maps for sanity checks,
  and ``deletion_curve`` scores a map by deleting its most important features first.
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

import itertools
import math
from numbers import Real
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dlbook._checks import check_int as _check_int

__all__ = [
    "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "ig_weights", "IG_METHODS",
    "occlusion", "occlusion_masks", "permutation_importance", "Importances", "deletion_curve",
    "rank_correlation", "gpt_hidden_states", "gpt_attention", "gpt_head_outputs", "linear_probe", "Probe", "fgsm", "pgd",
]


# ----------------------------------------------------------------------------- argument checks

def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable such as an nn.Module mapping (N, ...) to logits (N, C), "
                        f"got {type(model).__name__}")


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a floating-point tensor of shape (N, ...) with a batch axis, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")


class _Call:
    """A Captum-style call ``model(*inputs, *additional_forward_args)`` as a function of one tensor.

    ``inputs`` is a tensor (N, *F) (N scalars when 1-D), or a tuple of tensors
    (N, *F_j) with one batch axis N; a tuple is flattened into one (N, sum_j prod F_j)
    tensor ``self.x``, so that every method below works on one tensor, and ``out``
    splits an attribution of that shape back into the tuple. ``additional_forward_args``
    (one object, or a tuple or list of them) are passed after the inputs, unperturbed and
    unattributed; a tensor among them whose first axis is N follows its example when the
    methods expand the batch (``rows``, the example of each row; Captum repeats such
    tensors the same way), anything else is passed as is.
    """

    def __init__(self, model, inputs, additional_forward_args=None, floating: bool = True):
        _check_model(model)
        self.model = model
        self.is_tuple = isinstance(inputs, tuple)
        xs = inputs if self.is_tuple else (inputs,)
        if not xs:
            raise ValueError("inputs must be a tensor or a non-empty tuple of tensors")
        for t in xs:
            if floating:
                _check_input(t)
            elif not isinstance(t, torch.Tensor) or t.dim() < 1 or t.is_complex():
                raise TypeError(f"x must be a real tensor of shape (N, ...) with a batch axis, got "
                                f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
        self.n = xs[0].shape[0]
        if any(t.shape[0] != self.n for t in xs):
            raise ValueError(f"every input must have the same batch size N, got {[t.shape[0] for t in xs]}")
        self.shapes = [tuple(t.shape[1:]) for t in xs]
        self.sizes = [math.prod(s) for s in self.shapes]
        if self.is_tuple and len({t.dtype for t in xs}) > 1:
            raise TypeError(f"the inputs of a tuple must share one dtype, got {[t.dtype for t in xs]}")
        self.x = torch.cat([t.detach().reshape(self.n, -1) for t in xs], 1) if self.is_tuple else xs[0].detach()
        args = additional_forward_args
        self.args = () if args is None else tuple(args) if isinstance(args, (tuple, list)) else (args,)

    def parts(self, x: torch.Tensor) -> tuple:
        """(M, *F) or the flat (M, D) -> the model's positional inputs."""
        if not self.is_tuple:
            return (x,)
        return tuple(p.reshape(x.shape[0], *s) for p, s in zip(x.split(self.sizes, dim=1), self.shapes))

    def __call__(self, x: torch.Tensor, rows: torch.Tensor | None = None):
        args = self.args
        if rows is not None:
            args = tuple(a[rows] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == self.n else a
                         for a in args)
        return self.model(*self.parts(x), *args)

    def flat_like(self, name: str, value, convert):
        """A per-input value (a tuple for tuple inputs) -> one value for ``self.x`` via ``convert(v, x_j)``."""
        if not self.is_tuple:
            return convert(value, self.x)
        vals = value if isinstance(value, tuple) else (value,) * len(self.shapes)
        if len(vals) != len(self.shapes):
            raise ValueError(f"{name} must be one value or a tuple of {len(self.shapes)} (one per input), "
                             f"got {len(vals)}")
        out = [convert(v, xj) for v, xj in zip(vals, self.parts(self.x))]
        return None if any(o is None for o in out) else \
            torch.cat([o.expand_as(xj).reshape(self.n, -1) for o, xj in zip(out, self.parts(self.x))], 1)

    def out(self, attr: torch.Tensor):
        """An attribution of the shape of ``self.x`` -> the shape of the inputs (a tuple for a tuple)."""
        return self.parts(attr) if self.is_tuple else attr

    def labels(self, y, name: str = "y") -> torch.Tensor | None:
        return _labels(y, self.x, name)


def _check_number(name: str, value, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {low}, got {value!r}")
    return float(value)


def _labels(y, x: torch.Tensor, name: str = "y") -> torch.Tensor | None:
    """Targets -> None, int64 (N,) class ids, or int64 (N, k) indices into a multi-axis output.

    Accepted: None (for a model with one output per example), an int, a list of N ints,
    an integer tensor of shape () or (N,), a tuple of ints (one index into an output of
    shape (N, d1, ..., dk), the same for every example) or a list of N such tuples (Captum's).
    """
    n = x.shape[0]
    if y is None:
        return None
    if isinstance(y, int) and not isinstance(y, bool):
        return torch.full((n,), y, dtype=torch.long, device=x.device)
    if isinstance(y, tuple):
        if not y or not all(isinstance(v, int) and not isinstance(v, bool) for v in y):
            raise TypeError(f"a tuple {name} is one index into a multi-axis output and must hold ints, got {y!r}")
        return torch.tensor(y, dtype=torch.long, device=x.device).expand(n, len(y))   # the same for every example
    if isinstance(y, list):
        if len(y) != n:
            raise ValueError(f"{name} must have one entry per example, {n}, got a list of {len(y)}")
        try:
            y = torch.tensor(y, dtype=torch.long, device=x.device)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a list of ints or of equal-length int tuples, got {y!r}") from None
        return y
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an integer tensor of shape (N,) = ({n},), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape (N,) = ({n},), one class per example, got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def _check_logits(logits, y: torch.Tensor | None, name: str = "y") -> None:
    n = None if y is None else y.shape[0]
    if y is None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 1:
            raise ValueError(f"with no {name}, the model must return one output per example, shape (N,); got "
                             f"{tuple(getattr(logits, 'shape', ()))}: pass {name} to pick an output")
        return
    need = 2 if y.dim() == 1 else 1 + y.shape[1]
    if not isinstance(logits, torch.Tensor) or logits.dim() != need or logits.shape[0] != n:
        raise ValueError(f"model must return logits of shape (N, C) = ({n}, C) (or (N, d1, ..., dk) for a "
                         f"k-index {name}), got {tuple(getattr(logits, 'shape', ()))}")
    sizes = torch.tensor(logits.shape[1:], device=y.device)
    yy = y if y.dim() == 2 else y[:, None]
    if y.numel() and (bool((yy < 0).any()) or bool((yy >= sizes).any())):
        c = logits.shape[1]
        raise ValueError(f"{name} must hold class ids in [0, {c}) for a model with {c} outputs, "
                         f"got {int(y.min())}..{int(y.max())}" if y.dim() == 1 else
                         f"{name} indexes outside the model's output of shape {tuple(logits.shape)}")


def _select(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """f_t(x) for each row, shape (N,): the output itself, a class logit, or a multi-index into the outputs."""
    _check_logits(logits, target, "target")
    if target is None:
        return logits
    if target.dim() == 1:
        return logits.gather(1, target[:, None])[:, 0]
    flat = torch.zeros_like(target[:, 0])
    for j, size in enumerate(logits.shape[1:]):
        flat = flat * size + target[:, j]
    return logits.flatten(1).gather(1, flat[:, None])[:, 0]


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


def _box(lo, hi, call: _Call):
    lo = call.flat_like("lo", lo, lambda v, xj: _bound("lo", v, xj))
    hi = call.flat_like("hi", hi, lambda v, xj: _bound("hi", v, xj))
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

#: Gradient coordinates with |g| at or below this many machine epsilons of x's dtype count as zero
#: in ``fgsm`` and ``pgd`` (about 9.5e-7 in float32, close to Captum's fixed 1e-6).
ZERO_GRAD_EPS = 8


def _loss_grad(call: _Call, x: torch.Tensor, y, loss_fn=None) -> torch.Tensor:
    """grad_x of sum_i L(f(x_i), y_i), shape of x (L: CE, or ``loss_fn``); the model is already in eval mode."""
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
        return torch.autograd.grad(loss, x)[0]


def _signed(grad: torch.Tensor, threshold) -> torch.Tensor:
    """sign(grad), with 0 where |grad| <= threshold (default ``ZERO_GRAD_EPS`` machine epsilons)."""
    if threshold is None:
        threshold = ZERO_GRAD_EPS * torch.finfo(grad.dtype).eps
    threshold = _check_number("zero_threshold", threshold)
    return torch.where(grad.abs() > threshold, grad.sign(), torch.zeros_like(grad))


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
    L(x) + delta . grad L(x). Coordinates with a zero gradient stay where they are: a
    coordinate whose exact gradient is zero is left a float rounding residue (1.8e-7
    in float32 on Captum's ``test_attack_loss_defined``), so |g| <= ``zero_threshold``
    counts as zero. The default, ``ZERO_GRAD_EPS`` = 8 machine epsilons of x's dtype
    (9.5e-7 in float32, 1.8e-15 in float64), is a few times that residue and close to
    Captum's fixed 1e-6; unlike a fixed number it does not swallow real float64 gradients.

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
        zero_threshold: gradients with |g| at or below it count as zero (see above).

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
        grad = _loss_grad(call, x0, y, loss_fn)
    return call.out(_project(x0 + eps * _signed(grad, zero_threshold), x0, eps, lo, hi))


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
            grad = _loss_grad(call, x_adv, y, loss_fn)
            x_adv = _project(x_adv + alpha * _signed(grad, zero_threshold), x0, eps, lo, hi)
    return call.out(x_adv)


# ----------------------------------------------------------------------------- gradient attributions

def _target_logits(call: _Call, x: torch.Tensor, target, rows=None) -> torch.Tensor:
    """f_t(x) for each row, shape (N,); checks the logits' shape and the target range.

    ``rows``: the example each row of x belongs to (for additional forward args), None if x is the batch.
    """
    return _select(call(x, rows), target)


def _target_grad(call: _Call, x: torch.Tensor, target, rows=None) -> torch.Tensor:
    """grad_x f_t(x) row by row (the rows are independent, so the gradient of the sum), shape of x."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(_target_logits(call, x, target, rows).sum(), x)[0]


def _prepare(model, x, target, additional_forward_args=None, floating: bool = True):
    """(call, flat x, targets) for a Captum-style call; see ``_Call``."""
    call = _Call(model, x, additional_forward_args, floating)
    return call, call.x, call.labels(target, "target")


def _expand(target, k: int):
    """Targets of N examples -> of N * k rows (each example's k copies together), None stays None."""
    return None if target is None else target.repeat_interleave(k, dim=0)


def _rows(n: int, k: int, device) -> torch.Tensor:
    return torch.arange(n, device=device).repeat_interleave(k)


def saliency(model, x: torch.Tensor, target, *, absolute: bool = False,
             additional_forward_args=None) -> torch.Tensor:
    """Vanilla gradient saliency: the gradient of the target logit with respect to the input.

    .. math::  S(x) = \\nabla_x f_t(x)

    It says how the logit would move under an infinitesimal change of each input
    feature: a local sensitivity, not a share of the output.

    Args:
        model: maps x ``(N, *F)`` to logits (N, C); run in ``eval()``, mode restored.
        x: inputs ``(N, *F)``, floating point.
        target: the explained class, an int or int64 of shape (N,).
        absolute: return ``|grad|`` (Simonyan et al.'s map, and Captum ``Saliency``'s default).
        additional_forward_args: passed to the model after x, not attributed (Captum's).

    Captum-style calls work in every attribution here: x may be a tuple of tensors with
    one batch axis (the model's positional inputs; the attribution is then a tuple of
    their shapes), a 1-D x is N scalars, and ``target`` may also be None (for a model
    with one output per example, shape (N,)), a list of N class ids, or a tuple of ints
    indexing an output of shape (N, d1, ..., dk) (a list of N tuples: one per example).
    Integer inputs have no gradient and raise TypeError (``occlusion`` accepts them).

    Returns:
        Attributions of shape ``(N, *F)``.

    Raises:
        ValueError: a target out of [0, C) or of the wrong shape. TypeError: a non-float x.
    """
    call, x0, target = _prepare(model, x, target, additional_forward_args)
    with _EvalMode(model):
        grad = _target_grad(call, x0, target)
    return call.out(grad.abs() if absolute else grad)


def input_x_gradient(model, x: torch.Tensor, target, *, additional_forward_args=None) -> torch.Tensor:
    """Gradient times input: x * grad_x f_t(x), shape ``(N, *F)``.

    For a linear logit f_t(x) = w . x + b this is w_i x_i, each feature's exact share
    of f_t(x) - f_t(0); for a nonlinear model it is the first-order version of that.
    Arguments and errors as in ``saliency``.
    """
    call, x0, target = _prepare(model, x, target, additional_forward_args)
    with _EvalMode(model):
        return call.out(x0 * _target_grad(call, x0, target))


def smoothgrad(model, x: torch.Tensor, target, n_samples: int = 50, sigma: float = 0.15,
               generator: torch.Generator | None = None, *, base=None,
               additional_forward_args=None) -> torch.Tensor:
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
    call, x0, target = _prepare(model, x, target, additional_forward_args)
    n_samples = _check_int("n_samples", n_samples)
    sigma = _check_number("sigma", sigma)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    base = saliency if base is None else base
    if not callable(base):
        raise TypeError(f"base must be an attribution function (model, x, target) -> (N, *F), got {base!r}")
    n, feat = x0.shape[0], tuple(x0.shape[1:])
    device = generator.device if generator is not None else x0.device
    noise = torch.randn((n, n_samples, *feat), generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    noisy = (x0[:, None] + sigma * noise).reshape(n * n_samples, *feat)
    rows = _rows(n, n_samples, x0.device)
    tgt = _expand(target, n_samples)
    with _EvalMode(model):                # base sees a plain function of the (flat) noisy batch
        attr = base(lambda z: call(z, rows), noisy, None if tgt is None else tgt if tgt.dim() == 1
                    else [tuple(t) for t in tgt.tolist()])
    return call.out(attr.reshape(n, n_samples, *feat).mean(dim=1))


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


def _baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """None (zeros), a number, or a tensor of shape ``(N, *F)``, ``(*F)`` or ``(1, *F)`` -> a tensor of x's shape."""
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, Real) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be None, a number or a tensor, got {type(baseline).__name__}")
    shape, feat = tuple(baseline.shape), tuple(x.shape[1:])
    if shape not in (tuple(x.shape), feat, (1, *feat)):
        raise ValueError(f"baseline of shape {shape} does not match x of shape {tuple(x.shape)}: expected "
                         f"{tuple(x.shape)} (one per input) or {feat} (one for all)")
    return baseline.detach().to(device=x.device, dtype=x.dtype).expand_as(x)


def integrated_gradients(model, x: torch.Tensor, target, baseline=None, steps: int = 50,
                         method: str = "riemann_trapezoid", *, return_error: bool = False,
                         batch_size: int | None = None, additional_forward_args=None):
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
        additional_forward_args: as in ``saliency``; for tuple inputs the baseline is a
            tuple too (or one number for all).

    Returns:
        Attributions ``(N, *F)``, or (attributions, error) with ``return_error``.

    Raises:
        ValueError: steps < 1, an unknown method, a target out of range, a baseline
            whose shape does not match x.
    """
    call, x0, target = _prepare(model, x, target, additional_forward_args)
    alphas, weights = ig_weights(steps, method)
    base = call.flat_like("baseline", baseline, _baseline)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size)
    n, feat, steps = x0.shape[0], tuple(x0.shape[1:]), len(alphas)
    a = alphas.to(device=x0.device, dtype=x0.dtype).view(1, steps, *[1] * len(feat))
    w = weights.to(device=x0.device, dtype=x0.dtype).view(1, steps, *[1] * len(feat))
    path = (base[:, None] + a * (x0 - base)[:, None]).reshape(n * steps, *feat)       # (N * steps, *F)
    tgt, rows = _expand(target, steps), _rows(n, steps, x0.device)
    chunk = batch_size or n * steps
    with _EvalMode(model):
        grads = torch.cat([_target_grad(call, path[i:i + chunk], None if tgt is None else tgt[i:i + chunk],
                                        rows[i:i + chunk]) for i in range(0, n * steps, chunk)])
        attr = (x0 - base) * (w * grads.reshape(n, steps, *feat)).sum(dim=1)
        if not return_error:
            return call.out(attr)
        with torch.no_grad():
            gap = _target_logits(call, x0, target) - _target_logits(call, base, target)
    return call.out(attr), attr.reshape(n, -1).sum(1) - gap


# ----------------------------------------------------------------------------- perturbation attributions

def _window(name: str, value, feat: tuple[int, ...]) -> tuple[int, ...]:
    """An int or a tuple for the trailing axes -> one int per feature axis (unnamed leading axes: whole)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * max(1, len(feat) - 1)
    if not isinstance(value, (tuple, list)) or not value or len(value) > len(feat) \
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"{name} must be a positive int or a tuple of at most {len(feat)} positive ints "
                         f"(the trailing axes of an input of feature shape {feat}), got {value!r}")
    return tuple(feat[: len(feat) - len(value)]) + tuple(value)


def occlusion_masks(feature_shape, window, stride=1) -> torch.Tensor:
    """The patches ``occlusion`` slides over an input of shape ``feature_shape``, as 0/1 masks ``(K, *F)``.

    Along each axis of size n with window w and stride s the patch starts at
    0, s, 2s, ... up to the first start at or past n - w, and is cropped at the
    border, so every feature is covered (this is also Captum's ``Occlusion``).
    ``window`` and ``stride`` are as in ``occlusion``.
    """
    feat = tuple(int(v) for v in feature_shape)
    win, st = _window("window", window, feat), _window("stride", stride, feat)
    if any(w > n for w, n in zip(win, feat)):
        raise ValueError(f"window {win} is larger than the input's feature shape {feat}")
    if any(s > w and w < n for s, w, n in zip(st, win, feat)):
        raise ValueError(f"stride {st} must not exceed the window {win}: features between patches would "
                         "never be occluded")
    starts = [[i * s for i in range(math.ceil((n - w) / s) + 1)] for n, w, s in zip(feat, win, st)]
    masks = []
    for corner in itertools.product(*starts):
        m = torch.zeros(feat)
        m[tuple(slice(c, c + w) for c, w in zip(corner, win))] = 1
        masks.append(m)
    return torch.stack(masks)


def occlusion(model, x: torch.Tensor, target, window, stride=1, baseline=0.0, *,
              batch_size: int | None = None, additional_forward_args=None) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus 2014): how much the target logit drops when a patch is hidden.

    For each patch P_k (a 0/1 mask from ``occlusion_masks``), replace the patch by the
    baseline, x^(k) = x (1 - P_k) + b P_k, and record d_k = f_t(x) - f_t(x^(k)). Each
    feature gets the mean of d_k over the patches that cover it:

    .. math::  A_i = \\frac{\\sum_k d_k P_{k,i}}{\\sum_k P_{k,i}}

    (Captum's ``Occlusion`` computes the same). Costs one forward pass per patch.

    Args:
        model, x, target: as in ``saliency``; x of shape ``(N, *F)``.
        window: the patch size: an int w (a w x w patch over the axes after the
            channel axis, all channels at once; w features for flat inputs), or a
            tuple for the trailing axes (leading axes not named are occluded whole).
        stride: the step between patches, same conventions; at most the window.
        baseline: what a hidden patch shows: a number or a tensor of shape ``(*F)`` or ``(N, *F)``.
        batch_size: how many occluded copies go through the model at once (default all).
        additional_forward_args: as in ``saliency``.

    x may be an integer tensor (token ids, say: no gradient is needed here; the
    occluded copies keep x's dtype and the baseline is cast to it). A tuple of inputs
    is refused: the windows slide over one tensor's axes.

    Returns:
        Attributions of shape ``(N, *F)`` (floating point).

    Raises:
        ValueError: a window larger than the input or a stride larger than the window,
            a target out of range, a baseline whose shape does not match x.
    """
    if isinstance(x, tuple):
        raise TypeError("occlusion takes one input tensor (N, *F): its windows slide over that tensor's axes; "
                        "occlude each input of a tuple separately")
    call, x0, target = _prepare(model, x, target, additional_forward_args, floating=False)
    n, feat = x0.shape[0], tuple(x0.shape[1:])
    masks = occlusion_masks(feat, window, stride).to(device=x0.device, dtype=torch.bool)  # (K, *F)
    base = _baseline(baseline, x0)
    k = masks.shape[0]
    chunk = _check_int("batch_size", batch_size) if batch_size is not None else n * k
    hidden = torch.where(masks, base[:, None], x0[:, None]).reshape(n * k, *feat)         # (N * K, *F), x's dtype
    tgt, rows = _expand(target, k), _rows(n, k, x0.device)
    with _EvalMode(model), torch.no_grad():
        full = _target_logits(call, x0, target)                                             # (N,)
        occluded = torch.cat([_target_logits(call, hidden[i:i + chunk], None if tgt is None else tgt[i:i + chunk],
                                             rows[i:i + chunk]) for i in range(0, n * k, chunk)]).view(n, k)
    drop = full[:, None] - occluded                                                         # (N, K)
    flat = masks.flatten(1).to(drop.dtype)                                                  # (K, prod F)
    return ((drop @ flat) / flat.sum(0)).view(n, *feat)


class Importances(NamedTuple):
    """Permutation importances: ``mean`` and ``std`` (d,) over repeats, ``values`` (d, n_repeats), ``baseline_score``."""

    mean: torch.Tensor
    std: torch.Tensor
    values: torch.Tensor
    baseline_score: float


def _accuracy_metric(output: torch.Tensor, y: torch.Tensor) -> float:
    return (output.argmax(dim=1) == y).double().mean().item()


def permutation_importance(model, X: torch.Tensor, y: torch.Tensor, metric=None, n_repeats: int = 5,
                           generator: torch.Generator | None = None) -> Importances:
    """Permutation feature importance (Breiman 2001): the drop in a score when one feature is shuffled.

    For feature j and repeat r, permute column j of X across the rows (breaking its
    link with y and with the other features, while keeping its distribution), and
    record s - s_{j,r}, where s is the score on the intact X. Computed on held-out
    data it says what the *model* relies on. Correlated features share importance:
    shuffling one leaves its twin to carry the information, so both can look unimportant.

    Args:
        model: maps X (N, d) to outputs (N, ...); called in ``eval()`` without gradients.
        X: features (N, d) (a 2-D tensor). y: targets (N,).
        metric: ``metric(output, y)`` -> a number, higher is better; default accuracy of
            the argmax of (N, C) logits.
        n_repeats: shuffles per feature, >= 1.
        generator: a ``torch.Generator`` (CPU) for the permutations.

    Returns:
        ``Importances(mean, std, values, baseline_score)``; std is the population
        standard deviation over repeats (as scikit-learn's).

    Raises:
        ValueError: X not 2-D, len(y) != len(X), n_repeats < 1.
    """
    _check_model(model)
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a tensor of shape (N, d), got shape {tuple(getattr(X, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or len(y) != len(X):
        raise ValueError(f"y must be a tensor with one target per row of X ({len(X)}), "
                         f"got {tuple(getattr(y, 'shape', ()))}")
    n_repeats = _check_int("n_repeats", n_repeats)
    metric = _accuracy_metric if metric is None else metric
    if not callable(metric):
        raise TypeError(f"metric must be a function (output, y) -> number, got {metric!r}")
    n, d = X.shape
    values = torch.zeros(d, n_repeats, dtype=torch.float64)
    with _EvalMode(model), torch.no_grad():
        score = float(metric(model(X), y))
        for j in range(d):
            for r in range(n_repeats):
                perm = torch.randperm(n, generator=generator).to(X.device)
                Xp = X.clone()
                Xp[:, j] = X[perm, j]
                values[j, r] = score - float(metric(model(Xp), y))
    return Importances(values.mean(1), values.std(1, correction=0), values, score)


def deletion_curve(model, x: torch.Tensor, target, attribution: torch.Tensor, baseline=0.0, per_step: int = 1, *,
                   insertion: bool = False, batch_size: int | None = None) -> torch.Tensor:
    """Deletion (or insertion) curve of an attribution map (Petsiuk et al. 2018, RISE).

    Deletion: order the features by decreasing attribution, replace the first
    k * per_step of them by the baseline for k = 0, 1, ..., K (K = ceil(d / per_step)),
    and record the softmax probability of the target class. A map that finds the
    features the model really uses makes the probability fall fast (a small area
    under the curve). Insertion starts from the baseline and puts the most important
    features back first (a large area is good). Ties keep the features' order.

    Args:
        model, x, target: as in ``saliency``; x of shape ``(N, *F)`` with d = prod(F) features.
        attribution: a map of the shape of x (the higher, the more important).
        baseline: a number or a tensor of shape ``(*F)`` or ``(N, *F)``.
        per_step: features changed per step, >= 1.
        insertion: compute the insertion curve instead.
        batch_size: how many of the N * (K + 1) inputs go through the model at once.

    Returns:
        Probabilities of shape (N, K + 1); column 0 is the intact input for deletion
        (the baseline for insertion) and column K the other end.
    """
    if isinstance(x, tuple):
        raise TypeError("deletion_curve takes one input tensor (N, *F) and (N, C) logits")
    _, x, target = _prepare(model, x, target)
    if target is None or target.dim() != 1:
        raise ValueError("deletion_curve needs one class id per example: the curve is a softmax probability")
    if not isinstance(attribution, torch.Tensor) or attribution.shape != x.shape:
        raise ValueError(f"attribution must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(getattr(attribution, 'shape', ()))}")
    per_step = _check_int("per_step", per_step)
    x0 = x.detach()
    base = _baseline(baseline, x0)
    n, feat = x.shape[0], tuple(x.shape[1:])
    d = x0[0].numel()
    k = math.ceil(d / per_step)
    order = attribution.detach().flatten(1).argsort(dim=1, descending=True, stable=True)            # (N, d)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d, device=x.device).expand(n, d))
    changed = rank[:, None, :] < (torch.arange(k + 1, device=x.device) * per_step)[None, :, None]  # (N, K+1, d)
    start, end = (base, x0) if insertion else (x0, base)
    inputs = torch.where(changed, end.flatten(1)[:, None], start.flatten(1)[:, None]).reshape(n * (k + 1), *feat)
    tgt = target.repeat_interleave(k + 1)
    chunk = _check_int("batch_size", batch_size) if batch_size is not None else n * (k + 1)
    with _EvalMode(model), torch.no_grad():
        probs = torch.cat([model(inputs[i:i + chunk]).softmax(-1).gather(1, tgt[i:i + chunk, None])[:, 0]
                           for i in range(0, n * (k + 1), chunk)])
    return probs.view(n, k + 1)


# ----------------------------------------------------------------------------- comparing maps

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


# ----------------------------------------------------------------------------- probing

def _run_hooked(model, idx: torch.Tensor, handles) -> None:
    """One forward pass of a GPT in eval mode without gradients, then remove the hooks."""
    try:
        with _EvalMode(model), torch.no_grad():
            model(idx)
    finally:
        for h in handles:
            h.remove()


def _check_gpt(model) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "blocks") or not hasattr(model, "drop"):
        raise TypeError(f"expected a dlbook.transformer.GPT (with .drop and .blocks), got {type(model).__name__}")


def gpt_hidden_states(model, idx: torch.Tensor) -> torch.Tensor:
    """The residual stream of a ``dlbook.transformer.GPT`` after every layer.

    Layer 0 is the input of the first block (token + position embedding), layer l
    the output of block l, so a model with L blocks gives L + 1 layers. The final
    LayerNorm and the head are not included. Runs in ``eval()`` without gradients.

    Args:
        model: a ``GPT`` (anything with ``.drop`` applied to the embeddings and ``.blocks``).
        idx: token ids (B, T), int64.

    Returns:
        Hidden states of shape (L + 1, B, T, C).
    """
    _check_gpt(model)
    states: list[torch.Tensor] = []

    def keep(module, args, output):
        states.append(output.detach())

    _run_hooked(model, idx, [model.drop.register_forward_hook(keep)]
                + [b.register_forward_hook(keep) for b in model.blocks])
    return torch.stack(states)


def gpt_attention(model, idx: torch.Tensor) -> torch.Tensor:
    """The causal self-attention weights of every head of a ``dlbook.transformer.GPT``.

    The model computes attention with a fused kernel that never stores the weights,
    so each layer's weights softmax(q k^T / sqrt(D)) are recomputed from the input of
    its attention module (``MultiHeadAttention.attention_weights``: q and k from the
    same ``qkv`` projection, rotated when the model uses RoPE). Row i of a map holds how query position i spreads its attention
    over key positions j <= i.

    Args:
        model: a ``GPT``; idx: token ids (B, T).

    Returns:
        Weights of shape (L, B, H, T, T), each row summing to 1 (zeros above the diagonal).
    """
    _check_gpt(model)
    maps: list[torch.Tensor] = []

    def record(module, args, kwargs):
        maps.append(module.attention_weights(args[0], is_causal=True).detach())

    _run_hooked(model, idx, [b.attn.register_forward_pre_hook(record, with_kwargs=True) for b in model.blocks])
    return torch.stack(maps)


def gpt_head_outputs(model, idx: torch.Tensor) -> torch.Tensor:
    """What each head of a ``dlbook.transformer.GPT`` writes from each key position.

    A head's output at query i is ``sum_j alpha_ij W_O^h v_j``: the attention weights
    (``gpt_attention``) mix the vectors ``W_O^h v_j``, the value of key j mapped through
    the head's own columns of the output projection. This returns those vectors, so that
    a weight can be compared with the size of what it multiplies (chapter 7, notebook 1).
    Weighted by ``gpt_attention`` and summed over keys and heads, plus the projection's
    bias, they give the attention module's output (up to rounding).

    Args:
        model: a ``GPT``; idx: token ids (B, T).

    Returns:
        Vectors of shape (L, B, H, T, C): layer, batch, head, key position, model width.
    """
    _check_gpt(model)
    outs: list[torch.Tensor] = []

    def record(module, args, kwargs):
        c, h = module.n_embd, module.n_head
        v = module.split_heads(module.qkv(args[0]).split(c, dim=-1)[2])                # (B, H, T, D)
        w_o = module.proj.weight.view(c, h, c // h)                                        # (C, H, D)
        outs.append(torch.einsum("bhtd,chd->bhtc", v, w_o).detach())

    _run_hooked(model, idx, [b.attn.register_forward_pre_hook(record, with_kwargs=True) for b in model.blocks])
    return torch.stack(outs)


class Probe(NamedTuple):
    """What ``linear_probe`` returns: accuracies on the training and held-out rows, and the fitted probe."""

    train_accuracy: float
    test_accuracy: float
    model: nn.Module


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def linear_probe(features: torch.Tensor, labels: torch.Tensor, *, hidden: int | None = None,
                 test_frac: float = 0.25, test_mask: torch.Tensor | None = None, l2: float = 1e-3,
                 max_iter: int = 200, standardize: bool = True, seed: int = 0) -> Probe:
    """Train a probe on frozen features: can a property be read off them?

    A linear probe is multinomial logistic regression, fitted full-batch with L-BFGS:

    .. math::  \\min_{W, b}\\ \\frac1n \\sum_i \\mathrm{CE}(W h_i + b,\\ y_i) + \\frac{\\lambda}{2} \\lVert W \\rVert^2

    (the same optimum as scikit-learn's ``LogisticRegression(C = 1 / (lambda n))``).
    With ``hidden`` it is a one-hidden-layer ReLU MLP (the penalty then covers both
    weight matrices). High held-out accuracy means the property is *decodable*,
    not that the model *uses* it; compare with a control task (random labels per
    token type) to see how much comes from the probe's own capacity.

    Args:
        features: (N, d) frozen representations. labels: (N,) int64 classes.
        hidden: width of the MLP probe's hidden layer, or None for a linear probe.
        test_frac: share of rows held out (a random split from ``seed``), if no test_mask.
        test_mask: (N,) bool, True for the held-out rows; overrides test_frac.
        l2: the penalty lambda >= 0. max_iter: L-BFGS iterations.
        standardize: scale each feature by the training rows' mean and std first.
        seed: seeds the split and the MLP's initialization.

    Returns:
        ``Probe(train_accuracy, test_accuracy, model)``; ``model`` maps raw features
        (N, d) to logits (N, C), the standardization included.

    Raises:
        ValueError: shapes that do not match, an empty split, bad hyperparameters.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a float tensor of shape (N, d), got {tuple(getattr(features, 'shape', ()))}")
    n, d = features.shape
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape (N,) = ({n},), got "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    l2 = _check_number("l2", l2)
    max_iter = _check_int("max_iter", max_iter)
    if hidden is not None:
        hidden = _check_int("hidden", hidden)
    g = torch.Generator().manual_seed(seed)
    if test_mask is None:
        if not 0 < test_frac < 1:
            raise ValueError(f"test_frac must be in (0, 1), got {test_frac!r}")
        test_mask = torch.zeros(n, dtype=torch.bool)
        test_mask[torch.randperm(n, generator=g)[: round(n * test_frac)]] = True
    if not isinstance(test_mask, torch.Tensor) or test_mask.shape != (n,) or test_mask.dtype != torch.bool:
        raise ValueError(f"test_mask must be a bool tensor of shape ({n},)")
    test_mask = test_mask.to(features.device)
    labels = labels.to(features.device, torch.long)
    Xtr, ytr, Xte, yte = features[~test_mask], labels[~test_mask], features[test_mask], labels[test_mask]
    if len(ytr) == 0 or len(yte) == 0:
        raise ValueError("the split leaves no training or no held-out rows")
    n_classes = int(labels.max()) + 1
    if standardize:
        mean, std = Xtr.mean(0), Xtr.std(0, correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros_like(Xtr[0]), torch.ones_like(Xtr[0])
    if hidden is None:
        layers = [nn.Linear(d, n_classes)]
        nn.init.zeros_(layers[0].weight)
        nn.init.zeros_(layers[0].bias)
    else:
        layers = [nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
        with torch.no_grad():
            for layer in layers[::2]:
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1) * bound)
                layer.bias.zero_()
    probe = nn.Sequential(_Standardize(mean, std), *layers).to(device=features.device, dtype=features.dtype)
    weights = [m.weight for m in probe if isinstance(m, nn.Linear)]
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    Xtr, Xte = Xtr.detach(), Xte.detach()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(Xtr), ytr) + 0.5 * l2 * sum((w * w).sum() for w in weights)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    probe.eval()
    with torch.no_grad():
        acc_tr = (probe(Xtr).argmax(1) == ytr).double().mean().item()
        acc_te = (probe(Xte).argmax(1) == yte).double().mean().item()
    return Probe(acc_tr, acc_te, probe)
