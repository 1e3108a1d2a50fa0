"""Small models with a pluggable normalization layer, sized for 8x8 digits on a CPU.

The normalization chapter trains the same network with each kind of
normalization, so the choice is one string argument::

    NormMLP(64, 10, norm="batch")            # Linear -> BatchNorm1d -> ReLU, twice, -> Linear
    NormMLP(64, 10, norm="batch", position="after")   # Linear -> ReLU -> BatchNorm1d
    NormCNN(10, norm="group", groups=4)      # Conv -> GroupNorm -> ReLU, twice, -> pool -> Linear
    ContrastNet(norm="instance")             # image -> image, same H x W

Norm names are those of :func:`dlbook.norm.make_norm1d` / :func:`dlbook.norm.make_norm2d`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlbook.norm import make_norm1d, make_norm2d, weight_norm

__all__ = ["NormMLP", "NormCNN", "ContrastNet", "scale_init_"]


def _check_sizes(name: str, sizes) -> list[int]:
    sizes = list(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {sizes!r}")
    return sizes


class NormMLP(nn.Module):
    """An MLP whose hidden layers are Linear, normalization and ReLU.

    Args:
        d_in, d_out: input features and classes.
        hidden: widths of the hidden layers.
        norm: ``"none"``, ``"batch"``, ``"renorm"``, ``"layer"``, ``"group"``, ``"rms"`` (a layer
            after each hidden Linear) or ``"weight"`` (weight normalization of every
            Linear, no activation normalization).
        position: ``"before"`` the activation (Linear -> norm -> ReLU, as in the
            batch-norm paper) or ``"after"`` it (Linear -> ReLU -> norm).
        groups: channel groups for ``norm="group"``.

    Shape: input (N, d_in) -> logits (N, d_out).
    """

    def __init__(self, d_in: int = 64, d_out: int = 10, hidden: Sequence[int] = (64, 64), norm: str = "batch",
                 position: str = "before", groups: int = 4):
        super().__init__()
        sizes = _check_sizes("sizes", [d_in, *hidden, d_out])
        if position not in ("before", "after"):
            raise ValueError(f"position must be 'before' or 'after' the activation, got {position!r}")
        self.norm, self.position = norm, position
        layers: list[nn.Module] = []
        for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
            linear = nn.Linear(width_in, width_out)
            if norm == "weight":
                layers += [weight_norm(linear), nn.ReLU()]
                continue
            layer = make_norm1d(norm, width_out, groups=groups)
            layers += [linear, layer, nn.ReLU()] if position == "before" else [linear, nn.ReLU(), layer]
        last = nn.Linear(sizes[-2], sizes[-1])
        layers.append(weight_norm(last) if norm == "weight" else last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class NormCNN(nn.Module):
    """A small CNN for (N, 1, 8, 8) digits: [Conv3x3 -> norm -> ReLU] per width, then a Linear head.

    The second and later convolutions have stride 2 (8x8 -> 4x4 -> 2x2).

    Args:
        n_classes: outputs. channels: widths of the conv layers.
        norm: any name of :func:`dlbook.norm.make_norm2d`. groups: for ``"group"``.
        in_channels: input channels (1 for digits). image_size: H = W of the input.
        pool: ``"flatten"`` (the head sees every position of the last feature maps) or
            ``"mean"`` (global average pooling, one number per channel). Note that
            instance norm followed by ReLU and a global mean leaves each channel
            almost no information, since every map was standardized to mean 0 and
            variance 1: use ``"flatten"`` with instance norm.

    Shape: input (N, in_channels, image_size, image_size) -> logits (N, n_classes).
    """

    def __init__(self, n_classes: int = 10, channels: Sequence[int] = (16, 32), norm: str = "batch",
                 groups: int = 4, in_channels: int = 1, image_size: int = 8, pool: str = "flatten"):
        super().__init__()
        widths = _check_sizes("channels", [in_channels, *channels])
        if pool not in ("flatten", "mean"):
            raise ValueError(f"pool must be 'flatten' or 'mean', got {pool!r}")
        size = _check_sizes("image_size", [image_size])[0]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                       make_norm2d(norm, c_out, groups=groups), nn.ReLU()]
            size = (size - 1) // stride + 1                    # 3x3 kernel, padding 1
        self.features = nn.Sequential(*layers)
        self.pool, self.image_size = pool, image_size
        self.head = nn.Linear(widths[-1] * (size * size if pool == "flatten" else 1), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"NormCNN expects images (N, C, {self.image_size}, {self.image_size}), "
                             f"got shape {tuple(x.shape)}")
        h = self.features(x)                                   # (N, C_last, h, w)
        h = h.flatten(1) if self.pool == "flatten" else h.mean(dim=(2, 3))
        return self.head(h)                                    # (N, n_classes)


class ContrastNet(nn.Module):
    """A tiny fully convolutional image-to-image network: (N, 1, H, W) -> (N, 1, H, W).

    Conv3x3 -> norm -> ReLU -> Conv3x3 -> norm -> ReLU -> Conv1x1. Convolutions pad
    by replicating the border, so a constant shift of the input stays constant
    up to the edge and a per-image norm can remove it exactly.

    Args:
        norm: any name of :func:`dlbook.norm.make_norm2d` (``"instance"``, ``"batch"``, ...).
        width: channels of the hidden layers.
    """

    def __init__(self, norm: str = "instance", width: int = 16):
        super().__init__()
        _check_sizes("width", [width])
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, padding_mode="replicate"), make_norm2d(norm, width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate"), make_norm2d(norm, width), nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"ContrastNet expects one-channel images (N, 1, H, W), got shape {tuple(x.shape)}")
        return self.net(x)


@torch.no_grad()
def scale_init_(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the initial weights of every Linear and Conv layer by ``factor``, in place.

    A deliberately poor initialization (``factor`` far from 1) for experiments on
    how much a network depends on its initial scale. Returns the model.
    """
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor!r}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.mul_(factor)
    return model
