"""Quantized Linear layers (chapter 6, notebooks 5 and 6) and ``replace_linears``, which swaps them into a model.

``QuantLinear`` computes with fake-quantized (or binarized) weights and activations, for
quantization-aware training and post-training quantization; ``Int8Linear`` runs a real integer
matmul (``torch._int_mm``: int8 inputs, int32 accumulator).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlbook.compression.quantization import fake_quantize, qrange, quant_params, quantize, _check_bits

__all__ = [
    "QuantLinear", "Int8Linear", "replace_linears", "int_mm_is_exact",
]


class _SignSTE(torch.autograd.Function):
    """sign(w) forward; the gradient passes where ``|w|`` <= 1 (the hard-tanh STE of BinaryConnect)."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


class QuantLinear(nn.Linear):
    """A Linear layer that computes with quantized weights (and activations): for QAT and PTQ.

    The float weight W (out, in) is kept and updated by the optimizer ("latent" weights);
    every forward pass uses its quantized version:

    * ``bits`` in 2..16: symmetric per-output-row fake quantization,
      S_j = max_i ``|W_ji|`` / q_max, with the STE (``fake_quantize``);
    * ``bits = 1``: binarization, W_b = alpha_j sign(W_j) with alpha_j = mean_i ``|W_ji|``
      (XNOR-Net's scale), gradient through sign only where ``|W|`` <= 1 (BinaryConnect).

    With ``act_bits`` the input is fake-quantized too, per tensor and asymmetric, over the
    range [act_min, act_max] (buffers). In training mode the range follows the batches (an
    exponential moving average with ``momentum``, the first batch copied); in eval mode it is
    fixed: set it from a calibration set, or let QAT learn it.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        bits: weight bits, 1 (binary) or 2..16. per_channel: one scale per output row, else
            one for the whole matrix. act_bits: None (float activations) or 2..16.
        momentum: of the activation-range average, in (0, 1].

    Shape: ``(N, *, in_features)`` -> ``(N, *, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8,
                 per_channel: bool = True, act_bits: int | None = None, momentum: float = 0.1,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if bits != 1:
            _check_bits(bits)
        if act_bits is not None:
            _check_bits(act_bits)
        if not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.bits, self.per_channel, self.act_bits, self.momentum = bits, bool(per_channel), act_bits, float(momentum)
        self.register_buffer("act_min", torch.tensor(0.0, device=device))
        self.register_buffer("act_max", torch.tensor(0.0, device=device))
        self.register_buffer("act_seen", torch.tensor(False, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, per_channel: bool = True,
                    act_bits: int | None = None, momentum: float = 0.1) -> "QuantLinear":
        """A QuantLinear with a copy of a trained ``nn.Linear``'s weights (PTQ, or the start of QAT)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=bits,
                    per_channel=per_channel, act_bits=act_bits, momentum=momentum,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: (out, in), fake-quantized or binarized (with the STE)."""
        w = self.weight
        if self.bits == 1:
            alpha = w.detach().abs().mean(dim=1, keepdim=True) if self.per_channel else w.detach().abs().mean()
            return alpha * _SignSTE.apply(w)
        qmin, qmax = qrange(self.bits, symmetric=True)
        if self.per_channel:
            scale, zp = quant_params(w.detach().amin(dim=1), w.detach().amax(dim=1), self.bits, True, eps=1e-12)
            return fake_quantize(w, scale, zp, qmin, qmax, axis=0)
        scale, zp = quant_params(w.detach().min(), w.detach().max(), self.bits, True, eps=1e-12)
        return fake_quantize(w, scale, zp, qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is not None:
            if self.training:
                with torch.no_grad():
                    lo, hi = x.detach().min(), x.detach().max()
                    if not bool(self.act_seen):
                        self.act_min.copy_(lo)
                        self.act_max.copy_(hi)
                        self.act_seen.fill_(True)
                    else:
                        self.act_min.lerp_(lo, self.momentum)
                        self.act_max.lerp_(hi, self.momentum)
            elif not bool(self.act_seen):
                raise RuntimeError("QuantLinear has no activation range yet: run it in train mode on some "
                                   "batches (calibration or QAT), or set act_min/act_max, before eval")
            scale, zp = quant_params(self.act_min, self.act_max, self.act_bits, False, eps=1e-8)
            qmin, qmax = qrange(self.act_bits, symmetric=False)
            x = fake_quantize(x, scale, zp, qmin, qmax)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, per_channel={self.per_channel}, act_bits={self.act_bits}"


_INT_MM_EXACT: bool | None = None


def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` on this CPU returns exact int32 sums (checked once per process).

    With VNNI instructions (AVX-512 VNNI, AVX-VNNI) oneDNN multiplies int8 pairs into an int32 accumulator.
    Without them (AVX2-only or older CPUs, or ``ONEDNN_MAX_CPU_ISA=AVX2``), its kernel adds pairs of
    products in 16-bit integers that saturate at 32,767, so large products come back wrong (every
    output of a random 256 x 1024 x 256 product, measured). ``Int8Linear`` then multiplies the same
    integers in floating point instead: exact, but without the int8 kernel's speed.
    """
    global _INT_MM_EXACT
    if _INT_MM_EXACT is None:
        try:
            cases = [(127, 127), (127, -128), (-128, -128)]
            _INT_MM_EXACT = all(
                bool((torch._int_mm(torch.full((32, 64), a, dtype=torch.int8),
                                    torch.full((64, 32), b, dtype=torch.int8)) == 64 * a * b).all())
                for a, b in cases)
        except (RuntimeError, AttributeError):
            _INT_MM_EXACT = False
    return _INT_MM_EXACT


