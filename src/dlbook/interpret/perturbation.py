"""Perturbation attributions and deletion curves (chapter 7, notebooks 3 and 4).

``occlusion`` slides a patch of baseline values over the input (``occlusion_masks`` gives the
patches), ``permutation_importance`` shuffles one feature column on held-out data and measures
how much a metric drops, and ``deletion_curve`` scores an attribution map by deleting (or
inserting) its most important features first.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch

from dlbook._checks import check_int as _check_int
from dlbook.interpret._checks import _baseline, _check_model, _EvalMode, _prepare, _target_logits

__all__ = [
    "occlusion", "occlusion_masks", "permutation_importance", "Importances", "deletion_curve",
]


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
              batch_size: int | None = None) -> torch.Tensor:
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

    Returns:
        Attributions of shape ``(N, *F)``.

    Raises:
        ValueError: a window larger than the input or a stride larger than the window,
            a target out of range, a baseline whose shape does not match x.
    """
    target = _prepare(model, x, target)
    x0 = x.detach()
    n, feat = x.shape[0], tuple(x.shape[1:])
    masks = occlusion_masks(feat, window, stride).to(device=x.device, dtype=x.dtype)      # (K, *F)
    base = _baseline(baseline, x0)
    k = masks.shape[0]
    chunk = _check_int("batch_size", batch_size) if batch_size is not None else n * k
    hidden = (x0[:, None] * (1 - masks) + base[:, None] * masks).reshape(n * k, *feat)     # (N * K, *F)
    tgt = target.repeat_interleave(k)
    with _EvalMode(model), torch.no_grad():
        full = _target_logits(model, x0, target)                                            # (N,)
        occluded = torch.cat([_target_logits(model, hidden[i:i + chunk], tgt[i:i + chunk])
                              for i in range(0, n * k, chunk)]).view(n, k)
    drop = full[:, None] - occluded                                                         # (N, K)
    flat = masks.flatten(1)                                                                  # (K, prod F)
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
    target = _prepare(model, x, target)
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
