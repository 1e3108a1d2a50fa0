"""Affine quantization (chapter 6, notebooks 4 and 5): a real number r to an integer q and back,

.. math::

    q = \\mathrm{clamp}(\\mathrm{round}(r / S) + Z,\\ q_{min},\\ q_{max}), \\qquad \\hat r = S\\,(q - Z).

``qrange`` gives the integer range of a bit width, ``quant_params`` chooses S and Z from a real
range, ``quantize``/``dequantize`` apply the two maps (per tensor, or per channel with ``axis``),
and ``fake_quantize`` does both in floating point with a straight-through gradient for
quantization-aware training.
"""

from __future__ import annotations

import torch

__all__ = [
    "qrange", "quant_params", "quantize", "dequantize", "fake_quantize",
]


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    return bits


def qrange(bits: int = 8, symmetric: bool = False) -> tuple[int, int]:
    """The integer range (q_min, q_max) used for ``bits`` bits.

    Symmetric quantization uses signed integers with the range restricted to be symmetric,
    [-(2^(b-1) - 1), 2^(b-1) - 1] ([-127, 127] for int8: -128 is left out, so that the
    scale that maps the largest ``|r|`` to 127 also maps -``|r|`` to -127 and Z = 0 is exact).
    Asymmetric (affine) quantization uses unsigned integers [0, 2^b - 1] ([0, 255], uint8).
    """
    bits = _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def quant_params(x_min, x_max, bits: int = 8, symmetric: bool = False,
                 eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale S and zero point Z that map the range [x_min, x_max] onto ``qrange(bits, symmetric)``.

    The range is first extended to contain 0 (x_min <- min(x_min, 0), x_max <- max(x_max, 0)),
    so that the real number 0 (zero padding, ReLU outputs, pruned weights) is represented
    exactly by the integer Z. Then

    * symmetric: S = max(``|x_min|``, ``|x_max|``) / q_max, Z = 0;
    * asymmetric: S = (x_max - x_min) / (q_max - q_min), Z = clamp(round(q_min - x_min / S), q_min, q_max),
      an integer, so that 0 / S + Z = Z exactly.

    Args:
        x_min, x_max: numbers or tensors of the same shape (one range per channel: per-channel
            quantization), for example ``w.amin(dim=1)`` and ``w.amax(dim=1)``.
        bits: 2..16. symmetric: see ``qrange``.
        eps: if > 0, a range narrower than eps is widened to eps instead of raising (for
            ranges measured on data, such as a channel that is all zero).

    Returns:
        (scale, zero_point): float tensors and int64 tensors of the broadcast shape of the
        inputs (0-d for numbers).

    Raises:
        ValueError: if x_min > x_max anywhere, or a range has zero width (both ends 0) and eps is 0.
    """
    qmin, qmax = qrange(bits, symmetric)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    lo, hi = torch.as_tensor(x_min), torch.as_tensor(x_max)
    if not lo.is_floating_point():
        lo = lo.to(torch.get_default_dtype())
    hi = hi.to(device=lo.device, dtype=lo.dtype)
    lo, hi = torch.broadcast_tensors(lo.detach(), hi.detach())
    if bool((lo > hi).any()):
        raise ValueError(f"x_min must be <= x_max, got x_min={lo.tolist()} and x_max={hi.tolist()}")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        width = torch.maximum(-lo, hi)
        denom = qmax
    else:
        width = hi - lo
        denom = qmax - qmin
    if eps > 0:
        width = width.clamp(min=eps)
    elif bool((width == 0).any()):
        raise ValueError("zero-width range: x_min = x_max = 0, so no scale maps it onto the integers; "
                         "pass eps > 0 to allow it (for example for an all-zero channel)")
    scale = width / denom
    if symmetric:
        zero_point = torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)
    else:
        lo = torch.minimum(lo, hi - width)              # where eps widened the range, widen it downwards
        zero_point = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int64)
    return scale, zero_point


def _storage_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype that holds [qmin, qmax]."""
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    raise ValueError(f"no integer dtype holds [{qmin}, {qmax}]")


def _check_qminmax(qmin, qmax) -> tuple[int, int]:
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if qmin >= qmax:
        raise ValueError(f"qmin must be < qmax, got qmin={qmin}, qmax={qmax}")
    if qmin < -(2 ** 31) or qmax > 2 ** 31 - 1:
        raise ValueError(f"[qmin, qmax] = [{qmin}, {qmax}] does not fit in int32")
    return qmin, qmax


def _broadcast_params(x: torch.Tensor, scale, zero_point, axis: int | None):
    """Shape S and Z to broadcast against x: scalars, or one value per slice along ``axis``."""
    scale = torch.as_tensor(scale, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    if not scale.is_floating_point():
        raise TypeError(f"scale must be a float (tensor), got dtype {scale.dtype}")
    if bool((scale <= 0).any()):
        raise ValueError("scale must be > 0")
    if axis is None:
        if scale.numel() != 1 or zero_point.numel() != 1:
            raise ValueError(f"per-tensor quantization takes one scale and zero point, got {scale.numel()} and "
                             f"{zero_point.numel()} values; pass axis=... for per-channel quantization")
        return scale.reshape(()), zero_point.reshape(())
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be an int in [{-x.dim()}, {x.dim()}) for an input of shape {tuple(x.shape)}, got {axis!r}")
    axis %= x.dim()
    n = x.shape[axis]
    if scale.shape != (n,) or zero_point.shape != (n,):
        raise ValueError(f"per-channel quantization along axis {axis} needs scale and zero_point of shape ({n},), "
                         f"got {tuple(scale.shape)} and {tuple(zero_point.shape)}")
    shape = [1] * x.dim()
    shape[axis] = n
    return scale.reshape(shape), zero_point.reshape(shape)


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> torch.Tensor:
    """Real numbers to integers: q = clamp(round(x / S) + Z, q_min, q_max).

    ``round`` rounds halves to even, as ``torch.quantize_per_tensor`` does.

    Args:
        x: a float tensor of any shape.
        scale, zero_point: one number each (per tensor), or with ``axis`` one per slice
            ``x.select(axis, i)``: 1-d tensors of length ``x.shape[axis]`` (per channel; for a
            Linear weight (out, in) the channels are the output rows, ``axis=0``).
        qmin, qmax: the integer range, e.g. from ``qrange``.
        axis: None (per tensor) or the channel axis.

    Returns:
        q of the shape of x, in the smallest integer dtype that holds [qmin, qmax]
        (int8 for [-128, 127], uint8 for [0, 255], then int16, int32).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {type(x).__name__}" +
                        (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    qmin, qmax = _check_qminmax(qmin, qmax)
    s, z = _broadcast_params(x, scale, zero_point, axis)
    q = torch.clamp(torch.round(x / s.to(x.dtype)) + z.to(x.dtype), qmin, qmax)
    return q.to(_storage_dtype(qmin, qmax))


def dequantize(q: torch.Tensor, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    """Integers back to real numbers: r_hat = S (q - Z).

    Args:
        q: an integer tensor (from ``quantize``). scale, zero_point, axis: as for ``quantize``.

    Returns:
        A float tensor of q's shape, in the dtype of ``scale``. For x inside the range,
        ``|x - dequantize(quantize(x))|`` <= S / 2.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a tensor, got {type(q).__name__}")
    s, z = _broadcast_params(q, scale, zero_point, axis)
    return (q.to(s.dtype) - z.to(s.dtype)) * s


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize in floating point, with a straight-through gradient.

    Forward: S (clamp(round(x / S) + Z, q_min, q_max) - Z), the value the integer model computes
    with. Backward (the straight-through estimator, STE): round() has zero gradient almost
    everywhere, so it is treated as the identity: the gradient is 1 where
    q_min <= round(x / S) + Z <= q_max and 0 where the value was clamped (as
    ``torch.fake_quantize_per_tensor_affine``). S and Z get no gradient.

    Args:
        x, scale, zero_point, qmin, qmax, axis: as for ``quantize``.

    Returns:
        A tensor like x.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {type(x).__name__}")
    qmin, qmax = _check_qminmax(qmin, qmax)
    s, z = _broadcast_params(x, scale, zero_point, axis)
    s, z = s.to(x.dtype).detach(), z.to(x.dtype)
    q = torch.round(x.detach() / s) + z
    inside = (q >= qmin) & (q <= qmax)
    x_hat = (q.clamp(qmin, qmax) - z) * s
    return x_hat + (x - x.detach()) * inside
