"""Attacks that measure leakage: membership inference, ROC curves and canary exposure.

``per_example_loss`` gives the loss-threshold attack's scores; ``roc_curve``, ``roc_auc`` and
``tpr_at_fpr`` measure how well scores separate members from non-members, and
``membership_inference_auc`` puts them together. For language models,
``sequence_log_likelihood`` scores a planted canary against random candidates, and ``exposure``
and ``canary_exposure`` turn its rank into bits (Carlini et al. 2019).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from dlbook.privacy._checks import _check_int, _check_model

__all__ = [
    "per_example_loss", "roc_curve", "roc_auc", "tpr_at_fpr", "membership_inference_auc", "sequence_log_likelihood",
    "exposure", "canary_exposure",
]


@torch.no_grad()
def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of each example under ``model`` (eval mode), shape (N,), on the CPU in float64."""
    _check_model(model)
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = []
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(dev))
            logits = logits[0] if isinstance(logits, tuple) else logits
            out.append(F.cross_entropy(logits.double(), y[i:i + batch_size].to(dev), reduction="none").cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def _scores(s) -> torch.Tensor:
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1).cpu()
    if len(s) == 0:
        raise ValueError("scores must not be empty")
    return s


def roc_curve(pos_scores, neg_scores) -> tuple[torch.Tensor, torch.Tensor]:
    """False- and true-positive rates of "positive if score >= t" over every threshold t.

    Args:
        pos_scores: (P,) scores of the positives (members); neg_scores: (M,) of the negatives.

    Returns:
        (fpr, tpr): float64 tensors starting at (0, 0) and ending at (1, 1), fpr non-decreasing.
    """
    pos, neg = _scores(pos_scores), _scores(neg_scores)
    thresholds = torch.unique(torch.cat([pos, neg])).flip(0)
    tpr = (pos[None, :] >= thresholds[:, None]).double().mean(1)
    fpr = (neg[None, :] >= thresholds[:, None]).double().mean(1)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])


def roc_auc(pos_scores, neg_scores) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting one half."""
    pos, neg = _scores(pos_scores), _scores(neg_scores)
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(pos_scores, neg_scores, fpr: float) -> float:
    """The largest true-positive rate over thresholds whose false-positive rate is <= ``fpr``."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    f, t = roc_curve(pos_scores, neg_scores)
    return float(t[f <= fpr + 1e-12].max())


def membership_inference_auc(model: nn.Module, members, non_members) -> float:
    """AUC of the loss-threshold attack (Yeom et al. 2018): "a member if its loss is low".

    Args:
        model: a classifier mapping x (N, ...) to logits (N, C).
        members: ``(x, y)`` training examples; non_members: ``(x, y)`` examples never trained on.

    Returns:
        The attack's AUC in [0, 1]; 0.5 means it cannot tell members from non-members.
    """
    _check_model(model)
    for name, pair in (("members", members), ("non_members", non_members)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name} must be a pair (x, y) of tensors")
    return roc_auc(-per_example_loss(model, *members), -per_example_loss(model, *non_members))


# ----------------------------------------------------------------------------- canaries

@torch.no_grad()
def sequence_log_likelihood(model: nn.Module, ids: torch.Tensor, prefix_len: int = 1) -> torch.Tensor:
    """Log-likelihood (nats) of each sequence's tokens after a prefix, under a causal language model.

    Args:
        model: maps ids (K, T) to logits (K, T, V) or to (logits, ...) like ``dlbook.transformer.GPT``.
        ids: (K, T) token ids. prefix_len: tokens given as context (>= 1): the sum runs over
            positions prefix_len .. T-1, each predicted from everything before it.

    Returns:
        (K,) float64 tensor: :math:`\\sum_{t\\ge p} \\log P(x_t \\mid x_{<t})`.
    """
    _check_model(model)
    prefix_len = _check_int("prefix_len", prefix_len, 1)
    if ids.dim() != 2 or ids.shape[1] <= prefix_len:
        raise ValueError(f"ids must be (K, T) with T > prefix_len={prefix_len}, got shape {tuple(ids.shape)}")
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = model(ids.to(dev))
        logits = out[0] if isinstance(out, tuple) else out
        logp = torch.log_softmax(logits.double(), -1)[:, :-1]                  # predicts tokens 1..T-1
        tok = logp.gather(-1, ids.to(dev)[:, 1:, None]).squeeze(-1)            # (K, T-1)
        return tok[:, prefix_len - 1:].sum(1).cpu()
    finally:
        model.train(was)


def exposure(canary_score: float, candidate_scores) -> float:
    """Exposure of a canary (Carlini et al. 2019): log2 ``|R|`` - log2 rank.

    The rank is 1 + the number of candidates scoring strictly higher (a higher score is more
    likely under the model); ``|R|`` is the number of candidates plus the canary. A canary the model
    has not memorized has rank about ``|R|`` / 2 and exposure about 1; the most likely of them all
    has exposure log2 ``|R|``.
    """
    cand = _scores(candidate_scores)
    rank = 1 + int((cand > float(canary_score)).sum())
    return math.log2(len(cand) + 1) - math.log2(rank)


def canary_exposure(model: nn.Module, canary: torch.Tensor, candidates: torch.Tensor, prefix_len: int = 1) -> float:
    """Exposure of a planted sequence among random alternatives that share its prefix.

    Args:
        model: a causal language model (see ``sequence_log_likelihood``).
        canary: (T,) token ids of the planted sequence. candidates: (K, T) alternatives (same
            prefix, random secret part), not containing the canary.
        prefix_len: length of the shared prefix; only the secret part is scored.

    Returns:
        ``exposure(ll(canary), ll(candidates))``, between 0 and log2(K + 1).
    """
    if canary.dim() != 1 or candidates.dim() != 2 or candidates.shape[1] != canary.shape[0]:
        raise ValueError(f"canary must be (T,) and candidates (K, T), got {tuple(canary.shape)} and "
                         f"{tuple(candidates.shape)}")
    scores = sequence_log_likelihood(model, torch.cat([canary[None], candidates]), prefix_len)
    return exposure(float(scores[0]), scores[1:])
