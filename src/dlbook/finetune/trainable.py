"""Which parameters train: ``freeze`` (all but the named modules) and ``count_trainable``."""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from dlbook.finetune._shared import _matches
from dlbook.transformer import count_parameters

__all__ = [
    "freeze", "count_trainable",
]


def freeze(model: nn.Module, keep_trainable: Iterable[str] = ()) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter except those under ``keep_trainable``.

    Args:
        model: any module; changed in place.
        keep_trainable: module names (matched like peft's ``target_modules``: the full
            name or a dotted suffix, e.g. ``"head"``) whose parameters stay trainable.

    Returns:
        ``model``.
    """
    if isinstance(keep_trainable, str):
        raise TypeError(f"keep_trainable must be a list of names, got the string {keep_trainable!r}")
    keep = list(keep_trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if keep and _matches(name, keep):
            for p in module.parameters():
                p.requires_grad_(True)
    return model


def count_trainable(model: nn.Module) -> int:
    """Number of distinct trainable parameters (``requires_grad``; a tied weight counts once)."""
    return count_parameters(model, trainable_only=True)
