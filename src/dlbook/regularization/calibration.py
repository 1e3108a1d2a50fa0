"""Calibration and uncertainty (chapter 5, notebook 6).

``expected_calibration_error`` and ``reliability_curve`` measure top-label calibration in
equal-width bins; ``mc_dropout_predict`` (dropout at test time), ``predictive_entropy`` and
``auroc`` use the spread of the predictions as an uncertainty estimate. Probabilities ``probs``
are (N, K) rows that sum to 1; class ids ``target`` are int64 of shape (N,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlbook.regularization._checks import _class_ids, _positive_int, _tensor
from dlbook.regularization.dropout import Dropout

__all__ = [
    "expected_calibration_error", "reliability_curve", "predictive_entropy", "mc_dropout_predict", "auroc",
]


def _check_probs(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _tensor("probs", probs)
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, K) with N >= 1, got {tuple(probs.shape)}")
    _class_ids("target", target, probs.shape[0], probs.shape[1])
    if bool((probs < 0).any()) or not torch.allclose(probs.sum(1).double(), torch.ones((), dtype=torch.float64,
                                                                                         device=probs.device), atol=1e-3):
        raise ValueError("probs must be probabilities: non-negative rows that sum to 1 (apply softmax to logits first)")
    return target.long()


def reliability_curve(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15):
    """Top-label confidence against accuracy, in ``n_bins`` equal-width confidence bins.

    Each prediction's confidence is c = max_k p_k, its prediction argmax_k p_k.
    Bin b holds the confidences in (b/B, (b+1)/B] (the first bin includes 0).

    Args:
        probs: (N, K) probabilities. target: (N,) class ids. n_bins: B >= 1.

    Returns:
        (confidence, accuracy, count), each of shape (B,), float64 on the CPU:
        the mean confidence and the accuracy of the predictions in each bin (NaN
        for an empty bin) and how many predictions fell in it. A perfectly
        calibrated model has accuracy = confidence in every bin.
    """
    n_bins = _positive_int("n_bins", n_bins)
    target = _check_probs(probs, target)
    conf, pred = probs.detach().double().cpu().max(dim=1)
    correct = (pred == target.cpu()).double()
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    sum_conf = torch.bincount(bins, weights=conf, minlength=n_bins)
    sum_acc = torch.bincount(bins, weights=correct, minlength=n_bins)
    nan = torch.full_like(count, float("nan"))
    return (torch.where(count > 0, sum_conf / count.clamp_min(1), nan),
            torch.where(count > 0, sum_acc / count.clamp_min(1), nan), count)


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: sum_b (``|B_b|`` / N) * ``|acc(B_b) - conf(B_b)|``.

    Top-label confidence, ``n_bins`` equal-width bins on [0, 1] (see
    :func:`reliability_curve`), empty bins contributing 0. 0 is perfect; the value
    depends on the bin count, so report it with the ECE.

    Args:
        probs: (N, K) probabilities (rows sum to 1). target: (N,) class ids. n_bins: >= 1.

    Returns:
        A float in [0, 1].
    """
    conf, acc, count = reliability_curve(probs, target, n_bins)
    gap = torch.where(count > 0, (acc - conf).abs(), torch.zeros_like(conf))
    return float((count * gap).sum() / count.sum())


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each predictive distribution: H(p) = -sum_k p_k log p_k (nats; 0 log 0 = 0).

    Args:
        probs: (..., K) probabilities.

    Returns:
        (...,): between 0 (certain) and log K (uniform).
    """
    _tensor("probs", probs)
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def _dropout_layers(model: nn.Module) -> list[nn.Module]:
    kinds = (Dropout, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
    return [m for m in model.modules() if isinstance(m, kinds)]


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, x: torch.Tensor, passes: int = 20) -> torch.Tensor:
    """Monte Carlo dropout: ``passes`` stochastic forward passes with only the dropout layers active.

    Every other layer stays in eval mode (batch norm uses its running statistics),
    so the passes differ only by their dropout masks; the mean of the returned
    probabilities is the MC-dropout prediction (Gal and Ghahramani, 2016). The
    model's train/eval modes are restored afterwards.

    Args:
        model: maps x (N, ...) to logits (N, K); must contain a dropout layer
            (``Dropout`` or ``torch.nn.Dropout``). x: a batch on the model's device.
        passes: T >= 1.

    Returns:
        (T, N, K) softmax probabilities.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    passes = _positive_int("passes", passes)
    layers = _dropout_layers(model)
    if not layers:
        raise ValueError("model has no dropout layer, so every pass would give the same output")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in layers:
            m.train()
        return torch.stack([F.softmax(model(x), dim=-1) for _ in range(passes)])
    finally:
        for m, mode in modes.items():
            m.train(mode)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Ties count one half (the Mann-Whitney U statistic divided by n_pos * n_neg), so
    it equals ``sklearn.metrics.roc_auc_score(labels, scores)``. 0.5 is chance.

    Args:
        scores: (N,) real numbers, higher meaning "more likely positive".
        labels: (N,) booleans or 0/1, with at least one of each.

    Returns:
        A float in [0, 1].
    """
    _tensor("scores", scores)
    _tensor("labels", labels, floating=False)
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both have shape (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    pos = labels.bool().cpu()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain at least one positive and one negative")
    s = scores.detach().double().cpu()
    # Average ranks (ties share the mean of their ranks), 1-based.
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
