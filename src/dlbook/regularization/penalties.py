"""Norm penalties and weight decay (chapter 5, notebooks 2 and 3).

``l2_penalty`` ((1/2) sum w^2) and ``l1_penalty`` (sum ``|w|``), ``soft_threshold`` (the proximal
step of t * ||w||_1, which gives exact zeros) and ``decay_groups`` (optimizer groups with no decay
on biases and normalization parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from dlbook.regularization._checks import _params, _tensor

__all__ = [
    "l1_penalty", "l2_penalty", "soft_threshold", "decay_groups",
]


def l2_penalty(params) -> torch.Tensor:
    """(1/2) sum_i ||w_i||^2 over the given tensors; its gradient with respect to w is w itself.

    So ``loss + lam * l2_penalty(params)`` has gradient ``grad(loss) + lam * w``: one SGD
    step on it equals one step of ``torch.optim.SGD(..., weight_decay=lam)``.

    Args:
        params: an iterable of tensors (``model.parameters()``, one group's params) or an nn.Module.

    Returns:
        A 0-d tensor, differentiable.
    """
    return 0.5 * sum((p * p).sum() for p in _params(params))


def l1_penalty(params) -> torch.Tensor:
    """sum_i ||w_i||_1 = sum of ``|w|`` over the given tensors; its (sub)gradient is sign(w).

    Gradient descent on ``loss + lam * l1_penalty`` pushes every weight toward 0 by
    lr * lam per step but, with steps of fixed size, makes it jump around 0 rather
    than land on it: exact zeros need the proximal step :func:`soft_threshold`.

    Args:
        params: an iterable of tensors or an nn.Module.

    Returns:
        A 0-d tensor, differentiable (torch uses sign(0) = 0 at w = 0).
    """
    return sum(p.abs().sum() for p in _params(params))


def soft_threshold(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """The proximal operator of threshold * ||w||_1: sign(w) * max(``|w|`` - threshold, 0).

    Proximal gradient descent for loss + lam ||w||_1 takes a plain gradient step on the
    loss, then ``w = soft_threshold(w, lr * lam)``: every weight with ``|w|`` <= lr * lam
    becomes exactly 0. Equal to ``torch.nn.functional.softshrink(w, threshold)``.

    Args:
        w: any shape. threshold: >= 0.

    Returns:
        A tensor of w's shape.
    """
    _tensor("w", w)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    return w.sign() * (w.abs() - threshold).clamp_min(0)


_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                 nn.modules.instancenorm._InstanceNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    from dlbook import norm as _norm                  # the book's own normalization layers (chapter 2)
    return isinstance(module, (_norm._BatchNorm, _norm.LayerNorm, _norm.GroupNorm, _norm.InstanceNorm2d, _norm.RMSNorm))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups that apply weight decay only to weight matrices and kernels.

    A parameter is decayed when it has two or more dimensions (a Linear weight
    (out, in), a Conv kernel (out, in, kh, kw), an embedding) and does not belong to
    a normalization layer. Biases and the gains and shifts of normalization layers
    are not: shrinking a bias toward 0 does not make the function simpler, and a
    norm's gain only sets a scale that the next layer can undo.

    Usage: ``torch.optim.AdamW(decay_groups(model, 0.05), lr=1e-3)``.

    Args:
        model: any nn.Module. weight_decay: >= 0, the decay of the first group.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]``
        (a group without parameters is left out). Frozen parameters (requires_grad False) are skipped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        in_norm = _is_norm(module)
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and not in_norm else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
