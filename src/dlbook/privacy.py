"""Privacy and security from scratch: DP-SGD, its accountant, attacks that measure leakage, secure aggregation.

Differential privacy. A randomized algorithm M is (epsilon, delta)-DP if for every pair of
neighbouring datasets D, D' (here: D' is D with one record added or removed) and every set S
of outcomes

.. math::

    P[M(D) \\in S] \\le e^{\\varepsilon} P[M(D') \\in S] + \\delta .

DP-SGD makes one training step such a mechanism: every example's gradient g_i is clipped to
norm C, the clipped gradients are summed, Gaussian noise N(0, sigma^2 C^2 I) is added and the
result is divided by the *expected* batch size q N, where each of the N examples joined the batch
independently with probability q (Poisson sampling):

.. math::

    \\tilde g = \\frac{1}{qN}\\Big(\\sum_{i \\in B} g_i \\min\\big(1, \\tfrac{C}{\\lVert g_i\\rVert}\\big)
                + \\mathcal N(0, \\sigma^2 C^2 I)\\Big).

What is here:

* per-example gradients: ``per_sample_grads`` (``torch.func.vmap(grad(...))``), ``clip_and_noise``,
  ``dp_sgd_step`` (the definition, step by step) and ``DPSGD``, an optimizer for ``dlbook.train.fit``
  that gets per-example gradient *norms* from layer inputs and output gradients without forming
  per-example gradients where it can ("ghost clipping"), and ``poisson_loader``;
* accounting: ``rdp_sampled_gaussian``, ``rdp_to_epsilon``, ``epsilon`` and ``noise_for_epsilon``
  (Renyi DP of the sampled Gaussian mechanism, Mironov et al. 2019), ``laplace_mechanism``,
  ``gaussian_sigma`` and ``gaussian_mechanism``;
* attacks that measure leakage: ``per_example_loss``, ``roc_auc``, ``roc_curve``, ``tpr_at_fpr``,
  ``membership_inference_auc`` and ``sequence_log_likelihood``, ``exposure``, ``canary_exposure``;
* encrypted and secure aggregation: a toy ``Paillier`` cryptosystem (small keys: NOT for real use),
  fixed-point ``quantize``/``dequantize`` modulo 2^k, pairwise additive masks (``pairwise_mask``,
  ``mask_update``, ``secure_sum``, ``recover_dropouts``) and ``run_federated``, which runs federated
  averaging with secure aggregation in real processes (``torch.distributed``, gloo).

``tests/test_privacy.py`` checks the accountant against Opacus's ``RDPAccountant`` (1% over a grid),
one noiseless step of ``dp_sgd_step`` and of ``DPSGD`` against Opacus's, and per-example gradients
against a loop in float64.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    # DP-SGD
    "per_sample_grads", "per_example_norms", "clip_and_noise", "dp_sgd_step", "DPSGD", "poisson_loader",
    "PoissonBatches",
    # accounting and mechanisms
    "DEFAULT_ORDERS", "rdp_sampled_gaussian", "rdp_to_epsilon", "epsilon", "noise_for_epsilon",
    "laplace_mechanism", "gaussian_sigma", "gaussian_mechanism",
    # attacks
    "per_example_loss", "roc_curve", "roc_auc", "tpr_at_fpr", "membership_inference_auc",
    "sequence_log_likelihood", "exposure", "canary_exposure",
    # encrypted and secure aggregation
    "Paillier", "quantize", "dequantize", "pairwise_mask", "mask_update", "secure_sum", "recover_dropouts",
    "run_federated", "federated_processes",
]


# ----------------------------------------------------------------------------- checks

def _check_positive(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_rate(q) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise TypeError(f"sample_rate must be a number, got {type(q).__name__}")
    if not 0 < q <= 1:
        raise ValueError(f"sample_rate q must be in (0, 1] (the probability that an example joins a batch), got {q!r}")
    return float(q)


def _check_delta(delta) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)):
        raise TypeError(f"delta must be a number, got {type(delta).__name__}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), and much smaller than 1/N; got {delta!r}")
    return float(delta)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


# ----------------------------------------------------------------------------- per-example gradients

def per_sample_grads(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of each example's own loss, for every trainable parameter, with ``torch.func``.

    ``vmap(grad(l))`` maps the gradient of the one-example loss
    :math:`l(\\theta; x_i, y_i)` over the batch: the result equals a Python loop that runs
    ``backward`` once per example, without the loop.

    Args:
        model: maps a batch (B, ...) to outputs; must not mix examples (no BatchNorm in train mode).
        loss_fn: ``loss_fn(output, target)``, called on one example at a time (batch of 1), so
            ``"mean"`` and ``"sum"`` reductions give the same result.
        x: inputs of shape (B, ...); y: targets of shape (B, ...).

    Returns:
        ``{name: tensor of shape (B, *param.shape)}`` for every parameter with ``requires_grad``.
    """
    from torch.func import functional_call, grad, vmap

    _check_model(model)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same batch size, got {len(x)} and {len(y)}")
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def one_loss(p, xi, yi):
        out = functional_call(model, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        if isinstance(out, tuple):  # models such as dlbook.transformer.GPT return (logits, loss)
            out = out[0]
        return loss_fn(out, yi.unsqueeze(0))

    return vmap(grad(one_loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)


def per_example_norms(grads: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each example's whole gradient (all parameters together).

    Args:
        grads: per-example gradients, each of shape (B, ...) (a dict as from ``per_sample_grads`` or a list).

    Returns:
        (B,) tensor: :math:`\\lVert g_i\\rVert = \\sqrt{\\sum_{\\text{params}} \\lVert g_i^{(p)}\\rVert^2}`.
    """
    values = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    if not values:
        raise ValueError("grads is empty: expected at least one per-example gradient of shape (B, ...)")
    return torch.sqrt(sum(g.reshape(len(g), g[0].numel() if len(g) else 0).pow(2).sum(1) for g in values))


def _clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    # min(1, C / ||g_i||); the 1e-6 keeps a zero gradient finite (and matches Opacus's rule).
    return (max_norm / (norms + 1e-6)).clamp(max=1.0)


def clip_and_noise(grads: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], max_norm: float,
                   noise_multiplier: float, generator: torch.Generator | None = None):
    """Clip every example's gradient to norm ``max_norm``, sum over the batch and add Gaussian noise.

    .. math::

        \\sum_i g_i \\min\\big(1, \\tfrac{C}{\\lVert g_i\\rVert + 10^{-6}}\\big) + \\mathcal N(0, \\sigma^2 C^2 I)

    The norm is over *all* parameters of one example together (flat clipping). The result is a
    noisy *sum*: divide it by the expected batch size q N (not by the drawn batch size, which
    depends on the data) to get the DP-SGD gradient.

    Args:
        grads: per-example gradients, each (B, ...) (dict or list, as from ``per_sample_grads``).
        max_norm: the clipping bound C > 0.
        noise_multiplier: sigma >= 0 (the noise std is sigma * C).
        generator: optional ``torch.Generator`` on the gradients' device, for reproducible noise.

    Returns:
        The same container (dict or list) of tensors of each parameter's shape (no batch axis).
    """
    max_norm = _check_positive("max_norm", max_norm)
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    is_dict = isinstance(grads, Mapping)
    keys = list(grads) if is_dict else None
    values = list(grads.values()) if is_dict else list(grads)
    factors = _clip_factors(per_example_norms(values), max_norm)
    out = []
    for g in values:
        s = (factors.to(g.dtype) @ g.reshape(len(g), math.prod(g.shape[1:]))).reshape(g.shape[1:])
        if noise_multiplier > 0:
            s = s + noise_multiplier * max_norm * torch.randn(s.shape, generator=generator, device=s.device,
                                                              dtype=s.dtype)
        out.append(s)
    return dict(zip(keys, out)) if is_dict else out


def dp_sgd_step(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                optimizer: torch.optim.Optimizer, max_norm: float, noise_multiplier: float,
                expected_batch_size: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DP-SGD step, written as the definition: per-example gradients, clip, sum, noise, divide.

    Sets every trainable parameter's ``.grad`` to
    ``clip_and_noise(per_sample_grads(...)) / expected_batch_size`` and calls ``optimizer.step()``.

    Args:
        model, loss_fn: as in ``per_sample_grads``. x: (B, ...), y: (B, ...), a Poisson-sampled batch.
        optimizer: any optimizer over the model's parameters (the privacy comes from the gradient;
            what the optimizer does with it is post-processing).
        max_norm: clipping bound C. noise_multiplier: sigma (noise std sigma * C).
        expected_batch_size: q N, the divisor (> 0).
        generator: optional generator for the noise.

    An empty batch (which Poisson sampling draws) takes a noise-only step, as Opacus does.

    Returns:
        The batch's mean loss (a 0-d tensor, detached; nan for an empty batch).
    """
    _check_positive("expected_batch_size", expected_batch_size)
    if len(x) == 0:
        # an empty Poisson batch: the clipped sum is zero, the step is noise only (as in Opacus)
        grads = {k: torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                 for k, p in model.named_parameters() if p.requires_grad}
    else:
        grads = per_sample_grads(model, loss_fn, x, y)
    noisy = clip_and_noise(grads, max_norm, noise_multiplier, generator)
    named = dict(model.named_parameters())
    for name, g in noisy.items():
        named[name].grad = (g / expected_batch_size).to(named[name].dtype)
    optimizer.step()
    with torch.no_grad():
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        return loss_fn(out, y).detach()


# ----------------------------------------------------------------------------- DPSGD: ghost clipping

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)


def _gram_norm2(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """||sum_t g_t a_t^T||_F^2 for each example, from (B, T, i) inputs and (B, T, o) output gradients.

    Uses whichever is cheaper: the two T x T Gram matrices (``<A A^T, G G^T>``, the ghost norm) or the
    per-example (o, i) gradient itself.
    """
    b, t, i = a.shape
    o = g.shape[-1]
    if t * t * (i + o) < t * i * o:
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))


class _Layer:
    """What DPSGD needs from one layer: per-example squared norms, then the clipped sums.

    ``shared`` names the layer's parameters that other layers use too (tied weights): they are
    left out of ``norm2`` and ``clipped_sums`` and handled through ``per_example`` instead.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.a = None      # the layer's input, detached
        self.g = None      # gradient of the (batch-size-scaled) loss w.r.t. the layer's output
        self.cache = {}
        self.shared = set()

    def _on(self, pname: str) -> bool:
        p = getattr(self.module, pname, None)
        return p is not None and p.requires_grad and pname not in self.shared

    # -- per-example squared norms of the layer's (unshared) parameters' gradients, (B,)
    def norm2(self, scale: float) -> torch.Tensor:
        m, a, g = self.module, self.a, self.g * scale
        self.cache = {"g": g}
        n2 = torch.zeros(len(g), dtype=g.dtype, device=g.device)
        if isinstance(m, nn.Linear):
            if a.dim() == 2:
                if self._on("weight"):
                    n2 = n2 + a.pow(2).sum(1) * g.pow(2).sum(1)
                if self._on("bias"):
                    n2 = n2 + g.pow(2).sum(1)
                return n2
            a3, g3 = a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])
            self.cache.update(a3=a3, g3=g3)
            if self._on("weight"):
                n2 = n2 + _gram_norm2(a3, g3)
            if self._on("bias"):
                n2 = n2 + g3.sum(1).pow(2).sum(1)
            return n2
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            # The weight gradient of example i is G_i U_i^T per group, with U_i = unfold(a_i), (C k, L),
            # and G_i its output gradient, (O, L): a linear layer applied at the L positions, so
            # its squared norm is the Gram identity <U_i^T U_i, G_i^T G_i> (or G_i U_i^T itself,
            # whichever is cheaper), never (B, O, C k) unless that is the cheaper.
            cols, g4 = self._unfold(a), g.reshape(len(g), m.groups, -1, g[0, 0].numel())   # (B, G, Ck, L), (B, G, O, L)
            self.cache.update(cols=cols, g4=g4)
            if self._on("weight"):
                b, grp = cols.shape[:2]
                n2 = n2 + _gram_norm2(cols.flatten(0, 1).transpose(1, 2),
                                      g4.flatten(0, 1).transpose(1, 2)).view(b, grp).sum(1)
            if self._on("bias"):
                n2 = n2 + g4.sum(3).pow(2).sum((1, 2))
            return n2
        if isinstance(m, nn.LayerNorm):
            xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
            lead = tuple(range(1, a.dim() - len(m.normalized_shape)))
            gw = (g * xhat).sum(lead) if lead else g * xhat          # (B, *normalized_shape)
            gb = g.sum(lead) if lead else g
            return n2 + self._affine(gw, gb)
        if isinstance(m, nn.GroupNorm):
            xhat = F.group_norm(a, m.num_groups, eps=m.eps)
            dims = tuple(range(2, a.dim()))            # spatial axes; none for (B, C) inputs
            if not dims:                               # (sum over an empty tuple would sum over everything)
                return n2 + self._affine(g * xhat, g)
            return n2 + self._affine((g * xhat).sum(dims), g.sum(dims))
        if isinstance(m, nn.Embedding):
            ids = a.reshape(len(a), -1)                               # (B, T)
            g3 = g.reshape(len(g), ids.shape[1], -1)                  # (B, T, D)
            self.cache.update(ids=ids, g3=g3)
            if self._on("weight"):
                same = (ids[:, :, None] == ids[:, None, :]).to(g3.dtype)  # tokens that share a row of the table
                n2 = n2 + (same * torch.bmm(g3, g3.transpose(1, 2))).sum((1, 2))
            return n2
        raise TypeError(f"DPSGD does not support {type(m).__name__}")

    def _affine(self, gw, gb):
        self.cache.update(gw=gw, gb=gb)
        n2 = 0
        if self._on("weight"):
            n2 = n2 + gw.reshape(len(gw), -1).pow(2).sum(1)
        if self._on("bias"):
            n2 = n2 + gb.reshape(len(gb), -1).pow(2).sum(1)
        return n2

    def _unfold(self, a):
        """(B, C, *spatial) -> (B, groups, C/groups * prod(kernel), L): each output position's receptive field."""
        m = self.module
        if m.padding == "same":       # (stride 1) torch puts the odd extra pad on the right
            pads = [(dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2) for kk, dd in zip(m.kernel_size, m.dilation)]
        elif m.padding == "valid":
            pads = [(0, 0)] * len(m.kernel_size)
        else:
            pads = [(p, p) for p in m.padding]
        flat = [q for pair in reversed(pads) for q in pair]          # F.pad's order: last axis first
        if any(flat):
            a = F.pad(a, flat, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        k, d, s = m.kernel_size, m.dilation, m.stride
        if isinstance(m, nn.Conv1d):
            a, k, d, s = a.unsqueeze(-2), (1, k[0]), (1, d[0]), (1, s[0])
        cols = F.unfold(a, k, dilation=d, stride=s)                    # (B, C k, L)
        return cols.view(len(a), m.groups, -1, cols.shape[-1])

    # -- per-example gradients (B, *param.shape), for a parameter shared with other layers
    def per_example(self, pname: str) -> torch.Tensor:
        m, a, cache = self.module, self.a, self.cache
        g = cache["g"]
        if isinstance(m, nn.Linear):
            if a.dim() == 2:
                return g[:, :, None] * a[:, None, :] if pname == "weight" else g
            return torch.bmm(cache["g3"].transpose(1, 2), cache["a3"]) if pname == "weight" else cache["g3"].sum(1)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            if pname == "bias":
                return cache["g4"].sum(3).flatten(1)
            return torch.einsum("bgol,bgkl->bgok", cache["g4"], cache["cols"]).reshape(len(g), *m.weight.shape)
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            return cache["gw" if pname == "weight" else "gb"]
        ids, g3 = cache["ids"], cache["g3"]                            # Embedding
        b, v = len(ids), m.weight.shape[0]
        rows = (ids + v * torch.arange(b, device=ids.device)[:, None]).reshape(-1)
        out = torch.zeros(b * v, g3.shape[-1], dtype=g3.dtype, device=g3.device)
        return out.index_add_(0, rows, g3.reshape(-1, g3.shape[-1])).view(b, v, -1)

    # -- sum_i c_i g_i for each (unshared) parameter
    def clipped_sums(self, c: torch.Tensor) -> dict:
        m, a, cache = self.module, self.a, self.cache
        g = cache["g"]
        out = {}
        if isinstance(m, nn.Linear):
            if a.dim() == 2:
                gc = g * c[:, None]
                out["weight"], out["bias"] = (lambda: gc.t() @ a), (lambda: gc.sum(0))
            else:
                a3, g3 = cache["a3"], cache["g3"]
                gc = g3 * c[:, None, None]
                out["weight"] = lambda: torch.einsum("bto,bti->oi", gc, a3)
                out["bias"] = lambda: gc.sum((0, 1))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            cols, g4 = cache["cols"], cache["g4"]                      # (B, G, Ck, L), (B, G, O, L)
            gc = g4 * c[:, None, None, None]
            # per group, one (O, B L) x (B L, C k) product: the ordinary weight gradient with scaled g
            out["weight"] = lambda: torch.einsum("bgol,bgkl->gok", gc, cols).reshape(m.weight.shape)
            out["bias"] = lambda: gc.sum((0, 3)).reshape(-1)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            gw, gb = cache["gw"], cache["gb"]
            out["weight"] = lambda: (c @ gw.reshape(len(gw), -1)).reshape(gw.shape[1:])
            out["bias"] = lambda: (c @ gb.reshape(len(gb), -1)).reshape(gb.shape[1:])
        elif isinstance(m, nn.Embedding):
            gc = (cache["g3"] * c[:, None, None]).reshape(-1, cache["g3"].shape[-1])
            out["weight"] = lambda: torch.zeros_like(m.weight).index_add_(0, cache["ids"].reshape(-1), gc)
        return {k: f() for k, f in out.items() if self._on(k)}


class DPSGD(torch.optim.SGD):
    """SGD on DP-SGD gradients, usable as the optimizer of ``dlbook.train.fit`` (ghost clipping).

    Hooks on every layer with parameters record the layer's input a and the gradient of the loss
    with respect to its output g during the ordinary ``loss.backward()``. ``step()`` then computes,
    per example i, the norm of its whole gradient from a and g, without forming per-example
    gradients where it can: for a linear layer on (B, in) inputs the per-example weight gradient is
    the outer product :math:`g_i a_i^\\top`, whose norm is :math:`\\lVert g_i\\rVert\\,\\lVert a_i\\rVert`;
    with a sequence axis it is :math:`\\langle A_i A_i^\\top, G_i G_i^\\top\\rangle` (the "ghost norm").
    With the clipping factors :math:`c_i = \\min(1, C/(\\lVert g_i\\rVert + 10^{-6}))` the clipped sum
    of a linear layer is one matrix product :math:`(c \\odot G)^\\top A`. Noise N(0, sigma^2 C^2) is
    added and the sum divided by ``expected_batch_size``; then an ordinary SGD (momentum,
    weight decay) step follows. Supported layers: Linear, Conv1d, Conv2d (any groups, padding
    and padding mode), LayerNorm, GroupNorm, Embedding; a model with any other layer that has
    trainable parameters is refused (use ``dp_sgd_step`` there). A convolution is a linear layer
    applied at L positions to the unfolded input U_i (C k, L), so its per-example norm is the same
    Gram identity, :math:`\langle U_i^\top U_i, G_i^\top G_i\rangle`, and its clipped sum one
    product; DPSGD forms the (B, O, C k) per-example gradients only where that is the cheaper.
    A parameter shared by several layers (tied weights, as the embedding and output head of
    ``dlbook.transformer.GPT``) gets the sum of its layers' per-example contributions, which are
    formed explicitly for that parameter only. An empty batch (Poisson sampling draws them) takes
    a noise-only step, as Opacus does.

    The loss must be the *mean* over the batch (as in ``fit``); the drawn batch size is multiplied
    back, so that each g_i is the gradient of example i's own loss. Batches should come from
    ``poisson_loader`` for the accountant's guarantee to hold.

    Args:
        model: the model being trained (its layers get hooks; ``remove_hooks()`` takes them off).
        lr, momentum, weight_decay: as ``torch.optim.SGD``.
        max_norm: clipping bound C > 0. noise_multiplier: sigma >= 0.
        expected_batch_size: q N > 0.
        generator: optional ``torch.Generator`` (on the model's device) for the noise.
        sample_rate: optional q; with it, ``epsilon(delta)`` reports the privacy spent so far.

    Attributes:
        steps: optimizer steps taken. last_norms: (B,) per-example gradient norms of the last step.
    """

    def __init__(self, model: nn.Module, lr: float, max_norm: float, noise_multiplier: float,
                 expected_batch_size: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 generator: torch.Generator | None = None, sample_rate: float | None = None):
        _check_model(model)
        self.max_norm = _check_positive("max_norm", max_norm)
        self.noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
        self.expected_batch_size = _check_positive("expected_batch_size", expected_batch_size)
        self.sample_rate = None if sample_rate is None else _check_rate(sample_rate)
        self.generator = generator
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.layers: list[_Layer] = []
        self._hooks = []
        owner: dict[int, list] = {}           # id(parameter) -> [(layer, its name there), ...]
        for name, m in model.named_modules():
            own = [(k, p) for k, p in m.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(m, _SUPPORTED):
                raise TypeError(f"DPSGD computes per-example norms for {', '.join(t.__name__ for t in _SUPPORTED)}; "
                                f"layer {name!r} is a {type(m).__name__} with trainable parameters "
                                "(use dp_sgd_step, which works on any model, or freeze it)")
            layer = _Layer(m)
            for k, p in own:
                owner.setdefault(id(p), []).append((layer, k))
            self.layers.append(layer)
            self._hooks.append(m.register_forward_hook(self._make_hook(layer)))
        # A tied parameter (GPT's embedding and output head): example i's gradient is the sum of
        # every layer's contribution, and the norm of a sum is not found from the parts' norms,
        # so those per-example gradients are formed (B, *shape) and added.
        named = {id(p): p for p in params}
        self._shared = [(named[i], uses) for i, uses in owner.items() if len(uses) > 1]
        for _, uses in self._shared:
            for layer, k in uses:
                layer.shared.add(k)
        if len(owner) != len(params):
            raise TypeError("some trainable parameters belong to no layer DPSGD supports "
                            "(a bare nn.Parameter in a custom module?); use dp_sgd_step")
        self.steps = 0
        self.last_norms = None

    @staticmethod
    def _make_hook(layer: _Layer):
        def hook(module, inputs, output):
            if not (torch.is_grad_enabled() and module.training and isinstance(output, torch.Tensor)
                    and output.requires_grad):
                return
            layer.a, layer.g = inputs[0].detach(), None

            def store(grad):
                layer.g = grad.detach()
            output.register_hook(store)
        return hook

    def remove_hooks(self) -> None:
        """Take the hooks off the model (the optimizer cannot step afterwards)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def privatize(self) -> None:
        """Replace every parameter's ``.grad`` by the DP-SGD gradient (what ``step`` does first)."""
        live = [layer for layer in self.layers if layer.g is not None]
        if not live:
            raise RuntimeError("DPSGD.step() needs a forward pass in train mode and loss.backward() first")
        batch = len(live[0].g)
        for layer in live:
            if layer.g.dim() == 0 or len(layer.g) != batch or len(layer.a) != batch:
                raise RuntimeError(f"the output of {layer.module} has no batch axis of size {batch} (shape "
                                   f"{tuple(layer.g.shape)}): it is broadcast over the batch, so the examples' "
                                   "gradients cannot be told apart; call the layer on a (B, ...) input")
        sums = {}                                     # id(parameter) -> sum_i c_i g_i
        if batch == 0:
            # Poisson sampling draws empty batches; the clipped sum is then zero and the step is
            # noise only (as Opacus's), so that the privacy analysis, which counts every step, holds.
            norms = torch.zeros(0, device=live[0].g.device, dtype=live[0].g.dtype)
        else:
            total = sum(layer.norm2(float(batch)) for layer in live)
            tied = []
            for p, uses in self._shared:
                parts = [layer.per_example(k) for layer, k in uses if layer.g is not None]
                if parts:
                    pe = sum(parts).reshape(batch, -1)
                    total = total + pe.pow(2).sum(1)
                    tied.append((p, pe))
            norms = torch.sqrt(total)
            c = _clip_factors(norms, self.max_norm)
            for layer in live:
                for pname, s in layer.clipped_sums(c.to(layer.g.dtype)).items():
                    sums[id(getattr(layer.module, pname))] = s
            for p, pe in tied:
                sums[id(p)] = (c.to(pe.dtype) @ pe).reshape(p.shape)
        reached = {id(p) for layer in live for p in layer.module.parameters(recurse=False)}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in reached:   # a layer the loss did not reach: its clipped gradient is zero
                    p.grad = torch.zeros_like(p)
                    continue
                s = sums.get(id(p), torch.zeros_like(p))
                if self.noise_multiplier > 0:
                    s = s + self.noise_multiplier * self.max_norm * torch.randn(
                        s.shape, generator=self.generator, device=s.device, dtype=s.dtype)
                p.grad = (s / self.expected_batch_size).to(p.dtype)
        for layer in self.layers:
            layer.g = layer.a = None
            layer.cache = {}
        self.last_norms = norms

    def step(self, closure=None):
        """Privatize the gradients, then take an SGD step."""
        if closure is not None:
            raise TypeError("DPSGD.step takes no closure")
        self.privatize()
        self.steps += 1
        return super().step()

    def epsilon(self, delta: float) -> float:
        """Privacy spent after ``self.steps`` steps (needs ``sample_rate`` and a noise multiplier > 0)."""
        if self.sample_rate is None:
            raise ValueError("construct DPSGD with sample_rate=q to account for privacy")
        return epsilon(self.noise_multiplier, self.sample_rate, max(self.steps, 1), delta) if self.steps else 0.0


class PoissonBatches:
    """Batches in which each of the N examples appears independently with probability q.

    The accountant's guarantee assumes exactly this sampling; a shuffled loader of fixed-size
    batches samples *without replacement* and needs a different analysis. Batch sizes vary
    (mean q N); an empty batch has probability (1 - q)^N (about e^{-qN}).

    Args:
        X: (N, ...) inputs; y: (N, ...) targets. sample_rate: q in (0, 1].
        steps: batches per pass (default round(1 / q), one expected epoch). seed: of the sampling.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, sample_rate: float, steps: int | None = None, seed: int = 0):
        if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"X and y must be tensors, got {type(X).__name__} and {type(y).__name__}")
        if len(X) != len(y):
            raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
        self.X, self.y, self.sample_rate = X, y, _check_rate(sample_rate)
        self.steps = max(1, round(1 / self.sample_rate)) if steps is None else _check_int("steps", steps, 1)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            take = torch.rand(len(self.X), generator=self.generator) < self.sample_rate
            idx = take.nonzero().squeeze(1).to(self.X.device)
            yield self.X[idx], self.y[idx]


def poisson_loader(X: torch.Tensor, y: torch.Tensor, sample_rate: float, steps: int | None = None,
                   seed: int = 0) -> PoissonBatches:
    """Poisson-sampled batches for DP-SGD (see ``PoissonBatches``); usable as ``fit``'s train_loader."""
    return PoissonBatches(X, y, sample_rate, steps, seed)


# ----------------------------------------------------------------------------- accounting

DEFAULT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
"""The Renyi orders alpha searched by default (1.1, 1.2, ..., 10.9 and 12, ..., 63)."""


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b) for a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    from scipy.special import log_ndtr
    return math.log(2.0) + float(log_ndtr(-x * math.sqrt(2.0)))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    # A_alpha = sum_k C(alpha, k) q^k (1-q)^(alpha-k) exp((k^2 - k) / (2 sigma^2))
    terms = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
             + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma ** 2)
             for k in range(alpha + 1)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # Mironov, Talwar, Zhang (2019), section 3.3: A = A0 + A1, each an alternating series split at
    # z0 = sigma^2 log(1/q - 1) + 1/2, summed in log space until its terms are negligible.
    from scipy.special import binom
    log_a0 = log_a1 = -math.inf
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = float(binom(alpha, i))
        log_coef = math.log(abs(coef))
        j = alpha - i
        s0 = (log_coef + i * math.log(q) + j * math.log1p(-q) + (i * i - i) / (2 * sigma ** 2)
              + math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma)))
        s1 = (log_coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) / (2 * sigma ** 2)
              + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, s0), _log_add(log_a1, s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, s0), _log_sub(log_a1, s1)
        i += 1
        if max(s0, s1) < -30:
            break
    return _log_add(log_a0, log_a1)


