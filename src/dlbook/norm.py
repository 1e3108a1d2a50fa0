"""Normalization layers from scratch: batch, layer, instance, group, RMS and weight norm.

Every activation-normalizing layer here does the same two steps and differs
only in the set S of values it pools its statistics over:

.. math::

    \\hat a = \\frac{a - \\mu_S}{\\sqrt{\\sigma_S^2 + \\epsilon}}, \\qquad y = \\gamma \\hat a + \\beta,

with the *population* (biased) variance :math:`\\sigma_S^2 = \\frac1{|S|}\\sum_{i\\in S}(a_i-\\mu_S)^2`.
For an input of shape (N, C, H, W):

=============  ======================================  ==========================
layer          S for one output value                  statistics are per ...
=============  ======================================  ==========================
BatchNorm2d    all N x H x W values of its channel     channel (shared by batch)
LayerNorm      all C x H x W values of its example     example
InstanceNorm   the H x W values of its (example, ch.)  example and channel
GroupNorm      the (C/G) x H x W values of its group   example and group
RMSNorm        like LayerNorm, but no mean subtracted  example
=============  ======================================  ==========================

Only batch norm pools over the batch, so only batch norm keeps running
averages for inference and behaves differently in ``train()`` and ``eval()``.
Weight normalization (``weight_norm``) normalizes a layer's *weights* instead.

The layers are written with plain tensor operations so that autograd derives
the backward pass; ``tests/test_norm.py`` checks each against its torch twin
(forward, backward, running statistics, eval mode) in float64 to 1e-6.
Constructor arguments match torch's, so ``dlbook.norm.BatchNorm2d(16)`` and
``torch.nn.BatchNorm2d(16)`` are interchangeable, state dicts included.

Why this file is longer than 600 lines: it is one concept, the table above, and the layers
differ only in the set S. They share the core (``normalize``, ``reduction_dims``), the argument
checks and the factories, and each layer is 40 to 60 lines, so the file reads as the comparison
chapter 2 makes; split by layer, each file would mostly import the same helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "normalize", "reduction_dims", "stat_set_mask",
    "BatchNorm1d", "BatchNorm2d", "BatchRenorm1d", "LayerNorm", "InstanceNorm2d", "GroupNorm", "RMSNorm",
    "WeightNorm", "weight_norm", "make_norm2d", "make_norm1d", "NORM_KINDS", "NORM1D_KINDS",
]


# ----------------------------------------------------------------------------- the core

def normalize(x: torch.Tensor, dims: Sequence[int], eps: float = 1e-5) -> torch.Tensor:
    """Subtract the mean and divide by the standard deviation over ``dims``.

    Args:
        x: any shape.
        dims: the axes that make up the set S (the others index separate sets).
        eps: added to the variance, so that a constant set does not divide by zero.

    Returns:
        A tensor of the shape of ``x`` whose values have mean 0 and variance
        ``var / (var + eps)`` (so about 1) over ``dims``. The variance is the
        population one (divide by ``|S|``, not ``|S| - 1``), as in every torch norm layer.
    """
    var, mean = torch.var_mean(x, dim=tuple(dims), unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


_KIND_NAMES = {"batch": "BN", "layer": "LN", "instance": "IN", "group": "GN"}


def reduction_dims(kind: str, ndim: int = 4) -> tuple[int, ...]:
    """The axes each method averages over, for an input of ``ndim`` axes ``(N, C, *spatial)``.

    ``"batch"`` -> (0, 2, 3, ...), ``"layer"`` -> (1, 2, 3, ...), ``"instance"`` -> (2, 3, ...).
    Group norm has no plain answer in axes of the input: it reshapes (N, C, ...) to
    (N, G, C/G, ...) and reduces over axes (2, 3, ...) of that; this returns those.
    """
    if not isinstance(ndim, int) or ndim < 2:
        raise ValueError(f"ndim must be an int >= 2 (N, C, ...), got {ndim!r}")
    spatial = tuple(range(2, ndim))
    if kind == "batch":
        return (0,) + spatial
    if kind == "layer":
        return (1,) + spatial
    if kind == "instance":
        if ndim < 3:
            raise ValueError("instance norm needs spatial axes: ndim must be >= 3")
        return spatial
    if kind == "group":
        return tuple(range(2, ndim + 1))
    raise ValueError(f"kind must be one of 'batch', 'layer', 'instance', 'group', got {kind!r}")


def stat_set_mask(kind: str, shape: Sequence[int], n: int = 0, c: int = 0, groups: int = 1) -> np.ndarray:
    """A boolean mask of the set S whose statistics normalize the value at example n, channel c.

    Args:
        kind: ``"batch"``, ``"layer"``, ``"instance"`` or ``"group"``.
        shape: (N, C, H, W) or (N, C, L) or (N, C).
        n, c: the example and channel of the value being normalized.
        groups: number of channel groups (group norm only); must divide C.

    Returns:
        bool array of ``shape``: True where a value belongs to S.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (N, C, ...), got {shape}")
    N, C = shape[:2]
    if not (0 <= n < N and 0 <= c < C):
        raise ValueError(f"(n, c) = ({n}, {c}) is outside a batch of N={N} examples and C={C} channels")
    mask = np.zeros(shape, dtype=bool)
    if kind == "batch":
        mask[:, c] = True
    elif kind == "layer":
        mask[n] = True
    elif kind == "instance":
        mask[n, c] = True
    elif kind == "group":
        if not isinstance(groups, int) or groups < 1 or C % groups:
            raise ValueError(f"groups must be a positive divisor of C={C}, got {groups!r}")
        size = C // groups
        first = (c // size) * size
        mask[n, first:first + size] = True
    else:
        raise ValueError(f"kind must be one of 'batch', 'layer', 'instance', 'group', got {kind!r}")
    return mask


# ----------------------------------------------------------------------------- checks

def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_eps(eps) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


def _check_momentum(momentum):
    if momentum is None:
        return None
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1] or None (cumulative average), got {momentum!r}")
    return float(momentum)


