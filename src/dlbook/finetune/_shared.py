"""Helpers the fine-tuning methods share: an int check, peft's name matching, swapping a submodule, and a
model's Transformer blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from dlbook.transformer import TransformerBlock


def _check_positive_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule: a module matches a target when its full name is the target or ends in '.' + target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _blocks(model: nn.Module) -> list[TransformerBlock]:
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no dlbook.transformer.TransformerBlock to adapt")
    return blocks
