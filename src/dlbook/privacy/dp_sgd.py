"""DP-SGD: per-example gradients, clipping and noise, the ``DPSGD`` optimizer and Poisson batches.

Every example's gradient g_i is clipped to norm C, the clipped gradients are summed, Gaussian
noise N(0, sigma^2 C^2 I) is added and the result is divided by the expected batch size q N:

.. math::

    \\tilde g = \\frac{1}{qN}\\Big(\\sum_{i \\in B} g_i \\min\\big(1, \\tfrac{C}{\\lVert g_i\\rVert}\\big)
                + \\mathcal N(0, \\sigma^2 C^2 I)\\Big).

``per_sample_grads`` (``torch.func.vmap(grad(...))``), ``per_example_norms``, ``clip_and_noise``
and ``dp_sgd_step`` write out this definition step by step. ``DPSGD`` is an optimizer for
``dlbook.train.fit`` that gets per-example gradient *norms* from layer inputs and output gradients
without forming per-example gradients where it can ("ghost clipping"). ``poisson_loader`` draws
the Poisson-sampled batches the accountant assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dlbook.privacy._checks import _check_int, _check_model, _check_positive, _check_rate
from dlbook.privacy.accounting import epsilon

__all__ = [
    "per_sample_grads", "per_example_norms", "clip_and_noise", "dp_sgd_step", "DPSGD", "poisson_loader",
    "PoissonBatches",
]


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
            b, grp, positions = len(g), m.groups, g[0, 0].numel()
            g4 = g.reshape(b, grp, -1, positions)                        # (B, G, O, L)
            self.cache.update(g4=g4)
            ck, o = m.weight[0].numel(), m.out_channels // grp
            if self._on("weight") and positions * positions * (ck + o) < positions * ck * o:
                cols = self._unfold(a)                                     # (B, G, Ck, L)
                uu = torch.matmul(cols.transpose(2, 3), cols)              # (B, G, L, L)
                gg = torch.matmul(g4.transpose(2, 3), g4)
                n2 = n2 + (uu * gg).sum((1, 2, 3))
            elif self._on("weight"):
                psg = self._per_example_weight()                           # (B, *weight.shape)
                self.cache.update(psg=psg)
                n2 = n2 + psg.reshape(b, -1).pow(2).sum(1)
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

    def _padded(self):
        """The layer's input padded as the convolution pads it, and the padding still to apply (0 if done)."""
        m, a = self.module, self.a
        if m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return a, m.padding                                        # symmetric: the kernels pad for free
        if m.padding == "same":       # (stride 1) torch puts the odd extra pad on the right
            pads = [(dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2) for kk, dd in zip(m.kernel_size, m.dilation)]
        elif m.padding == "valid":
            pads = [(0, 0)] * len(m.kernel_size)
        else:
            pads = [(p, p) for p in m.padding]
        flat = [q for pair in reversed(pads) for q in pair]          # F.pad's order: last axis first
        if any(flat):
            a = F.pad(a, flat, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        return a, 0

    def _weight_grad(self, g, batch_groups: int):
        """The conv's weight gradient for output gradient g; with the batch as ``batch_groups`` groups
        (the input seen as one example of B C channels) it is every example's own, (B O, C/G, *k)."""
        m = self.module
        a, pad = self._padded()
        b = len(a)
        if batch_groups > 1:
            a, g = a.reshape(1, -1, *a.shape[2:]), g.reshape(1, -1, *g.shape[2:])
        conv_weight = torch.nn.grad.conv1d_weight if isinstance(m, nn.Conv1d) else torch.nn.grad.conv2d_weight
        shape = (m.weight.shape[0] * (b if batch_groups > 1 else 1), *m.weight.shape[1:])
        return conv_weight(a, shape, g, m.stride, pad, m.dilation, m.groups * (b if batch_groups > 1 else 1))

    def _per_example_weight(self):
        """(B, *weight.shape): each example's weight gradient, one grouped weight-gradient convolution."""
        g = self.cache["g"]
        return self._weight_grad(g, len(g)).view(len(g), *self.module.weight.shape)

    def _unfold(self, a):
        """(B, C, *spatial) -> (B, groups, C/groups * prod(kernel), L): each output position's receptive field."""
        m = self.module
        a, pad = self._padded()
        pad = (pad,) * len(m.kernel_size) if isinstance(pad, int) else pad
        k, d, s = m.kernel_size, m.dilation, m.stride
        if isinstance(m, nn.Conv1d):
            a, k, d, s, pad = a.unsqueeze(-2), (1, k[0]), (1, d[0]), (1, s[0]), (0, pad[0])
        cols = F.unfold(a, k, dilation=d, padding=pad, stride=s)      # (B, C k, L)
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
            return cache["psg"] if "psg" in cache else self._per_example_weight()
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
            g4 = cache["g4"]                                           # (B, G, O, L)
            if "psg" in cache:                                         # one (B,) x (B, O C k) product
                out["weight"] = lambda: (c @ cache["psg"].reshape(len(c), -1)).reshape(m.weight.shape)
            else:                                                      # the ordinary weight gradient of c_i g_i
                out["weight"] = lambda: self._weight_grad(g * c.view(-1, *[1] * (g.dim() - 1)), 1)
            out["bias"] = lambda: (c @ g4.sum(3).reshape(len(c), -1))
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
    Gram identity, :math:`\\langle U_i^\\top U_i, G_i^\\top G_i\\rangle`, and its clipped sum one
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
