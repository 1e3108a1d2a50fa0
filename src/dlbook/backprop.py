"""Backpropagation by hand, and the finite-difference check that catches a wrong gradient (chapter 0).

For the MLP of :mod:`dlbook.mlp` (``h^(0) = x``, ``a^(l) = h^(l-1) W^(l)T + b^(l)``,
``h^(l) = sigma(a^(l))``, logits ``z = a^(L)``) and the mean cross-entropy loss, the
chain rule run backwards from the loss gives, with ``delta^(l) = dL/da^(l)`` of shape (N, d_l):

.. math::

    \\delta^{(L)} = \\frac{1}{N}\\big(\\operatorname{softmax}(z) - \\operatorname{onehot}(y)\\big), \\qquad
    \\frac{\\partial L}{\\partial W^{(l)}} = \\delta^{(l)\\top} h^{(l-1)}, \\qquad
    \\frac{\\partial L}{\\partial b^{(l)}} = \\textstyle\\sum_n \\delta^{(l)}_n,

    \\delta^{(l-1)} = \\big(\\delta^{(l)} W^{(l)}\\big) \\odot \\sigma'\\big(a^{(l-1)}\\big).

Every step reuses a value saved by the forward pass, which is why one backward pass
costs about two forward passes whatever the number of parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dlbook.activations import ACTIVATIONS
from dlbook.losses import cross_entropy, softmax

__all__ = ["mlp_backward", "numerical_gradient", "relative_error"]


def mlp_backward(x: torch.Tensor, y: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 activation: str = "relu") -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Loss and gradients of an MLP under mean cross-entropy, by the chain rule written out.

    Args:
        x: inputs, (N, d_0).
        y: class ids, (N,) of integers in [0, d_L).
        weights: ``W^(l)`` of shape (d_l, d_{l-1}), as ``nn.Linear`` stores them.
        biases: ``b^(l)`` of shape (d_l,).
        activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"``, after every layer but the last.

    Returns:
        ``(loss, grad_weights, grad_biases)``: the mean cross-entropy and one gradient
        per weight and bias, each of its parameter's shape. Equal to what autograd
        computes (``tests/test_backprop.py`` checks to 1e-12 in float64).

    Raises:
        ValueError: for an unknown activation or shapes that do not chain.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if len(weights) != len(biases) or not weights:
        raise ValueError(f"need one bias per weight matrix, got {len(weights)} weights and {len(biases)} biases")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must hold one class id per row of x, shape ({x.shape[0]},), got {tuple(y.shape)}")
    sigma, sigma_grad = ACTIVATIONS[activation]
    hs, pre = [x], []  # the forward pass keeps every h^(l) and a^(l): backward needs them
    for i, (W, b) in enumerate(zip(weights, biases)):
        if hs[-1].shape[1] != W.shape[1] or b.shape != (W.shape[0],):
            raise ValueError(f"layer {i}: input has {hs[-1].shape[1]} features, W is {tuple(W.shape)}, "
                             f"b is {tuple(b.shape)}")
        pre.append(hs[-1] @ W.T + b)
        hs.append(sigma(pre[-1]) if i < len(weights) - 1 else pre[-1])
    z = hs[-1]
    loss = cross_entropy(z, y)
    delta = (softmax(z) - torch.nn.functional.one_hot(y, z.shape[1]).to(z.dtype)) / z.shape[0]  # dL/dz
    grad_w: list[torch.Tensor] = []
    grad_b: list[torch.Tensor] = []
    for layer in reversed(range(len(weights))):
        grad_w.insert(0, delta.T @ hs[layer])   # (d_l, N) @ (N, d_{l-1})
        grad_b.insert(0, delta.sum(dim=0))      # (d_l,)
        if layer > 0:
            delta = (delta @ weights[layer]) * sigma_grad(pre[layer - 1])
    return loss, grad_w, grad_b


def numerical_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences: (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) for every entry i.

    Use float64: the error of a central difference is O(eps^2) from the curvature
    plus O(machine epsilon / eps) from rounding, about 1e-10 at eps = 1e-6 in float64
    but about 1e-2 in float32.

    Args:
        f: a function of ``x`` returning a scalar tensor.
        x: the point, any shape; it is restored after each probe.
        eps: the step.

    Returns:
        A tensor of ``x``'s shape: the estimated gradient.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    grad = torch.zeros_like(x)
    flat, out = x.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            keep = flat[i].item()
            flat[i] = keep + eps
            up = float(f(x))
            flat[i] = keep - eps
            down = float(f(x))
            flat[i] = keep
            out[i] = (up - down) / (2 * eps)
    return grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / (||a|| + ||b||): 0 for equal tensors, 1 for opposite ones, scale-free.

    A gradient check passes at about 1e-7 or less in float64; values near 1e-2 or
    above mean a bug.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    denom = (a.norm() + b.norm()).item()
    return 0.0 if denom == 0 else (a - b).norm().item() / denom