def _check_orders(orders) -> np.ndarray:
    orders = np.atleast_1d(np.asarray(orders, dtype=float))
    if orders.ndim != 1 or len(orders) == 0 or not np.all(orders > 1) or not np.all(np.isfinite(orders)):
        raise ValueError(f"orders must be a non-empty list of Renyi orders alpha > 1, got {orders!r}")
    return orders


def rdp_sampled_gaussian(q: float, noise_multiplier: float, orders=DEFAULT_ORDERS) -> np.ndarray:
    """Renyi DP of one step of the sampled Gaussian mechanism, at each order alpha.

    With sampling rate q and noise multiplier sigma (sensitivity 1), the RDP at order alpha is
    :math:`\\frac{1}{\\alpha-1}\\log A_\\alpha` with
    :math:`A_\\alpha = \\mathbb E_{z\\sim\\mu_0}[(\\mu(z)/\\mu_0(z))^\\alpha]`,
    :math:`\\mu = (1-q)\\mu_0 + q\\mu_1`, :math:`\\mu_0 = \\mathcal N(0,\\sigma^2)`,
    :math:`\\mu_1 = \\mathcal N(1,\\sigma^2)` (Mironov et al. 2019): a binomial sum for integer
    alpha, a convergent series otherwise. For q = 1 it is the Gaussian's alpha / (2 sigma^2).
    RDP composes additively: T steps cost T times this.

    Args:
        q: sample rate in (0, 1]. noise_multiplier: sigma > 0. orders: alphas > 1.

    Returns:
        float64 array of the same length as ``orders``.
    """
    q = _check_rate(q)
    sigma = _check_positive("noise_multiplier", noise_multiplier)
    orders = _check_orders(orders)
    return np.array(_rdp_cached(q, sigma, tuple(float(a) for a in orders)))


