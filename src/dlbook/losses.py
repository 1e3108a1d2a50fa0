"""Loss functions written out, in their numerically stable forms (chapter 0).

All losses average over the batch, like PyTorch's default ``reduction="mean"``.

    mse(y_hat, y)                = mean (y_hat - y)^2
    bce_with_logits(z, y)        = mean [ max(z, 0) - z y + log(1 + exp(-abs(z))) ]
    cross_entropy(Z, y)          = mean [ logsumexp(Z_i) - Z_{i, y_i} ]

The logit forms never take the log of a probability that has rounded to 0 or
1, which is why they stay finite where ``-log(sigmoid(z))`` becomes ``inf``.
"""

from __future__ import annotations

import torch

__all__ = ["mse", "logsumexp", "log_softmax", "softmax", "bce_with_logits", "cross_entropy",
           "naive_bce", "naive_cross_entropy"]


def _float(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: predictions and targets must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error. Shapes: y_hat and y equal, any shape -> scalar."""
    _float("y_hat", y_hat), _float("y", y)
    _same_shape(y_hat, y, "mse")
    return ((y_hat - y) ** 2).mean()


def logsumexp(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log sum_j exp(z_j) along ``dim``, shifted by the max so exp never overflows.

    Shape: (..., C) -> (...) for dim=-1.
    """
    z = _float("z", z)
    m = z.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf rows stay -inf
    return (z - m).exp().sum(dim=dim).log() + m.squeeze(dim)


def log_softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log softmax(z) = z - logsumexp(z). Shape: unchanged."""
    return z - logsumexp(z, dim=dim).unsqueeze(dim)


def softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(log_softmax(z)): probabilities that sum to 1 along ``dim``. Shape: unchanged."""
    return log_softmax(z, dim=dim).exp()


def bce_with_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy from logits z and targets y in [0, 1]. Shapes: equal -> scalar.

    Uses -log sigmoid(z) = log(1 + exp(-z)) = max(-z, 0) + log(1 + exp(-abs(z))),
    whose exp argument is never positive.
    """
    _float("z", z), _float("y", y)
    _same_shape(z, y, "bce_with_logits")
    return (z.clamp_min(0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy from logits. Shapes: z (N, C), y (N,) class ids -> scalar."""
    _float("z", z)
    if z.dim() != 2:
        raise ValueError(f"cross_entropy expects logits of shape (N, C), got {tuple(z.shape)}")
    if y.dtype not in (torch.int64, torch.int32) or y.shape != z.shape[:1]:
        raise ValueError(f"targets must be class ids of shape ({z.shape[0]},) and integer dtype, "
                         f"got shape {tuple(y.shape)} and dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"class ids must be in [0, {z.shape[1]}), got {int(y.min())}..{int(y.max())}")
    return (logsumexp(z) - z.gather(1, y.long()[:, None]).squeeze(1)).mean()


def naive_bce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The textbook formula -[y log p + (1 - y) log(1 - p)] with p = sigmoid(z).

    Kept only to show how it fails: for abs(z) beyond about 17 (float32) or 37
    (float64), p rounds to exactly 0 or 1 and a log returns -inf.
    """
    p = 1 / (1 + torch.exp(-z))
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def naive_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log softmax(z)[y] computed as exp, sum, divide, log: overflows for large logits."""
    p = torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)
    return -torch.log(p.gather(1, y[:, None]).squeeze(1)).mean()
