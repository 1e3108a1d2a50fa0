"""Probing (chapter 7, notebook 5): ``linear_probe`` trains a linear (or one-hidden-layer) classifier on frozen
features.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dlbook._checks import check_int as _check_int
from dlbook.interpret._checks import _check_number

__all__ = [
    "linear_probe", "Probe",
]


class Probe(NamedTuple):
    """What ``linear_probe`` returns: accuracies on the training and held-out rows, and the fitted probe."""

    train_accuracy: float
    test_accuracy: float
    model: nn.Module


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def linear_probe(features: torch.Tensor, labels: torch.Tensor, *, hidden: int | None = None,
                 test_frac: float = 0.25, test_mask: torch.Tensor | None = None, l2: float = 1e-3,
                 max_iter: int = 200, standardize: bool = True, seed: int = 0) -> Probe:
    """Train a probe on frozen features: can a property be read off them?

    A linear probe is multinomial logistic regression, fitted full-batch with L-BFGS:

    .. math::  \\min_{W, b}\\ \\frac1n \\sum_i \\mathrm{CE}(W h_i + b,\\ y_i) + \\frac{\\lambda}{2} \\lVert W \\rVert^2

    (the same optimum as scikit-learn's ``LogisticRegression(C = 1 / (lambda n))``).
    With ``hidden`` it is a one-hidden-layer ReLU MLP (the penalty then covers both
    weight matrices). High held-out accuracy means the property is *decodable*,
    not that the model *uses* it; compare with a control task (random labels per
    token type) to see how much comes from the probe's own capacity.

    Args:
        features: (N, d) frozen representations. labels: (N,) int64 classes.
        hidden: width of the MLP probe's hidden layer, or None for a linear probe.
        test_frac: share of rows held out (a random split from ``seed``), if no test_mask.
        test_mask: (N,) bool, True for the held-out rows; overrides test_frac.
        l2: the penalty lambda >= 0. max_iter: L-BFGS iterations.
        standardize: scale each feature by the training rows' mean and std first.
        seed: seeds the split and the MLP's initialization.

    Returns:
        ``Probe(train_accuracy, test_accuracy, model)``; ``model`` maps raw features
        (N, d) to logits (N, C), the standardization included.

    Raises:
        ValueError: shapes that do not match, an empty split, bad hyperparameters.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a float tensor of shape (N, d), got {tuple(getattr(features, 'shape', ()))}")
    n, d = features.shape
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape (N,) = ({n},), got "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    l2 = _check_number("l2", l2)
    max_iter = _check_int("max_iter", max_iter)
    if hidden is not None:
        hidden = _check_int("hidden", hidden)
    g = torch.Generator().manual_seed(seed)
    if test_mask is None:
        if not 0 < test_frac < 1:
            raise ValueError(f"test_frac must be in (0, 1), got {test_frac!r}")
        test_mask = torch.zeros(n, dtype=torch.bool)
        test_mask[torch.randperm(n, generator=g)[: round(n * test_frac)]] = True
    if not isinstance(test_mask, torch.Tensor) or test_mask.shape != (n,) or test_mask.dtype != torch.bool:
        raise ValueError(f"test_mask must be a bool tensor of shape ({n},)")
    test_mask = test_mask.to(features.device)
    labels = labels.to(features.device, torch.long)
    Xtr, ytr, Xte, yte = features[~test_mask], labels[~test_mask], features[test_mask], labels[test_mask]
    if len(ytr) == 0 or len(yte) == 0:
        raise ValueError("the split leaves no training or no held-out rows")
    n_classes = int(labels.max()) + 1
    if standardize:
        mean, std = Xtr.mean(0), Xtr.std(0, correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros_like(Xtr[0]), torch.ones_like(Xtr[0])
    if hidden is None:
        layers = [nn.Linear(d, n_classes)]
        nn.init.zeros_(layers[0].weight)
        nn.init.zeros_(layers[0].bias)
    else:
        layers = [nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
        with torch.no_grad():
            for layer in layers[::2]:
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1) * bound)
                layer.bias.zero_()
    probe = nn.Sequential(_Standardize(mean, std), *layers).to(device=features.device, dtype=features.dtype)
    weights = [m.weight for m in probe if isinstance(m, nn.Linear)]
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    Xtr, Xte = Xtr.detach(), Xte.detach()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(Xtr), ytr) + 0.5 * l2 * sum((w * w).sum() for w in weights)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    probe.eval()
    with torch.no_grad():
        acc_tr = (probe(Xtr).argmax(1) == ytr).double().mean().item()
        acc_te = (probe(Xte).argmax(1) == yte).double().mean().item()
    return Probe(acc_tr, acc_te, probe)
