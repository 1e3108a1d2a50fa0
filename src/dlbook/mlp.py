"""A deep network as stacked linear maps and activations (chapter 0).

    h^(0) = x,   a^(l) = h^(l-1) W^(l)T + b^(l),   h^(l) = sigma(a^(l)),   output = a^(L)

``forward_manual`` writes that recursion out with plain tensors; ``MLP`` is the
same network as an ``nn.Module``; ``layer_gradient_norms`` measures how large
each layer's weight gradient is, the quantity that vanishes through depth when
activations saturate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "forward_manual", "layer_gradient_norms"]

_MODULES = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}


class MLP(nn.Module):
    """A multilayer perceptron: Linear, activation, Linear, activation, ..., Linear.

    Args:
        sizes: layer widths ``[d_in, h_1, ..., h_k, d_out]`` (at least two).
        activation: 'relu', 'sigmoid', 'tanh' or 'identity' (no nonlinearity).
        init: 'default' (PyTorch's), 'xavier' (Glorot: Var W = 2 / (fan_in + fan_out))
            or 'kaiming' (He: Var W = 2 / fan_in, for ReLU).

    Shape:
        input (N, d_in) -> output (N, d_out).
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", init: str = "default"):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be at least two positive ints [d_in, ..., d_out], got {sizes}")
        if activation not in _MODULES:
            raise ValueError(f"activation must be one of {sorted(_MODULES)}, got {activation!r}")
        if init not in ("default", "xavier", "kaiming"):
            raise ValueError(f"init must be 'default', 'xavier' or 'kaiming', got {init!r}")
        self.sizes, self.activation = sizes, activation
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(d_in, d_out)
            if init == "xavier":
                nn.init.xavier_normal_(linear.weight)
                nn.init.zeros_(linear.bias)
            elif init == "kaiming":
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
                nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 2:  # no activation after the output layer
                layers.append(_MODULES[activation]())
        self.net = nn.Sequential(*layers)

    @property
    def linears(self) -> list[nn.Linear]:
        """The Linear layers, first to last."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"MLP expects input of shape (N, {self.sizes[0]}), got {tuple(x.shape)}")
        return self.net(x)


def forward_manual(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                   activation) -> torch.Tensor:
    """The MLP recursion with plain tensors.

    Args:
        x: (N, d_0).
        weights: W^(l) of shape (d_l, d_{l-1}), as stored by ``nn.Linear``.
        biases: b^(l) of shape (d_l,).
        activation: a function applied after every layer but the last.

    Returns:
        (N, d_L).
    """
    if len(weights) != len(biases) or not weights:
        raise ValueError(f"need one bias per weight matrix, got {len(weights)} weights and {len(biases)} biases")
    h = x
    for i, (W, b) in enumerate(zip(weights, biases)):
        if h.shape[-1] != W.shape[1]:
            raise ValueError(f"layer {i}: input has {h.shape[-1]} features but W has shape {tuple(W.shape)}")
        a = h @ W.T + b  # (N, d_l)
        h = activation(a) if i < len(weights) - 1 else a
    return h


def layer_gradient_norms(model: MLP, x: torch.Tensor, y: torch.Tensor, loss_fn) -> list[float]:
    """The L2 norm of each Linear layer's weight gradient for one batch, first layer first.

    Gradients already on the model are cleared first, so the result describes
    this batch alone.
    """
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    norms = [layer.weight.grad.norm().item() for layer in model.linears]
    model.zero_grad(set_to_none=True)
    return norms