class Int8Linear(nn.Module):
    """An inference-only Linear layer that multiplies int8 by int8 with an int32 accumulator.

    Weights: symmetric per-output-row int8, W_ji ~ s_j q_ji with s_j = max_i ``|W_ji|`` / 127.
    Activations, quantized on the fly for every call ("dynamic"): symmetric per input row,
    x_ni ~ t_n p_ni with t_n = max_i ``|x_ni|`` / 127. Then

    .. math::

        y_{nj} = t_n\\, s_j \\sum_i p_{ni}\\, q_{ji} + b_j,

    where the sum is an exact integer matmul (``torch._int_mm``, int32 accumulator) and the
    rescale is one float multiply per output. Where ``torch._int_mm`` is not available for the
    shapes or the device, or is not exact on this CPU (no VNNI instructions: see
    :func:`int_mm_is_exact`), the same integers are multiplied in float32, or in float64 once
    in_features * 128^2 reaches 2^24, so the sum is exact either way (and no faster than float).

    Build it from a trained layer with ``Int8Linear.from_linear(linear)``. The int8 weight
    is a frozen ``nn.Parameter`` (so ``model_size`` counts it), scales and bias are float32.

    Shape: (N, in_features) or (*, in_features) -> (*, out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize a trained ``nn.Linear`` (per output row, symmetric int8)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device)
        scale, zp = quant_params(w.amin(dim=1), w.amax(dim=1), bits=8, symmetric=True, eps=1e-12)
        layer.weight.copy_(quantize(w, scale, zp, -127, 127, axis=0))
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def _int_matmul(self, p: torch.Tensor) -> torch.Tensor:
        """(M, K) int8 @ (K, N) int8 -> (M, N) accumulator: exact int32, or float where _int_mm cannot be trusted."""
        w_t = self.weight.t()
        m, k = p.shape
        ok = hasattr(torch, "_int_mm") and (
            (p.device.type == "cpu" and int_mm_is_exact()) or
            (p.device.type == "cuda" and m > 16 and k % 8 == 0 and self.out_features % 8 == 0))
        if ok:
            try:
                return torch._int_mm(p, w_t)
            except RuntimeError:
                pass
        if k * 128 * 128 >= 2 ** 24:  # float32 would round the sum: float64 holds every such sum exactly
            return (p.double() @ w_t.double()).float()
        return p.float() @ w_t.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects inputs (..., {self.in_features}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        t = x2.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0     # (M, 1) activation scales
        p = torch.round(x2 / t).clamp_(-127, 127).to(torch.int8)
        acc = self._int_matmul(p)                                            # (M, N) int32
        y = acc.float() * (t * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.Linear`` replaced by ``make(linear)``.

    For example ``replace_linears(model, Int8Linear.from_linear)`` or
    ``replace_linears(model, lambda l: QuantLinear.from_linear(l, bits=4))``. A Linear that is
    already the result (a ``QuantLinear``) is left alone. The input model is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(make):
        raise TypeError(f"make must be a function nn.Linear -> nn.Module, got {type(make).__name__}")
    new = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, make(child))
            else:
                swap(child)

    if type(new) is nn.Linear:
        return make(new)
    swap(new)
    return new
