"""Pruning (chapter 6, notebook 2): masks of small weights, and removing whole neurons.

Pruning sets weights to zero (a mask) or removes whole neurons (a smaller model)::

    masks = magnitude_prune(model, 0.8, scope="global")   # the 80% smallest |w| of all layers
    apply_masks(model, masks)                             # after every optimizer step
    small = prune_neurons(model, 0.5)                     # half the hidden neurons, physically gone
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "magnitude_prune", "apply_masks", "prune_neurons",
]


_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_amount(amount) -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    return float(amount)


def _prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    weights = {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
               if isinstance(m, _PRUNABLE)}
    if not weights:
        raise ValueError("the model has no Linear or Conv layer whose weights could be pruned")
    return weights


def _smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True everywhere except at the k smallest scores (the way torch.nn.utils.prune picks them)."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.reshape(-1), k=k, largest=False).indices] = False
    return mask.reshape(scores.shape)


@torch.no_grad()
def magnitude_prune(model: nn.Module, amount: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks that remove the fraction ``amount`` of weights with the smallest magnitude ``|w|``.

    Only the ``weight`` of Linear and Conv layers is pruned (biases are few and cheap).
    With ``scope="global"`` one threshold is used for all layers together, so layers with
    many small weights lose more; ``"layer"`` removes ``amount`` of every layer. The number
    removed is ``round(amount * n)`` (n: weights in the scope), the k smallest by ``torch.topk``,
    exactly as ``torch.nn.utils.prune.global_unstructured`` / ``l1_unstructured`` choose them.

    Weights already at 0 have the smallest magnitude, so for iterative pruning call it again
    with a larger ``amount``: it is the *total* fraction of zeros (torch's ``prune`` counts
    a fraction of the weights that remain instead).

    Args:
        model: any module with Linear or Conv layers. It is not changed: see ``apply_masks``.
        amount: fraction in [0, 1) of weights to remove.
        scope: ``"global"`` or ``"layer"``.

    Returns:
        ``{parameter name: bool mask}``, each mask the shape of its weight, False = pruned.
    """
    amount = _check_amount(amount)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    weights = _prunable_weights(model)
    if scope == "layer":
        return {name: _smallest_mask(w.abs(), round(amount * w.numel())) for name, w in weights.items()}
    scores = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    flat = _smallest_mask(scores, round(amount * scores.numel()))
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = flat[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned weights in place: ``w <- w * mask`` for every ``{name: mask}``.

    Call it after every optimizer step while fine-tuning a pruned model: the gradient of a
    pruned weight is not zero, and momentum keeps moving it even when it is, so without the
    mask pruned weights come back. Returns the model.

    Raises:
        KeyError: if a name is not a parameter of the model. ValueError: on a shape mismatch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"{name!r} is not a parameter of the model; masks come from magnitude_prune(model, ...)")
        p = params[name]
        if mask.shape != p.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight {tuple(p.shape)}")
        p.mul_(mask.to(device=p.device, dtype=p.dtype))
    return model


_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.Identity, nn.Dropout,
                nn.Sequential, nn.ModuleList)


@torch.no_grad()
def prune_neurons(model: nn.Module, amount: float, norm: float = 2.0) -> nn.Module:
    """A copy of an MLP with the fraction ``amount`` of each hidden layer's neurons removed.

    Hidden neuron j of a Linear layer has an incoming weight row ``W[j, :]`` and an outgoing
    column ``W_next[:, j]`` in the next Linear. The neurons whose rows have the smallest
    L_p norm ``||W[j, :]||_p`` are dropped: their rows (and biases) and the matching columns
    of the next layer are cut out, so the returned model has physically smaller matrices,
    (out, in) -> (out - k, in) and (next_out, out) -> (next_out, out - k), and runs
    faster with any dense kernel. The output layer keeps all its units.

    Args:
        model: a module whose Linear layers, in ``model.modules()`` order, form a chain
            (each one's ``out_features`` is the next one's ``in_features``) with only
            elementwise layers (ReLU, GELU, Tanh, Dropout, ...) between them, e.g.
            ``dlbook.mlp.MLP`` or an ``nn.Sequential``.
        amount: fraction in [0, 1) of each hidden layer's neurons to remove (``round``).
        norm: p of the L_p norm used to rank neurons (> 0).

    Returns:
        A new module (``copy.deepcopy``) with smaller Linear layers; the input is unchanged.

    Raises:
        ValueError: if the Linear layers do not form such a chain, or another layer holds parameters.
    """
    amount = _check_amount(amount)
    if not isinstance(norm, (int, float)) or isinstance(norm, bool) or not norm > 0:
        raise ValueError(f"norm must be a positive number (the p of the L_p norm), got {norm!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    new = copy.deepcopy(model)
    linears = [m for m in new.modules() if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in new.modules()
              if not isinstance(m, (nn.Linear, *_ELEMENTWISE)) and any(True for _ in m.parameters(recurse=False))]
    if len(linears) < 2:
        raise ValueError("prune_neurons needs at least two Linear layers (a hidden layer feeding another layer)")
    if others:
        raise ValueError(f"prune_neurons only shrinks chains of Linear layers; these layers hold parameters "
                         f"it would have to cut too: {sorted(set(others))}")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"Linear layers do not form a chain: {a.out_features} outputs feed {b.in_features} inputs")
    for layer, nxt in zip(linears[:-1], linears[1:]):
        k = round(amount * layer.out_features)
        if k == 0:
            continue
        keep = torch.topk(layer.weight.norm(p=norm, dim=1), layer.out_features - k).indices.sort().values
        layer.weight = nn.Parameter(layer.weight[keep].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[keep].clone())
        layer.out_features = len(keep)
        nxt.weight = nn.Parameter(nxt.weight[:, keep].clone())
        nxt.in_features = len(keep)
    if isinstance(getattr(new, "sizes", None), list):              # dlbook.mlp.MLP records its widths
        new.sizes = [linears[0].in_features] + [m.out_features for m in linears]
    return new