@functools.lru_cache(maxsize=4096)
def _rdp_cached(q: float, sigma: float, orders: tuple) -> tuple:
    out = []
    for alpha in orders:
        if q == 1.0:
            out.append(alpha / (2 * sigma ** 2))
        elif float(alpha).is_integer():
            out.append(_log_a_int(q, sigma, int(alpha)) / (alpha - 1))
        else:
            out.append(_log_a_frac(q, sigma, float(alpha)) / (alpha - 1))
    return tuple(out)


def rdp_to_epsilon(rdp, orders, delta: float) -> float:
    """Convert RDP values (already summed over steps) to the smallest (epsilon, delta) guarantee.

    Uses the conversion of Balle et al. (2020):
    :math:`\\varepsilon = \\min_\\alpha \\big[\\mathrm{RDP}(\\alpha) + \\log\\tfrac{\\alpha-1}{\\alpha}
    - \\tfrac{\\log\\delta + \\log\\alpha}{\\alpha-1}\\big]`, which is tighter than the classic
    :math:`\\mathrm{RDP}(\\alpha) + \\log(1/\\delta)/(\\alpha-1)`.

    Args:
        rdp: array of RDP values, one per order. orders: the alphas (> 1). delta: in (0, 1).

    Returns:
        epsilon >= 0 (a float; ``inf`` if every order gives infinity).
    """
    delta = _check_delta(delta)
    orders = _check_orders(orders)
    rdp = np.atleast_1d(np.asarray(rdp, dtype=float))
    if rdp.shape != orders.shape:
        raise ValueError(f"rdp and orders must have the same length, got {rdp.shape} and {orders.shape}")
    eps = rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return float(max(0.0, eps.min()))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            orders=DEFAULT_ORDERS) -> float:
    """Epsilon spent by ``steps`` DP-SGD steps with Poisson rate q and noise multiplier sigma.

    ``rdp_to_epsilon(steps * rdp_sampled_gaussian(q, sigma, orders), orders, delta)``.
    """
    steps = _check_int("steps", steps, 1)
    orders = _check_orders(orders)
    return rdp_to_epsilon(steps * rdp_sampled_gaussian(sample_rate, noise_multiplier, orders), orders, delta)


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      orders=DEFAULT_ORDERS, tol: float = 1e-3) -> float:
    """The smallest noise multiplier sigma (to ``tol`` relative) whose ``epsilon`` is at most the target.

    Epsilon falls as sigma grows, so a bisection on log sigma finds it.

    Returns:
        sigma > 0 with ``epsilon(sigma, ...) <= target_epsilon``.
    """
    target = _check_positive("target_epsilon", target_epsilon)
    lo, hi = 1e-2, 1.0
    while epsilon(hi, sample_rate, steps, delta, orders) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target}")
    if epsilon(lo, sample_rate, steps, delta, orders) <= target:
        return lo
    while hi / lo > 1 + tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if epsilon(mid, sample_rate, steps, delta, orders) > target else (lo, mid)
    return hi