def _check_channels(layer: str, x: torch.Tensor, expected: int) -> None:
    if x.shape[1] != expected:
        raise ValueError(f"{layer} was built for {expected} channels but the input has {x.shape[1]} "
                         f"(shape {tuple(x.shape)}; channels are axis 1)")


def _check_last_axes(layer: str, x: torch.Tensor, normalized_shape: tuple) -> int:
    """Raise unless x's trailing axes equal ``normalized_shape``; return how many axes that is."""
    k = len(normalized_shape)
    if x.dim() < k or tuple(x.shape[-k:]) != tuple(normalized_shape):
        raise ValueError(f"{layer} expects the input's last {k} axes to be {tuple(normalized_shape)}, "
                         f"got shape {tuple(x.shape)}")
    return k

def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(int(s) for s in normalized_shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"normalized_shape must be non-empty with positive sizes, got {normalized_shape!r}")
    return shape


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a (C,) vector to broadcast over (N, C, *spatial): (1, C, 1, ...)."""
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def _init_channel_norm(layer: nn.Module, num_features, eps, momentum, affine, track_running_stats,
                       device, dtype) -> None:
    """Check and store the arguments of a per-channel norm (batch or instance norm), and create its state.

    Parameters ``weight`` (gamma) and ``bias`` (beta) have shape (C,) and start at 1 and 0;
    buffers ``running_mean`` (0), ``running_var`` (1) and ``num_batches_tracked`` (0), or None,
    exactly as torch names them, so that state dicts are interchangeable.
    """
    layer.num_features = _check_positive_int("num_features", num_features)
    layer.eps = _check_eps(eps)
    layer.momentum = _check_momentum(momentum)
    layer.affine = affine = bool(affine)
    layer.track_running_stats = track = bool(track_running_stats)
    factory = {"device": device, "dtype": dtype}
    layer.register_parameter("weight", nn.Parameter(torch.ones(num_features, **factory)) if affine else None)
    layer.register_parameter("bias", nn.Parameter(torch.zeros(num_features, **factory)) if affine else None)
    layer.register_buffer("running_mean", torch.zeros(num_features, **factory) if track else None)
    layer.register_buffer("running_var", torch.ones(num_features, **factory) if track else None)
    layer.register_buffer("num_batches_tracked",
                          torch.tensor(0, dtype=torch.long, device=device) if track else None)


# ----------------------------------------------------------------------------- batch norm

class _BatchNorm(nn.Module):
    """Shared code of BatchNorm1d and BatchNorm2d (see their docstrings)."""

    _ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        _init_channel_norm(self, num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a tensor, got {type(x).__name__}")
        if x.dim() not in self._ranks:
            raise ValueError(f"{name} expects input of rank {' or '.join(map(str, self._ranks))} "
                             f"({self._shape_text}), got shape {tuple(x.shape)}")
        _check_channels(name, x, self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        dims = (0,) + tuple(range(2, x.dim()))               # everything but channels
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            count = x.numel() // x.shape[1]                   # |S|, values per channel
            if count < 2 and self.training:
                raise ValueError(f"{type(self).__name__} in training mode needs more than one value per "
                                 f"channel to compute a variance, got input shape {tuple(x.shape)}; "
                                 "use a larger batch, or eval() to use the running statistics")
            # (C,) each; the population variance (divide by |S|) is the one used to normalize
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach() * (count / max(count - 1, 1)))
        else:
            mean, var = self.running_mean, self.running_var
        # y = (x - mean) / sqrt(var + eps) * gamma + beta, with the per-channel factors
        # folded first, so that the (N, C, ...) tensor sees one multiply and one add.
        scale = torch.rsqrt(var + self.eps)                   # (C,)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        return x * _per_channel(scale, x.dim()) + _per_channel(shift, x.dim())

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        # The running variance stores the *unbiased* estimate (divide by |S| - 1), as torch does.
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, m)          # (1 - m) * old + m * new
        self.running_var.lerp_(unbiased_var, m)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization over the batch axis, for (N, C) or (N, C, L) inputs.

    Each feature (channel) c is normalized with the mean and population variance
    of its N (or N x L) values in the mini-batch, then scaled by ``weight[c]`` (gamma)
    and shifted by ``bias[c]`` (beta).

    In ``train()`` mode it also updates ``running_mean`` and ``running_var``
    (unbiased) with ``new = (1 - momentum) * old + momentum * batch``; with
    ``momentum=None`` it keeps their cumulative average instead. In ``eval()``
    mode it normalizes with the running statistics, so one example alone gives
    the same output as inside any batch. ``track_running_stats=False`` always
    uses the batch statistics.

    Args:
        num_features: C. eps: added to the variance. momentum: float in [0, 1] or None.
        affine: learn gamma and beta. track_running_stats: keep running statistics.

    Shape: input (N, C) or (N, C, L) -> output of the same shape.
    """

    _ranks = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalization for images (N, C, H, W): one mean and variance per channel.

    The set S of channel c is all N x H x W values of that channel in the batch:
    a convolution kernel is one "neuron" applied at every position, so all of its
    outputs share one normalization. Everything else is as in :class:`BatchNorm1d`.

    Shape: input (N, C, H, W) -> output (N, C, H, W).
    """

    _ranks = (4,)
    _shape_text = "(N, C, H, W)"


# ----------------------------------------------------------------------------- layer norm



class BatchRenorm1d(_BatchNorm):
    """Batch renormalization (Ioffe, 2017): batch norm that trains with the running statistics' view.

    In training, with batch statistics mu_B, sigma_B and running ones mu, sigma::

        r = clip(sigma_B / sigma, 1/r_max, r_max)      d = clip((mu_B - mu) / sigma, -d_max, d_max)
        x_hat = (x - mu_B) / sigma_B * r + d           y = gamma * x_hat + beta

    with no gradient through r and d (they are treated as constants). Unclipped, x_hat is
    exactly (x - mu) / sigma, what ``eval()`` computes: training and inference then see the
    same normalization even when a small batch's statistics are noisy. ``r_max = 1, d_max = 0``
    is plain batch norm. In ``eval()`` it is batch norm with the running statistics.

    Args:
        num_features: C. eps, momentum, affine, track_running_stats: as ``BatchNorm1d``.
        r_max: >= 1, the largest correction of the scale. d_max: >= 0, of the shift
            (in running standard deviations). The paper raises them from 1 and 0 to about
            3 and 5 during training; ``set_limits`` changes them.

    Shape: input (N, C) or (N, C, L) -> same shape.
    """

    _ranks = (2, 3)
    _shape_text = "(N, C) or (N, C, L)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 r_max: float = 3.0, d_max: float = 5.0, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.set_limits(r_max, d_max)

    def set_limits(self, r_max: float, d_max: float) -> None:
        """Change r_max (>= 1) and d_max (>= 0), for example on a schedule during training."""
        if not r_max >= 1 or not d_max >= 0:
            raise ValueError(f"BatchRenorm1d needs r_max >= 1 and d_max >= 0, got r_max={r_max!r}, d_max={d_max!r}")
        self.r_max, self.d_max = float(r_max), float(d_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input(x)
        dims = (0,) + tuple(range(2, x.dim()))
        count = x.numel() // x.shape[1]
        if count < 2:
            raise ValueError(f"BatchRenorm1d in training mode needs more than one value per channel, got input "
                             f"shape {tuple(x.shape)}")
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)             # (C,) each
        std = torch.sqrt(var + self.eps)
        running_std = torch.sqrt(self.running_var + self.eps)
        with torch.no_grad():                                               # r and d are constants for autograd
            r = (std / running_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
        self._update_running_stats(mean.detach(), var.detach() * (count / (count - 1)))
        x_hat = (x - _per_channel(mean, x.dim())) / _per_channel(std, x.dim()) * _per_channel(r, x.dim()) \
            + _per_channel(d, x.dim())
        if self.affine:
            return x_hat * _per_channel(self.weight, x.dim()) + _per_channel(self.bias, x.dim())
        return x_hat

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"


class LayerNorm(nn.Module):
    """Layer normalization: each example normalized over its last ``len(normalized_shape)`` axes.

    With ``normalized_shape = (D,)`` and input (N, T, D), each of the N x T vectors
    of size D gets its own mean and variance (as in Transformers). For images,
    ``normalized_shape = (C, H, W)`` normalizes each example over all of its values.
    The learned ``weight`` and ``bias`` have shape ``normalized_shape`` (elementwise).

    Args:
        normalized_shape: int or tuple: the trailing shape of the input.
        eps: added to the variance. elementwise_affine: learn weight (and bias).
        bias: learn a bias too (only with elementwise_affine).

    Shape: input ``(*, *normalized_shape)`` -> same shape. The statistics never involve
    another example, so ``train()`` and ``eval()`` give the same output.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        factory = {"device": device, "dtype": dtype}
        weight = nn.Parameter(torch.ones(self.normalized_shape, **factory)) if self.elementwise_affine else None
        shift = nn.Parameter(torch.zeros(self.normalized_shape, **factory)) if self.elementwise_affine and bias else None
        self.register_parameter("weight", weight)
        self.register_parameter("bias", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _check_last_axes("LayerNorm", x, self.normalized_shape)
        y = normalize(x, dims=range(-k, 0), eps=self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


# ----------------------------------------------------------------------------- instance norm

class InstanceNorm2d(nn.Module):
    """Instance normalization: each (example, channel) image normalized over its own H x W.

    Used in style transfer and image-to-image networks: the contrast and
    brightness of one image are removed without looking at any other image.
    Defaults follow torch: no affine parameters and no running statistics.
    With ``track_running_stats=True`` it averages the per-instance statistics into
    running buffers (as torch does) and uses them in ``eval()``.

    Args:
        num_features: C. eps, momentum, affine, track_running_stats: as in BatchNorm2d.

    Shape: input (N, C, H, W) or unbatched (C, H, W) -> same shape.
    Unlike torch, a channel-count mismatch is always an error, affine or not.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None, dtype=None):
        super().__init__()
        _init_channel_norm(self, num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"InstanceNorm2d expects input (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        _check_channels("InstanceNorm2d", x, self.num_features)
        if self.training or not self.track_running_stats:
            if x.shape[2] * x.shape[3] < 2 and self.training:
                raise ValueError(f"InstanceNorm2d needs more than one spatial value per channel, got shape {tuple(x.shape)}")
            mean = x.mean(dim=(2, 3), keepdim=True)                       # (N, C, 1, 1)
            var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
            if self.training and self.track_running_stats:
                count = x.shape[2] * x.shape[3]
                with torch.no_grad():
                    # As torch: average the per-instance statistics over the batch; momentum None acts as 0,
                    # and num_batches_tracked exists (for state dicts) but is never incremented.
                    m = 0.0 if self.momentum is None else self.momentum
                    self.running_mean.mul_(1 - m).add_(m * mean.mean(dim=0).flatten())
                    self.running_var.mul_(1 - m).add_(m * (var * count / (count - 1)).mean(dim=0).flatten())
        else:
            mean, var = _per_channel(self.running_mean, 4), _per_channel(self.running_var, 4)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * _per_channel(self.weight, 4) + _per_channel(self.bias, 4)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


# ----------------------------------------------------------------------------- group norm

class GroupNorm(nn.Module):
    """Group normalization: channels split into ``num_groups`` groups, each normalized per example.

    For input ``(N, C, *)``, the C channels are cut into G groups of C/G consecutive
    channels; each (example, group) block of ``(C/G) x *`` values gets its own mean
    and variance. G = 1 is layer norm over ``(C, *)`` and G = C is instance norm,
    both with a per-channel gamma and beta. Nothing depends on the batch.

    Args:
        num_groups: G, must divide num_channels. num_channels: C. eps: added to the variance.
        affine: learn a per-channel weight and bias of shape (C,).

    Shape: input ``(N, C, *)`` -> same shape.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.num_groups = _check_positive_int("num_groups", num_groups)
        self.num_channels = _check_positive_int("num_channels", num_channels)
        if num_channels % num_groups:
            divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
            raise ValueError(f"num_groups={num_groups} does not divide num_channels={num_channels}: every group "
                             f"needs the same number of channels; choose one of {divisors}")
        self.eps = _check_eps(eps)
        self.affine = bool(affine)
        factory = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_channels, **factory))
            self.bias = nn.Parameter(torch.zeros(num_channels, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"GroupNorm expects input (N, C, *), got shape {tuple(x.shape)}")
        _check_channels("GroupNorm", x, self.num_channels)
        N, C = x.shape[:2]
        grouped = x.reshape(N, self.num_groups, C // self.num_groups, -1)   # (N, G, C/G, rest)
        y = normalize(grouped, dims=(2, 3), eps=self.eps).reshape(x.shape)
        if self.affine:
            y = y * _per_channel(self.weight, x.dim()) + _per_channel(self.bias, x.dim())
        return y

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


# ----------------------------------------------------------------------------- RMS norm

class RMSNorm(nn.Module):
    """Root-mean-square normalization (as in LLaMA-style Transformers): divide by the RMS, no centering.

    .. math:: y = \\frac{x}{\\sqrt{\\frac1{|S|}\\sum_{i\\in S} x_i^2 + \\epsilon}} \\cdot \\gamma

    over the last ``len(normalized_shape)`` axes. Cheaper than LayerNorm (no mean,
    no bias) and in practice about as good.

    Args:
        normalized_shape: int or tuple: the trailing shape of the input.
        eps: added to the mean square; ``None`` means ``torch.finfo(x.dtype).eps`` (as torch).
        elementwise_affine: learn gamma of shape ``normalized_shape``.

    Shape: input ``(*, *normalized_shape)`` -> same shape.
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = None if eps is None else _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _check_last_axes("RMSNorm", x, self.normalized_shape)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        mean_square = x.pow(2).mean(dim=tuple(range(-k, 0)), keepdim=True)
        y = x * torch.rsqrt(mean_square + eps)
        return y * self.weight if self.weight is not None else y

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


# ----------------------------------------------------------------------------- weight norm

def _norm_except(v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """L2 norm of ``v`` over every axis but ``dim`` (keepdim), or over all axes if dim is None."""
    if dim is None:
        return v.norm()
    axes = tuple(d for d in range(v.dim()) if d != dim)
    return v.pow(2).sum(dim=axes, keepdim=True).sqrt() if axes else v.abs()


class WeightNorm(nn.Module):
    """The reparametrization w = g * v / ||v|| (Salimans and Kingma, 2016).

    The direction ``v`` and the length ``g`` are learned separately: ``g`` has
    the shape of ``w`` with every axis but ``dim`` of size 1 (one length per
    output unit for ``dim=0``). Used through :func:`weight_norm`.
    """

    def __init__(self, dim: int | None = 0):
        super().__init__()
        self.dim = dim

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return g * v / _norm_except(v, self.dim)

    def right_inverse(self, weight: torch.Tensor):
        """Split an existing weight into (g, v) so that forward(g, v) returns it."""
        return _norm_except(weight, self.dim), weight


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0) -> nn.Module:
    """Reparametrize ``module.<name>`` as g * v / ||v||, in place; returns the module.

    Same arguments and same parameter layout as
    ``torch.nn.utils.parametrizations.weight_norm``: afterwards
    ``module.parametrizations.weight.original0`` is g and ``.original1`` is v,
    and ``module.weight`` is recomputed from them at every access.

    Args:
        module: e.g. an ``nn.Linear`` or ``nn.Conv2d``.
        name: the parameter to reparametrize.
        dim: the axis that keeps its own length (0: one g per output unit);
            None: one g for the whole tensor. As in torch, ``dim=-1`` means the same
            as None (a legacy convention); other negative values count from the end.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"weight_norm expects an nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor parameter named {name!r}")
    if dim == -1:
        dim = None  # torch's convention: -1 means "no axis keeps its own length"
    if dim is not None:
        if not -weight.dim() <= dim < weight.dim():
            raise ValueError(f"dim={dim} is out of range for a weight of shape {tuple(weight.shape)}")
        dim = dim % weight.dim()
    parametrize.register_parametrization(module, name, WeightNorm(dim), unsafe=True)
    return module


# ----------------------------------------------------------------------------- factories

#: The ``kind`` names :func:`make_norm2d` accepts.
NORM_KINDS = ("none", "batch", "layer", "instance", "group")


def make_norm2d(kind: str, channels: int, groups: int = 4) -> nn.Module:
    """A normalization layer for (N, C, H, W) activations, by name.

    ``"batch"`` -> BatchNorm2d; ``"layer"`` -> GroupNorm(1, C) (layer norm over
    C x H x W with a per-channel gamma and beta, the usual choice in CNNs);
    ``"instance"`` -> GroupNorm(C, C) (instance norm with a learned per-channel affine);
    ``"group"`` -> GroupNorm(groups, C); ``"none"`` -> identity.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return BatchNorm2d(channels)
    if kind == "layer":
        return GroupNorm(1, channels)
    if kind == "instance":
        return GroupNorm(channels, channels)
    if kind == "group":
        return GroupNorm(groups, channels)
    raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")


#: The ``kind`` names :func:`make_norm1d` accepts.
NORM1D_KINDS = ("none", "batch", "renorm", "layer", "group", "rms")


def make_norm1d(kind: str, features: int, groups: int = 4) -> nn.Module:
    """A normalization layer for (N, D) activations of an MLP, by name.

    ``"batch"`` -> BatchNorm1d; ``"renorm"`` -> BatchRenorm1d (r_max 3, d_max 5); ``"layer"`` -> LayerNorm(D); ``"group"`` ->
    GroupNorm(groups, D) (the D features cut into groups, each normalized per
    example); ``"rms"`` -> RMSNorm(D); ``"none"`` -> identity. Instance norm needs
    spatial axes and exists only for images (:func:`make_norm2d`).
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return BatchNorm1d(features)
    if kind == "renorm":
        return BatchRenorm1d(features)
    if kind == "layer":
        return LayerNorm(features)
    if kind == "group":
        return GroupNorm(groups, features)
    if kind == "rms":
        return RMSNorm(features, eps=1e-6)
    raise ValueError(f"kind must be one of {NORM1D_KINDS} for an MLP, got {kind!r}")
