"""Adapters (Houlsby et al. 2019): a bottleneck MLP with a residual, h + W_up act(W_down h), inserted
after the attention and after the FFN of every ``TransformerBlock`` (``add_adapters``); W_up = 0 at
initialization, so the adapted model starts as the base.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.finetune._shared import _blocks, _check_positive_int
from dlbook.finetune.trainable import freeze

__all__ = [
    "Adapter", "add_adapters",
]


class Adapter(nn.Module):
    """A bottleneck adapter with a residual (Houlsby et al. 2019).

    .. math:: y = h + W_{up}\\, \\mathrm{GELU}(W_{down} h + b_{down}) + b_{up}

    with W_down (m, C) and W_up (C, m), m = ``bottleneck``. W_up and b_up start at zero,
    so the adapter starts as the identity (the pretrained model is unchanged) and
    W_up gets a gradient at once. Trainable parameters: 2 m C + m + C.

    Args:
        dim: C, the width of the hidden states it adapts.
        bottleneck: m >= 1.

    Shapes: (..., C) -> (..., C).
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("bottleneck", bottleneck)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class _Then(nn.Module):
    """module(*args, **kwargs) followed by adapter: a wrapper that keeps the module's call signature."""

    def __init__(self, module: nn.Module, adapter: nn.Module):
        super().__init__()
        self.module, self.adapter = module, adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.module(*args, **kwargs))


def add_adapters(model: nn.Module, bottleneck: int, keep_trainable: Iterable[str] = ()) -> nn.Module:
    """Insert an ``Adapter`` after the attention and after the FFN of every ``TransformerBlock``.

    Each adapter sits inside its residual branch, before the addition (Houlsby's
    placement), and the rest of the model is frozen. The adapters run *after* the
    layer they follow, so unlike LoRA they add sequential work at inference.

    Args:
        model: a model built from ``dlbook.transformer.TransformerBlock``; changed in place.
        bottleneck: m, the adapters' hidden width.
        keep_trainable: module names that stay trainable too.

    Returns:
        ``model``.
    """
    blocks = _blocks(model)
    freeze(model, keep_trainable)
    for block in blocks:
        c = block.attn.n_embd
        block.attn = _Then(block.attn, Adapter(c, bottleneck).to(block.ln1.weight.device))
        block.ffn = _Then(block.ffn, Adapter(c, bottleneck).to(block.ln1.weight.device))
    return model
