"""Distillation (chapter 6, notebook 3): the loss of a student that learns from a teacher.

Distillation trains a student on a teacher's softened probabilities::

    loss = distillation_loss(student(x), teacher(x), y, T=4.0, alpha=0.9)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "distillation_loss",
]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None,
                      T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Knowledge-distillation loss: soft targets from a teacher plus the usual cross-entropy.

    .. math::

        L = \\alpha\\, T^2\\, \\mathrm{KL}(p_T^{teacher} \\,\\|\\, p_T^{student}) + (1 - \\alpha)\\, \\mathrm{CE}(z^{student}, y),
        \\qquad p_T = \\mathrm{softmax}(z / T).

    The KL term is ``F.kl_div(log_softmax(z_s / T), softmax(z_t / T), reduction="batchmean")``
    (the student's *log*-probabilities first). Its gradient with respect to the student's logits
    scales as 1/T^2 for large T, so the factor T^2 keeps the soft and hard terms balanced when T
    changes. The teacher's logits are detached: no gradient flows into the teacher.

    Args:
        student_logits, teacher_logits: (N, C).
        target: (N,) class ids, or None when ``alpha == 1`` (an unlabelled transfer set).
        T: temperature > 0 (use T = 1, a plain softmax, at inference).
        alpha: weight in [0, 1] of the soft term.

    Returns:
        A 0-d tensor, the batch mean.
    """
    if not isinstance(T, (int, float)) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"T must be a positive temperature, got {T!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a weight in [0, 1], got {alpha!r}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must both be (N, C), got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if target is None and alpha < 1.0:
        raise ValueError("target is None, so alpha must be 1 (soft targets only); pass labels to mix in cross-entropy")
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.softmax(teacher_logits.detach() / T, dim=-1),
                    reduction="batchmean")
    loss = alpha * T * T * soft
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, target)
    return loss
