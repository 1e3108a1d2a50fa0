"""Inverted dropout (chapter 5, notebook 4): ``dropout(x, p, training)`` and the layer ``Dropout(p)``.

``p`` is the probability of *dropping* a unit, as in ``torch.nn.Dropout``; the dropout paper
(Srivastava et al., 2014) writes p for the probability of *keeping* it.
"""

from __future__ import annotations

import torch
from torch import nn

from dlbook.regularization._checks import _probability, _tensor

__all__ = [
    "Dropout", "dropout",
]


def dropout(x: torch.Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout: zero each entry with probability p, scale the survivors by 1 / (1 - p).

    In training, y = m * x / (1 - p) with m ~ Bernoulli(1 - p) drawn independently
    for every entry, so E[y] = x: the expected activation is the same as at test
    time, where dropout is the identity (``training=False``) and nothing needs
    rescaling. ``p`` is the *drop* probability, as in ``torch.nn.functional.dropout``.

    Args:
        x: any shape, floating point.
        p: drop probability in [0, 1).
        training: apply dropout (True) or return x unchanged (False).
        generator: optional ``torch.Generator`` for the mask (on x's device, or on
            the CPU: the mask is then moved to x's device).

    Returns:
        A tensor of x's shape.
    """
    _tensor("x", x)
    p = _probability("p", p)
    if not training or p == 0.0:
        return x
    where = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)
    keep = u >= p                                     # P(keep) = 1 - p
    return x * keep / (1.0 - p)


class Dropout(nn.Module):
    """Inverted dropout as a layer: :func:`dropout` in ``train()`` mode, the identity in ``eval()``.

    Args:
        p: drop probability in [0, 1) (``torch.nn.Dropout``'s convention; the dropout
            paper's p is the keep probability 1 - p).

    Shape: input of any shape -> output of the same shape.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _probability("p", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
