"""Activation functions and their derivatives, written out (chapter 0).

Each function works elementwise on a tensor of any shape and returns a tensor
of the same shape. The derivatives are the closed forms a reader can check by
hand; ``tests/test_activations.py`` checks them against autograd.

    relu(a)    = max(a, 0)                 relu'(a)    = 1[a > 0]
    sigmoid(a) = 1 / (1 + exp(-a))          sigmoid'(a) = sigmoid(a) (1 - sigmoid(a))   <= 1/4
    tanh(a)    = 2 sigmoid(2a) - 1          tanh'(a)    = 1 - tanh(a)^2                 <= 1
"""

from __future__ import annotations

import torch

__all__ = ["relu", "relu_grad", "sigmoid", "sigmoid_grad", "tanh", "tanh_grad", "ACTIVATIONS", "get"]


def _check(a) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(a).__name__}")
    if not a.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {a.dtype}")
    return a


def relu(a: torch.Tensor) -> torch.Tensor:
    """max(a, 0), elementwise. Shape: any -> same."""
    return _check(a).clamp_min(0)


def relu_grad(a: torch.Tensor) -> torch.Tensor:
    """1 where a > 0, else 0 (the subgradient at 0 is taken as 0, as in PyTorch)."""
    return (_check(a) > 0).to(a.dtype)


def sigmoid(a: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-a)), computed without overflow for large negative a.

    For a < 0 the equivalent form exp(a) / (1 + exp(a)) is used, so exp never
    sees a large positive argument.
    """
    a = _check(a)
    # exp of -|a|, in (0, 1]: never overflows. Written with where rather than abs(), whose
    # derivative at 0 is 0 and would make autograd's sigmoid'(0) 0 instead of 1/4.
    e = torch.exp(torch.where(a >= 0, -a, a))
    return torch.where(a >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_grad(a: torch.Tensor) -> torch.Tensor:
    """sigmoid(a) * (1 - sigmoid(a)); at most 1/4, reached at a = 0."""
    s = sigmoid(a)
    return s * (1 - s)


def tanh(a: torch.Tensor) -> torch.Tensor:
    """tanh(a) = 2 sigmoid(2a) - 1: a sigmoid rescaled to (-1, 1) and centred at zero."""
    return 2 * sigmoid(2 * _check(a)) - 1


def tanh_grad(a: torch.Tensor) -> torch.Tensor:
    """1 - tanh(a)^2; at most 1, reached at a = 0."""
    t = tanh(a)
    return 1 - t * t


# name -> (function, derivative)
#: name -> (function, derivative) for every activation in this module.
ACTIVATIONS = {"relu": (relu, relu_grad), "sigmoid": (sigmoid, sigmoid_grad), "tanh": (tanh, tanh_grad)}


def get(name: str):
    """The activation function called ``name`` ('relu', 'sigmoid' or 'tanh')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name][0]
