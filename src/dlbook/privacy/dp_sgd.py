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
    return torch.sqrt(sum(g.reshape(len(g), -1).pow(2).sum(1) for g in values))


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
        s = (factors.to(g.dtype) @ g.reshape(len(g), -1)).reshape(g.shape[1:])
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

    Returns:
        The batch's mean loss (a 0-d tensor, detached).
    """
    _check_positive("expected_batch_size", expected_batch_size)
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
    """What DPSGD needs from one layer: per-example squared norms, then the clipped sums."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.a = None      # the layer's input, detached
        self.g = None      # gradient of the (batch-size-scaled) loss w.r.t. the layer's output
        self.cache = {}

    # -- per-example squared norms of the layer's parameters' gradients, (B,)
    def norm2(self, scale: float) -> torch.Tensor:
        m, a, g = self.module, self.a, self.g * scale
        self.cache = {"g": g}
        if isinstance(m, nn.Linear):
            if a.dim() == 2:
                n2 = a.pow(2).sum(1) * g.pow(2).sum(1) if m.weight.requires_grad else 0
                if m.bias is not None and m.bias.requires_grad:
                    n2 = n2 + g.pow(2).sum(1)
                return n2
            a3, g3 = a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])
            self.cache.update(a3=a3, g3=g3)
            n2 = _gram_norm2(a3, g3) if m.weight.requires_grad else 0
            if m.bias is not None and m.bias.requires_grad:
                n2 = n2 + g3.sum(1).pow(2).sum(1)
            return n2
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            cols = self._unfold(a)                                    # (B, C k, L)
            g3 = g.reshape(len(g), g.shape[1], -1)                    # (B, O, L)
            psg = torch.bmm(g3, cols.transpose(1, 2))                 # (B, O, C k): per-example weight grads
            self.cache.update(psg=psg, g3=g3)
            n2 = psg.pow(2).sum((1, 2)) if m.weight.requires_grad else 0
            if m.bias is not None and m.bias.requires_grad:
                n2 = n2 + g3.sum(2).pow(2).sum(1)
            return n2
        if isinstance(m, nn.LayerNorm):
            xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
            lead = tuple(range(1, a.dim() - len(m.normalized_shape)))
            gw = (g * xhat).sum(lead) if lead else g * xhat          # (B, *normalized_shape)
            gb = g.sum(lead) if lead else g
            return self._affine(gw, gb)
        if isinstance(m, nn.GroupNorm):
            xhat = F.group_norm(a, m.num_groups, eps=m.eps)
            dims = tuple(range(2, a.dim()))            # spatial axes; none for (B, C) inputs
            if not dims:                               # (sum over an empty tuple would sum over everything)
                return self._affine(g * xhat, g)
            return self._affine((g * xhat).sum(dims), g.sum(dims))
        if isinstance(m, nn.Embedding):
            ids = a.reshape(len(a), -1)                               # (B, T)
            g3 = g.reshape(len(g), ids.shape[1], -1)                  # (B, T, D)
            same = (ids[:, :, None] == ids[:, None, :]).to(g3.dtype)  # tokens that share a row of the table
            self.cache.update(ids=ids, g3=g3)
            return (same * torch.bmm(g3, g3.transpose(1, 2))).sum((1, 2))
        raise TypeError(f"DPSGD does not support {type(m).__name__}")

    def _affine(self, gw, gb):
        m = self.module
        self.cache.update(gw=gw, gb=gb)
        n2 = 0
        if m.weight is not None and m.weight.requires_grad:
            n2 = n2 + gw.reshape(len(gw), -1).pow(2).sum(1)
        if m.bias is not None and m.bias.requires_grad:
            n2 = n2 + gb.reshape(len(gb), -1).pow(2).sum(1)
        return n2

    def _unfold(self, a):
        m = self.module
        if isinstance(m, nn.Conv1d):
            a = a.unsqueeze(-2)
            k, d, p, s = (1, m.kernel_size[0]), (1, m.dilation[0]), (0, m.padding[0]), (1, m.stride[0])
        else:
            k, d, p, s = m.kernel_size, m.dilation, m.padding, m.stride
        return F.unfold(a, k, dilation=d, padding=p, stride=s)

    # -- sum_i c_i g_i for each parameter
    def clipped_sums(self, c: torch.Tensor) -> dict:
        m, a, cache = self.module, self.a, self.cache
        g = cache["g"]
        out = {}
        if isinstance(m, nn.Linear):
            if a.dim() == 2:
                gc = g * c[:, None]
                out["weight"], out["bias"] = gc.t() @ a, gc.sum(0)
            else:
                a3, g3 = cache["a3"], cache["g3"]
                gc = g3 * c[:, None, None]
                out["weight"] = torch.einsum("bto,bti->oi", gc, a3)
                out["bias"] = gc.sum((0, 1))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            psg = cache["psg"]                                        # (B, O, C k): one vector-matrix product
            out["weight"] = (c @ psg.reshape(len(psg), -1)).reshape(m.weight.shape)
            out["bias"] = c @ cache["g3"].sum(2)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            gw, gb = cache["gw"], cache["gb"]
            out["weight"] = (c @ gw.reshape(len(gw), -1)).reshape(gw.shape[1:])
            out["bias"] = (c @ gb.reshape(len(gb), -1)).reshape(gb.shape[1:])
        elif isinstance(m, nn.Embedding):
            gc = (cache["g3"] * c[:, None, None]).reshape(-1, cache["g3"].shape[-1])
            out["weight"] = torch.zeros_like(m.weight).index_add_(0, cache["ids"].reshape(-1), gc)
        return {k: v for k, v in out.items() if getattr(m, k, None) is not None and getattr(m, k).requires_grad}


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
    weight decay) step follows. Supported layers: Linear, Conv1d, Conv2d (groups=1, zero padding),
    LayerNorm, GroupNorm, Embedding; a model with any other layer that has trainable parameters, or
    with a parameter shared between layers, is refused (use ``dp_sgd_step`` there).

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
        owner: dict[int, str] = {}
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(m, _SUPPORTED):
                raise TypeError(f"DPSGD computes per-example norms for {', '.join(t.__name__ for t in _SUPPORTED)}; "
                                f"layer {name!r} is a {type(m).__name__} with trainable parameters "
                                "(use dp_sgd_step, which works on any model, or freeze it)")
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and (m.groups != 1 or m.padding_mode != "zeros"
                                                          or isinstance(m.padding, str)):
                raise TypeError(f"DPSGD supports convolutions with groups=1 and numeric zero padding; {name!r} is {m}")
            for p in own:
                if id(p) in owner:
                    raise TypeError(f"parameter shared by {owner[id(p)]!r} and {name!r} (tied weights): per-example "
                                    "norms would not add up; untie it or use dp_sgd_step")
                owner[id(p)] = name
            layer = _Layer(m)
            self.layers.append(layer)
            self._hooks.append(m.register_forward_hook(self._make_hook(layer)))
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
        total = sum(layer.norm2(float(batch)) for layer in live)
        norms = torch.sqrt(total)
        c = _clip_factors(norms, self.max_norm)
        for layer in self.layers:
            if layer.g is None:   # a layer the loss did not reach: its clipped gradient is zero
                for p in layer.module.parameters(recurse=False):
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
                continue
            for pname, s in layer.clipped_sums(c.to(layer.g.dtype)).items():
                p = getattr(layer.module, pname)
                if self.noise_multiplier > 0:
                    s = s + self.noise_multiplier * self.max_norm * torch.randn(
                        s.shape, generator=self.generator, device=s.device, dtype=s.dtype)
                p.grad = (s / self.expected_batch_size).to(p.dtype)
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
