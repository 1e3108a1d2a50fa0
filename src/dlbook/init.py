"""Weight initialization: the variance that lets signals and gradients cross depth (chapter 0).

For a linear layer ``a = W h`` with weights drawn i.i.d. with mean 0 and variance
``Var(W)``, independent of the input ``h``,

.. math::

    \\operatorname{Var}(a_j) = \\text{fan\\_in} \\cdot \\operatorname{Var}(W) \\cdot \\mathbb{E}[h_i^2],

the *second moment* of the input, not its variance. Keeping it equal from layer to
layer gives the classic scales:

=========================  =================================  ===========================================
scheme                     Var(W)                              why
=========================  =================================  ===========================================
LeCun                      1 / fan_in                          linear or tanh near 0: E[h^2] = Var(a)
Xavier (Glorot)            2 / (fan_in + fan_out)              a compromise of forward (fan_in) and
                                                               backward (fan_out) preservation
He (Kaiming)               2 / fan_in                          ReLU zeroes half of a symmetric input:
                                                               E[relu(a)^2] = Var(a) / 2
PyTorch's nn.Linear        1 / (3 fan_in)                      U(-1/sqrt(fan_in), 1/sqrt(fan_in))
=========================  =================================  ===========================================

``signal_profile`` measures what these choices do in a deep network: the standard
deviation of every layer's activations and the norm of every layer's weight
gradient for one batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["init_std", "init_linear_", "signal_profile", "SCHEMES"]

#: The initialization schemes :func:`init_std` and :func:`init_linear_` know.
SCHEMES = ("lecun", "xavier", "he", "torch_default")


def _check_fans(fan_in: int, fan_out: int) -> None:
    for name, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        if not isinstance(fan, int) or fan < 1:
            raise ValueError(f"{name} must be a positive int, got {fan!r}")


def init_std(scheme: str, fan_in: int, fan_out: int = 1, gain: float = 1.0) -> float:
    """The standard deviation of a layer's weights under an initialization scheme.

    Args:
        scheme: ``"lecun"`` (1/fan_in), ``"xavier"`` (2/(fan_in + fan_out)), ``"he"``
            (2/fan_in) or ``"torch_default"`` (1/(3 fan_in), the variance of PyTorch's
            uniform default for ``nn.Linear``).
        fan_in: inputs per output unit (``in_features``).
        fan_out: outputs per input unit (``out_features``); only Xavier uses it.
        gain: multiplies the standard deviation (``gain = 2`` quadruples the variance).

    Returns:
        ``gain * sqrt(Var(W))``.

    Raises:
        ValueError: for an unknown scheme, a non-positive fan or gain.
    """
    _check_fans(fan_in, fan_out)
    if not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain!r}")
    variances = {"lecun": 1 / fan_in, "xavier": 2 / (fan_in + fan_out), "he": 2 / fan_in,
                 "torch_default": 1 / (3 * fan_in)}
    if scheme not in variances:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return gain * math.sqrt(variances[scheme])


@torch.no_grad()
def init_linear_(model: nn.Module, scheme: str, gain: float = 1.0, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw every ``nn.Linear`` weight of ``model`` from N(0, init_std(...)^2), biases to zero.

    Args:
        model: any module; its ``nn.Linear`` layers are re-initialized in place.
        scheme: see :func:`init_std`. ``"torch_default"`` draws from PyTorch's own
            uniform distribution instead of a normal one.
        gain: multiplies the standard deviation.
        generator: for reproducible draws (on the CPU).

    Returns:
        ``model``, for chaining.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to initialize")
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        std = init_std(scheme, fan_in, fan_out, gain)
        if scheme == "torch_default":  # U(-b, b) has variance b^2 / 3
            bound = std * math.sqrt(3)
            draw = torch.rand(layer.weight.shape, generator=generator, dtype=layer.weight.dtype) * 2 - 1
            layer.weight.copy_(draw * bound)
        else:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype) * std)
        if layer.bias is not None:
            layer.bias.zero_()
    return model


def signal_profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> dict[str, list[float]]:
    """Per-layer activation scale and weight-gradient norm of one batch, input side first.

    The activation of a layer is the output of the module that follows each
    ``nn.Linear`` (its nonlinearity), or of the Linear itself for the last layer.

    Args:
        model: a module whose ``nn.Linear`` layers are applied in the order they are
            registered, each followed by at most one activation module (as in
            :class:`dlbook.mlp.MLP` or an ``nn.Sequential``).
        x: a batch of inputs, (N, d_in).
        y: its targets, as ``loss_fn`` expects.
        loss_fn: ``loss_fn(model(x), y)`` -> scalar.

    Returns:
        ``{"activation_std": [...], "activation_rms": [...], "grad_norm": [...]}``: the
        standard deviation and the root mean square (the square root of the second
        moment, the quantity the variance argument preserves) of each layer's
        activations over the batch and units, and the L2 norm of each layer's weight
        gradient. Gradients already on the model are cleared first
        and after.
    """
    modules = list(model.modules())
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to profile")
    watched = []
    for layer in linears:  # the module right after each Linear, if it is an activation
        following = modules[modules.index(layer) + 1] if modules.index(layer) + 1 < len(modules) else None
        watched.append(following if following is not None and not list(following.parameters())
                       and not isinstance(following, (nn.Sequential, nn.Linear)) else layer)
    watched[-1] = linears[-1]
    stats: dict[int, tuple[float, float]] = {}

    def record(i, out):
        out = out.detach()
        stats[i] = (out.std().item(), out.pow(2).mean().sqrt().item())

    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: record(i, out)) for i, m in enumerate(watched)]
    try:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    grads = [layer.weight.grad.norm().item() for layer in linears]
    model.zero_grad(set_to_none=True)
    return {"activation_std": [stats[i][0] for i in range(len(watched))],
            "activation_rms": [stats[i][1] for i in range(len(watched))], "grad_norm": grads}