# ----------------------------------------------------------------------------- mechanisms

def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.double()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating, list, tuple, np.ndarray)):
        raise TypeError(f"value must be a number or a tensor, got {type(value).__name__}")
    return torch.as_tensor(value, dtype=torch.float64)


def laplace_mechanism(value, sensitivity: float, epsilon: float, generator: torch.Generator | None = None):
    """Release ``value + Laplace(0, b)`` with b = L1 sensitivity / epsilon: epsilon-DP (delta = 0).

    Args:
        value: a number or tensor (the exact answer f(D)). sensitivity: max over neighbours of
            ||f(D) - f(D')||_1 (> 0). epsilon: > 0. generator: optional, for reproducible noise.

    Returns:
        A float64 tensor (or a tensor of the input's float dtype) of the value's shape.
    """
    value = _as_tensor(value)
    b = _check_positive("sensitivity", sensitivity) / _check_positive("epsilon", epsilon)
    u = torch.rand(value.shape, generator=generator, dtype=value.dtype, device=value.device) - 0.5
    return value - b * torch.sign(u) * torch.log1p(-2 * u.abs())


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float, analytic: bool = False) -> float:
    """The noise std of the Gaussian mechanism for (epsilon, delta)-DP with L2 sensitivity Delta.

    Classic (Dwork and Roth, Theorem A.1): :math:`\\sigma = \\Delta\\sqrt{2\\ln(1.25/\\delta)}/\\varepsilon`,
    proved only for epsilon < 1 (it raises otherwise). ``analytic=True`` gives the smallest sigma
    that is exactly enough for any epsilon (Balle and Wang 2018): the sigma where
    :math:`\\Phi(\\tfrac{\\Delta}{2\\sigma} - \\tfrac{\\varepsilon\\sigma}{\\Delta})
    - e^\\varepsilon\\Phi(-\\tfrac{\\Delta}{2\\sigma} - \\tfrac{\\varepsilon\\sigma}{\\Delta}) = \\delta`,
    found by bisection.
    """
    sens = _check_positive("sensitivity", sensitivity)
    eps = _check_positive("epsilon", epsilon)
    delta = _check_delta(delta)
    if not analytic:
        if eps >= 1:
            raise ValueError(f"the classic Gaussian-mechanism sigma is only proved for epsilon < 1, got {eps}; "
                             "use analytic=True")
        return sens * math.sqrt(2 * math.log(1.25 / delta)) / eps

    def dlt(s):
        return _phi(sens / (2 * s) - eps * s / sens) - math.exp(eps) * _phi(-sens / (2 * s) - eps * s / sens)

    lo, hi = 1e-6 * sens, sens
    while dlt(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if dlt(mid) > delta else (lo, mid)
        if hi / lo < 1 + 1e-12:
            break
    return hi


def gaussian_mechanism(value, sensitivity: float, epsilon: float, delta: float,
                       generator: torch.Generator | None = None, analytic: bool = False):
    """Release ``value + N(0, sigma^2)`` with sigma from ``gaussian_sigma`` (L2 sensitivity)."""
    value = _as_tensor(value)
    sigma = gaussian_sigma(sensitivity, epsilon, delta, analytic)
    return value + sigma * torch.randn(value.shape, generator=generator, dtype=value.dtype, device=value.device)


# ----------------------------------------------------------------------------- membership inference

@torch.no_grad()
def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of each example under ``model`` (eval mode), shape (N,), on the CPU in float64."""
    _check_model(model)
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = []
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(dev))
            logits = logits[0] if isinstance(logits, tuple) else logits
            out.append(F.cross_entropy(logits.double(), y[i:i + batch_size].to(dev), reduction="none").cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def _scores(s) -> torch.Tensor:
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1).cpu()
    if len(s) == 0:
        raise ValueError("scores must not be empty")
    return s


def roc_curve(pos_scores, neg_scores) -> tuple[torch.Tensor, torch.Tensor]:
    """False- and true-positive rates of "positive if score >= t" over every threshold t.

    Args:
        pos_scores: (P,) scores of the positives (members); neg_scores: (M,) of the negatives.

    Returns:
        (fpr, tpr): float64 tensors starting at (0, 0) and ending at (1, 1), fpr non-decreasing.
    """
    pos, neg = _scores(pos_scores), _scores(neg_scores)
    thresholds = torch.unique(torch.cat([pos, neg])).flip(0)
    tpr = (pos[None, :] >= thresholds[:, None]).double().mean(1)
    fpr = (neg[None, :] >= thresholds[:, None]).double().mean(1)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])


def roc_auc(pos_scores, neg_scores) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counting one half."""
    pos, neg = _scores(pos_scores), _scores(neg_scores)
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(pos_scores, neg_scores, fpr: float) -> float:
    """The largest true-positive rate over thresholds whose false-positive rate is <= ``fpr``."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    f, t = roc_curve(pos_scores, neg_scores)
    return float(t[f <= fpr + 1e-12].max())


def membership_inference_auc(model: nn.Module, members, non_members) -> float:
    """AUC of the loss-threshold attack (Yeom et al. 2018): "a member if its loss is low".

    Args:
        model: a classifier mapping x (N, ...) to logits (N, C).
        members: ``(x, y)`` training examples; non_members: ``(x, y)`` examples never trained on.

    Returns:
        The attack's AUC in [0, 1]; 0.5 means it cannot tell members from non-members.
    """
    _check_model(model)
    for name, pair in (("members", members), ("non_members", non_members)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name} must be a pair (x, y) of tensors")
    return roc_auc(-per_example_loss(model, *members), -per_example_loss(model, *non_members))


# ----------------------------------------------------------------------------- canaries

@torch.no_grad()
def sequence_log_likelihood(model: nn.Module, ids: torch.Tensor, prefix_len: int = 1) -> torch.Tensor:
    """Log-likelihood (nats) of each sequence's tokens after a prefix, under a causal language model.

    Args:
        model: maps ids (K, T) to logits (K, T, V) or to (logits, ...) like ``dlbook.transformer.GPT``.
        ids: (K, T) token ids. prefix_len: tokens given as context (>= 1): the sum runs over
            positions prefix_len .. T-1, each predicted from everything before it.

    Returns:
        (K,) float64 tensor: :math:`\\sum_{t\\ge p} \\log P(x_t \\mid x_{<t})`.
    """
    _check_model(model)
    prefix_len = _check_int("prefix_len", prefix_len, 1)
    if ids.dim() != 2 or ids.shape[1] <= prefix_len:
        raise ValueError(f"ids must be (K, T) with T > prefix_len={prefix_len}, got shape {tuple(ids.shape)}")
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = model(ids.to(dev))
        logits = out[0] if isinstance(out, tuple) else out
        logp = torch.log_softmax(logits.double(), -1)[:, :-1]                  # predicts tokens 1..T-1
        tok = logp.gather(-1, ids.to(dev)[:, 1:, None]).squeeze(-1)            # (K, T-1)
        return tok[:, prefix_len - 1:].sum(1).cpu()
    finally:
        model.train(was)


def exposure(canary_score: float, candidate_scores) -> float:
    """Exposure of a canary (Carlini et al. 2019): log2 ``|R|`` - log2 rank.

    The rank is 1 + the number of candidates scoring strictly higher (a higher score is more
    likely under the model); ``|R|`` is the number of candidates plus the canary. A canary the model
    has not memorized has rank about ``|R|`` / 2 and exposure about 1; the most likely of them all
    has exposure log2 ``|R|``.
    """
    cand = _scores(candidate_scores)
    rank = 1 + int((cand > float(canary_score)).sum())
    return math.log2(len(cand) + 1) - math.log2(rank)


def canary_exposure(model: nn.Module, canary: torch.Tensor, candidates: torch.Tensor, prefix_len: int = 1) -> float:
    """Exposure of a planted sequence among random alternatives that share its prefix.

    Args:
        model: a causal language model (see ``sequence_log_likelihood``).
        canary: (T,) token ids of the planted sequence. candidates: (K, T) alternatives (same
            prefix, random secret part), not containing the canary.
        prefix_len: length of the shared prefix; only the secret part is scored.

    Returns:
        ``exposure(ll(canary), ll(candidates))``, between 0 and log2(K + 1).
    """
    if canary.dim() != 1 or candidates.dim() != 2 or candidates.shape[1] != canary.shape[0]:
        raise ValueError(f"canary must be (T,) and candidates (K, T), got {tuple(canary.shape)} and "
                         f"{tuple(candidates.shape)}")
    scores = sequence_log_likelihood(model, torch.cat([canary[None], candidates]), prefix_len)
    return exposure(float(scores[0]), scores[1:])


# ----------------------------------------------------------------------------- Paillier (toy)

def _is_probable_prime(n: int, rng: random.Random, rounds: int = 32) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int, rng: random.Random) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        if _is_probable_prime(n, rng):
            return n


class Paillier:
    """A toy Paillier cryptosystem: additively homomorphic public-key encryption. NOT for real use.

    Keys: primes p, q, n = p q, g = n + 1, lambda = lcm(p - 1, q - 1), mu = lambda^{-1} mod n.
    Encrypt m in [0, n): :math:`c = g^m r^n \\bmod n^2` with a random r coprime to n.
    Decrypt: :math:`m = L(c^\\lambda \\bmod n^2)\\,\\mu \\bmod n` with L(u) = (u - 1) / n.
    Homomorphisms: :math:`E(a) E(b) = E(a + b \\bmod n)` and :math:`E(a)^k = E(k a \\bmod n)`.
    Real numbers travel as fixed-point integers (``encode``/``decode``), negatives as n - ``|m|``.

    The keys here are tiny (default 256-bit n) and drawn from Python's ``random`` seeded
    generator: fine to learn the arithmetic, trivially breakable. Real systems use n of
    2048 bits or more and a cryptographic random source.

    Args:
        bits: size of n in bits (>= 32). seed: seeds key generation and encryption randomness.
    """

    def __init__(self, bits: int = 256, seed: int = 0):
        bits = _check_int("bits", bits, 32)
        self._rng = random.Random(seed)
        while True:
            p, q = _random_prime(bits // 2, self._rng), _random_prime(bits - bits // 2, self._rng)
            if p != q and math.gcd(p * q, (p - 1) * (q - 1)) == 1:
                break
        self.n = p * q
        self.n2 = self.n * self.n
        self.g = self.n + 1
        self._lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        self._mu = pow(self._lam, -1, self.n)

    def _check_plain(self, m) -> int:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise TypeError(f"plaintext must be an int, got {type(m).__name__} (use encode() for reals)")
        if not 0 <= m < self.n:
            raise ValueError(f"plaintext must be in [0, n) = [0, {self.n}), got {m} (encode negatives with encode())")
        return int(m)

    def _check_cipher(self, c) -> int:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < self.n2:
            raise ValueError("ciphertext must be an int in (0, n^2)")
        return c

    def encrypt(self, m: int, r: int | None = None) -> int:
        """E(m) = g^m r^n mod n^2 for an int m in [0, n)."""
        m = self._check_plain(m)
        while r is None or math.gcd(r, self.n) != 1:
            r = self._rng.randrange(1, self.n)
        # g^m = (1 + n)^m = 1 + m n (mod n^2): no exponentiation needed for g.
        return (1 + m * self.n) * pow(r, self.n, self.n2) % self.n2

    def decrypt(self, c: int) -> int:
        """m = L(c^lambda mod n^2) mu mod n."""
        c = self._check_cipher(c)
        return (pow(c, self._lam, self.n2) - 1) // self.n * self._mu % self.n

    def add(self, c1: int, c2: int) -> int:
        """E(a) * E(b) mod n^2 = E(a + b mod n)."""
        return self._check_cipher(c1) * self._check_cipher(c2) % self.n2

    def mul_plain(self, c: int, k: int) -> int:
        """E(a)^k mod n^2 = E(k a mod n) for a plaintext int k (negative k allowed)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        return pow(self._check_cipher(c), int(k) % self.n, self.n2)

    def encode(self, x: float, scale: int = 2 ** 16) -> int:
        """Fixed point: round(x * scale), negatives as n - ``|.|``, so that sums wrap correctly mod n."""
        v = int(round(float(x) * scale))
        if abs(v) >= self.n // 2:
            raise ValueError(f"{x} * {scale} does not fit in the plaintext space (|value| < n/2)")
        return v % self.n

    def decode(self, m: int, scale: int = 2 ** 16) -> float:
        """Inverse of ``encode``: values above n/2 are negative."""
        m = self._check_plain(m)
        return (m - self.n if m > self.n // 2 else m) / scale


# ----------------------------------------------------------------------------- secure aggregation

def quantize(x: torch.Tensor, scale: float, bits: int = 32) -> torch.Tensor:
    """Fixed point modulo 2^bits: ``round(x * scale) mod 2^bits`` as int64 (negatives wrap around).

    Sums of up to 2^(bits-1) / max``|round(x * scale)|`` such values decode correctly.
    """
    bits = _check_int("bits", bits, 2)
    if bits > 62:
        raise ValueError(f"bits must be <= 62 (int64 arithmetic), got {bits}")
    _check_positive("scale", scale)
    v = torch.round(x.double() * scale).long()
    if v.abs().max() >= 2 ** (bits - 1):
        raise ValueError(f"values times scale must stay below 2^{bits - 1} in magnitude")
    return torch.remainder(v, 2 ** bits)


def dequantize(v: torch.Tensor, scale: float, bits: int = 32) -> torch.Tensor:
    """Inverse of ``quantize``: values >= 2^(bits-1) are negative; returns float64 ``v / scale``."""
    v = torch.remainder(v.long(), 2 ** bits)
    v = torch.where(v >= 2 ** (bits - 1), v - 2 ** bits, v)
    return v.double() / scale


def _pair_seed(seed: int, i: int, j: int) -> int:
    # Stand-in for the key the two clients would agree on with Diffie-Hellman.
    return int.from_bytes(hashlib.sha256(f"{seed}:{min(i, j)}:{max(i, j)}".encode()).digest()[:8], "little") >> 1


def _pair_mask(seed: int, i: int, j: int, shape, bits: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_pair_seed(seed, i, j))
    return torch.randint(0, 2 ** bits, tuple(shape), generator=g, dtype=torch.int64)


def pairwise_mask(client: int, n_clients: int, shape, bits: int = 32, seed: int = 0) -> torch.Tensor:
    """Client i's mask: :math:`\\sum_{j>i} m_{ij} - \\sum_{j<i} m_{ji} \\bmod 2^{bits}`.

    Each pair (i, j) shares a pseudo-random m_ij (uniform on [0, 2^bits), from a seed both know);
    i adds it and j subtracts it, so the masks of all clients sum to 0 modulo 2^bits exactly,
    while each mask alone is uniformly random and hides the client's update.

    Returns:
        int64 tensor of ``shape`` with values in [0, 2^bits).
    """
    n_clients = _check_int("n_clients", n_clients, 2)
    client = _check_int("client", client, 0)
    if client >= n_clients:
        raise ValueError(f"client must be in [0, {n_clients}), got {client}")
    total = torch.zeros(tuple(shape), dtype=torch.int64)
    for j in range(n_clients):
        if j != client:
            m = _pair_mask(seed, client, j, shape, bits)
            total = total + m if j > client else total - m
    return torch.remainder(total, 2 ** bits)


def mask_update(update: torch.Tensor, client: int, n_clients: int, bits: int = 32, seed: int = 0) -> torch.Tensor:
    """``(update + pairwise_mask(client, ...)) mod 2^bits`` for an int64 update from ``quantize``."""
    if not isinstance(update, torch.Tensor) or update.dtype != torch.int64:
        raise TypeError("update must be an int64 tensor (quantize it first)")
    return torch.remainder(update + pairwise_mask(client, n_clients, update.shape, bits, seed), 2 ** bits)


def secure_sum(masked: Sequence[torch.Tensor], bits: int = 32) -> torch.Tensor:
    """The server's aggregate: the masked updates summed modulo 2^bits (the masks cancel)."""
    if len(masked) == 0:
        raise ValueError("masked must hold at least one update")
    return torch.remainder(torch.stack(list(masked)).sum(0), 2 ** bits)


def recover_dropouts(total: torch.Tensor, dropped: Sequence[int], n_clients: int, bits: int = 32,
                     seed: int = 0) -> torch.Tensor:
    """Remove from a sum of survivors' masked updates the masks they share with dropped clients.

    A survivor i's mask contains +m_id (i < d) or -m_id (i > d) for each dropped d, which no
    longer cancels. With the pair seeds revealed (in a real protocol, reconstructed from secret
    shares the survivors hold), the server subtracts them and gets the survivors' plain sum.
    """
    dropped = sorted(set(int(d) for d in dropped))
    out = total.clone()
    for d in dropped:
        for i in range(n_clients):
            if i == d or i in dropped:
                continue
            m = _pair_mask(seed, i, d, total.shape, bits)
            out = out - m if i < d else out + m
    return torch.remainder(out, 2 ** bits)


# ----------------------------------------------------------------------------- federated averaging in processes

def _fed_data(n_clients: int, seed: int):
    from dlbook.data import load_digits
    d = load_digits()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(d.X_train), generator=g)
    shards = order.chunk(n_clients)
    return d, [(d.X_train[s], d.y_train[s]) for s in shards]


def _fed_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _set_flat(model: nn.Module, v: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(v[i:i + p.numel()].view_as(p))
            i += p.numel()


def _federated_main(argv=None) -> None:
    """The script each process runs: rank 0 is the server, ranks 1..k the clients."""
    import torch.distributed as dist

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--scale", type=float, default=2.0 ** 16)
    ap.add_argument("--secure", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fail-round", type=int, default=-1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        k = world - 1
        model = _fed_model(args.seed)
        d, shards = _fed_data(k, args.seed)
        n = _flat(model).numel()
        seen, plain_sums, secure_sums, seconds, accs = [], [], [], [], []
        for r in range(args.rounds):
            if r == args.fail_round and rank == 1:
                raise RuntimeError(f"client 1 fails in round {r} (as asked)")
            t0 = time.perf_counter()
            if rank == 0:
                update = torch.zeros(n, dtype=torch.int64)
            else:
                x, y = shards[rank - 1]
                local = _fed_model(args.seed)
                _set_flat(local, _flat(model))
                opt = torch.optim.SGD(local.parameters(), lr=args.lr)
                for _ in range(args.local_steps):
                    opt.zero_grad()
                    F.cross_entropy(local(x), y).backward()
                    opt.step()
                q_update = quantize(_flat(local) - _flat(model), args.scale, args.bits)
                update = mask_update(q_update, rank - 1, k, args.bits, args.seed + r) if args.secure else q_update
            gathered = [torch.zeros(n, dtype=torch.int64) for _ in range(world)] if rank == 0 else None
            dist.gather(update, gathered, dst=0)
            if rank == 0:
                total = secure_sum(gathered[1:], args.bits)
                step = dequantize(total, args.scale, args.bits) / k
                seen.append(gathered[1].clone())
                secure_sums.append(total)
            else:
                step = torch.zeros(n, dtype=torch.float64)
            dist.broadcast(step, src=0)
            _set_flat(model, _flat(model) + step.float())
            seconds.append(time.perf_counter() - t0)
            if rank == 0:
                with torch.no_grad():
                    accs.append(float((model(d.X_test).argmax(1) == d.y_test).float().mean()))
        # Verification only (outside the protocol): gather the unmasked quantized updates of the last round.
        if rank == 0:
            plain = [torch.zeros(n, dtype=torch.int64) for _ in range(world)]
        last = q_update if rank != 0 else torch.zeros(n, dtype=torch.int64)
        dist.gather(last, plain if rank == 0 else None, dst=0)
        if rank == 0 and args.out:
            plain_sums = torch.remainder(torch.stack(plain[1:]).sum(0), 2 ** args.bits)
            result = {"seen_client0": seen[-1], "client0_plain": plain[1], "secure_sum": secure_sums[-1],
                      "plain_sum": plain_sums, "seconds": seconds, "test_accuracy": accs,
                      "weights": _flat(model), "n_clients": k, "secure": bool(args.secure)}
            tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
            torch.save(result, tmp)
            os.replace(tmp, args.out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_federated(n_clients: int = 3, rounds: int = 5, local_steps: int = 5, lr: float = 0.1, secure: bool = True,
                  bits: int = 32, scale: float = 2.0 ** 16, seed: int = 0, timeout: float = 120.0,
                  fail_round: int = -1) -> dict:
    """Federated averaging on digits with k client processes and a server process (gloo).

    Each round every client copies the global model, takes ``local_steps`` SGD steps on its own
    shard, quantizes its update (``quantize``), masks it (``mask_update``, fresh masks each round)
    and sends it to the server with ``torch.distributed.gather``; the server adds the masked
    updates modulo 2^bits (``secure_sum``), decodes the mean update and broadcasts it. With
    ``secure=False`` the clients send their quantized updates unmasked (plain aggregation).

    All k + 1 processes run in their own process group and are killed when the call returns,
    raises or times out, so a failing run never leaves processes behind.

    Returns:
        ``{"seen_client0", "client0_plain", "secure_sum", "plain_sum", "seconds", "test_accuracy",
        "weights", "n_clients", "secure", "command"}`` (the tensors from the last round).

    Raises:
        RuntimeError: if a process fails or the run exceeds ``timeout``, with the output's tail.
    """
    from dlbook.distributed import free_port

    n_clients = _check_int("n_clients", n_clients, 2)
    rounds = _check_int("rounds", rounds, 1)
    with tempfile.TemporaryDirectory(prefix="dlbook-fed-") as tmp:
        out = Path(tmp) / "result.pt"
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_clients + 1}", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "dlbook.privacy",
                   "--rounds", str(rounds), "--local-steps", str(local_steps), "--lr", str(lr), "--bits", str(bits),
                   "--scale", str(scale), "--secure", str(int(secure)), "--seed", str(seed),
                   "--fail-round", str(fail_round), "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the federated run did not finish within {timeout} s and was killed") from None
        finally:       # whatever happened (timeout, an interrupt): no process of the group survives the call
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the federated run failed with exit code {proc.returncode}:\n{log[-3000:]}")
        result = torch.load(out, weights_only=True)
    result["command"] = "torchrun " + " ".join(command[3:])
    return result


def federated_processes() -> list[int]:
    """Process ids of every live process running ``run_federated``'s script (torchrun or a worker).

    Used to check that nothing is left behind after a run, even one that failed. Reads the
    process table with ``psutil`` when it is installed (it comes with Jupyter), else ``/proc``.
    """
    marker = "dlbook.privacy"
    me = os.getpid()
    try:
        import psutil
    except ImportError:
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "--fail-round" in cmd and int(entry.name) != me:
                found.append(int(entry.name))
        return sorted(found)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if marker in cmd and "--fail-round" in cmd and proc.info["pid"] != me:
            found.append(proc.info["pid"])
    return sorted(found)


if __name__ == "__main__":
    _federated_main()
    # Every collective is done and the process group destroyed. Leave without running the interpreter's
    # teardown, where gloo's helper threads can be destroyed while still joinable ("terminate called
    # without an active exception", seen as a SIGABRT of one rank under load).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
