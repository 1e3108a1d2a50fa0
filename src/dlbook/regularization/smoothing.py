"""Label smoothing (chapter 5, notebook 6): targets (1 - eps) onehot + eps / K and the cross-entropy against them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlbook.regularization._checks import _class_ids, _positive_int, _probability, _tensor

__all__ = [
    "smoothed_targets", "smoothed_cross_entropy",
]


def smoothed_targets(target: torch.Tensor, num_classes: int, eps: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Label-smoothed target distributions: (1 - eps) * onehot(target) + eps / K.

    The true class gets 1 - eps + eps/K and every other class eps/K (not eps/(K-1)):
    that is the convention of ``F.cross_entropy(..., label_smoothing=eps)``.

    Args:
        target: class ids (N,), or probability rows (N, K) that are smoothed the same way.
        num_classes: K. eps: in [0, 1).
        dtype: of the result; default float32 for class ids, the targets' own dtype for probabilities.

    Returns:
        (N, K) float rows that sum to 1.
    """
    K = _positive_int("num_classes", num_classes)
    eps = _probability("eps", eps)
    _tensor("target", target, floating=False)
    if target.is_floating_point():
        if target.dim() != 2 or target.shape[1] != K:
            raise ValueError(f"probability targets must have shape (N, {K}), got {tuple(target.shape)}")
        q = target if dtype is None else target.to(dtype)
    else:
        q = F.one_hot(_class_ids("target", target, len(target), K), K).to(dtype or torch.float32)
    return (1.0 - eps) * q + eps / K


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against label-smoothed targets: mean_n -sum_k q_nk log softmax(z_n)_k.

    q = (1 - eps) * onehot + eps / K (see :func:`smoothed_targets`). Equals
    ``F.cross_entropy(logits, target, label_smoothing=eps)``, for class ids and for
    probability targets (mixup's soft labels) alike; ``eps=0`` is plain cross-entropy.

    Args:
        logits: (N, K). target: class ids (N,) or probability rows (N, K). eps: in [0, 1).

    Returns:
        A 0-d tensor.
    """
    _tensor("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    _tensor("target", target, floating=False)
    if not target.is_floating_point():
        _class_ids("target", target, logits.shape[0], logits.shape[1])
    elif target.shape != logits.shape:
        raise ValueError(f"probability targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    q = smoothed_targets(target, logits.shape[1], eps, dtype=logits.dtype)
    return -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
