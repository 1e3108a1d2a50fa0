"""LoRA, low-rank adaptation (chapter 4, notebook 6).

``LoRALinear``: h = W0 x + b0 + (alpha / r) B A x with W0, b0 frozen, A (r, k) random and B (d, r)
zero, so the wrapped layer equals the base at initialization; ``merge()`` folds (alpha / r) B A
into W0 (no extra latency), ``unmerge()`` takes it out again. ``add_lora`` wraps chosen linear
layers of a model by name (the matching rule of peft's ``target_modules``) and freezes everything
else; ``merge_lora`` / ``unmerge_lora`` do it for a whole model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from dlbook.finetune._shared import _check_positive_int, _matches, _replace
from dlbook.finetune.trainable import freeze

__all__ = [
    "LoRALinear", "add_lora", "merge_lora", "unmerge_lora",
]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    .. math::

        h = W_0 x + b_0 + \\frac{\\alpha}{r} B A x, \\qquad A \\in R^{r \\times k},\\; B \\in R^{d \\times r}

    A is initialized like ``nn.Linear`` (Kaiming-uniform, as peft does) and B = 0, so
    the layer equals its base exactly until B moves. (With both zero the gradients of
    both are zero forever; with both random the model starts changed.) Trainable
    parameters: r (d + k). Dropout (if any) acts on the input of the low-rank path only.

    Args:
        base: the pretrained ``nn.Linear`` (in_features k, out_features d); its weight
            and bias are frozen (``requires_grad=False``), not copied.
        r: rank, 1 <= r <= min(d, k).
        alpha: scale; the update is multiplied by alpha / r.
        dropout: dropout probability on the low-rank path's input.

    Shapes: forward (..., k) -> (..., d). Attributes ``lora_A`` (r, k), ``lora_B`` (d, r)
    (the shapes of peft's ``lora_A.weight`` and ``lora_B.weight``), ``scaling`` = alpha / r,
    ``merged``.

    Raises:
        TypeError: if ``base`` is not an ``nn.Linear``.
        ValueError: if r < 1, r > min(d, k), alpha <= 0 or dropout not in [0, 1).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_positive_int("r", r)
        d, k = base.out_features, base.in_features
        if r > min(d, k):
            raise ValueError(f"r={r} exceeds min(out_features, in_features) = min({d}, {k}): a rank-r update "
                             f"of a {d}x{k} matrix needs r <= {min(d, k)}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base, self.r, self.alpha, self.scaling = base, r, alpha, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, k, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(d, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        """k, the input width of the wrapped layer."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """d, the output width of the wrapped layer."""
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) B A, shape (d, k)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., k) -> W0 x + b0 + (alpha / r) B A x, shape (..., d); after ``merge()`` one matmul."""
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + (alpha / r) B A: inference then costs one matmul, like the base layer.

        Raises:
            RuntimeError: if already merged (merging twice would add the update twice).
        """
        if self.merged:
            raise RuntimeError("this LoRALinear is already merged; call unmerge() before merging again")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - (alpha / r) B A: restores the pretrained weight up to float rounding.

        Raises:
            RuntimeError: if not merged.
        """
        if not self.merged:
            raise RuntimeError("this LoRALinear is not merged; there is nothing to unmerge")
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def add_lora(model: nn.Module, target_modules: Sequence[str], r: int, alpha: float, dropout: float = 0.0,
             keep_trainable: Iterable[str] = ()) -> nn.Module:
    """Wrap the chosen ``nn.Linear`` layers of ``model`` in ``LoRALinear`` and freeze the rest.

    Args:
        model: changed in place.
        target_modules: names matched as in peft's ``LoraConfig(target_modules=...)``:
            a module matches when its full name equals a target or ends with "." + target
            (for a dlbook GPT: ``"attn.qkv"``, ``"attn.proj"``, ``"ffn.0"``, ``"ffn.2"``).
        r, alpha, dropout: as in ``LoRALinear``.
        keep_trainable: module names that stay trainable too (a new task head, say).

    Returns:
        ``model``, whose only trainable parameters are the LoRA factors (and ``keep_trainable``).

    Raises:
        TypeError: if a matched module is not an ``nn.Linear``.
        ValueError: if no module matches.
    """
    if isinstance(target_modules, str):
        raise TypeError(f"target_modules must be a list of names, got the string {target_modules!r}")
    names = [n for n, _ in model.named_modules() if n and _matches(n, target_modules)]
    if not names:
        raise ValueError(f"no module of the model matches target_modules={list(target_modules)}; names look like "
                         f"{[n for n, _ in model.named_modules() if n][:6]}")
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name!r} is a {type(module).__name__}; LoRA here wraps nn.Linear layers only")
    freeze(model, keep_trainable)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Call ``merge()`` on every ``LoRALinear`` of ``model``; returns ``model``."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Call ``unmerge()`` on every ``LoRALinear`` of ``model``; returns ``model``."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    return model
