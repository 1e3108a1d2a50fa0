"""Regularization: everything chapter 5 builds, for any ``nn.Module`` (chapter 5).

Regularization is any change to learning that aims at the error on unseen data
rather than on the training set. This module holds the pieces later chapters
reuse::

    Dropout(p), dropout(x, p, training)        inverted dropout, drop probability p
    l2_penalty(params), l1_penalty(params)     (1/2) sum w^2 and sum ``|w|``
    soft_threshold(w, t)                       the proximal step of t * ||w||_1 (exact zeros)
    decay_groups(model, weight_decay)          optimizer groups: no decay on biases and norm parameters
    smoothed_cross_entropy(logits, y, eps)     cross-entropy against (1 - eps) onehot + eps / K
    mixup(x, y, alpha, num_classes)            convex combinations of examples and of their targets
    EarlyStopping(patience), fit_early_stopping(...)   keep and restore the best weights
    expected_calibration_error, reliability_curve     top-label calibration in equal-width bins
    mc_dropout_predict, predictive_entropy, auroc     dropout at test time as an uncertainty estimate
    shift_images, rotate_images, augment_digits       label-preserving augmentation of small images
    map_batches(loader, fn)                    a loader whose batches pass through fn (augmentation, mixup)
    random_relu_features, ridge_regression     the random-features model of double descent

Conventions: ``p`` is the probability of *dropping* a unit, as in
``torch.nn.Dropout``; the dropout paper (Srivastava et al., 2014) writes p for
the probability of *keeping* it. Probabilities ``probs`` are (N, K) rows that
sum to 1; class ids ``target`` are int64 of shape (N,).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Dropout", "dropout", "l1_penalty", "l2_penalty", "soft_threshold", "decay_groups",
    "smoothed_targets", "smoothed_cross_entropy", "mixup", "map_batches",
    "EarlyStopping", "fit_early_stopping",
    "expected_calibration_error", "reliability_curve", "predictive_entropy", "mc_dropout_predict", "auroc",
    "shift_images", "rotate_images", "random_shift", "random_rotation", "augment_digits",
    "random_relu_features", "ridge_regression",
]


# ----------------------------------------------------------------------------- checks

def _tensor(name: str, x, floating: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _probability(name: str, value, closed_right: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if closed_right else ')'}, got {value!r}")
    return float(value)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _class_ids(name: str, target, n: int, num_classes: int | None = None) -> torch.Tensor:
    _tensor(name, target, floating=False)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one class id per row, got {tuple(target.shape)}")
    if num_classes is not None and n and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"{name} must hold class ids in [0, {num_classes}), got {int(target.min())}..{int(target.max())}")
    return target.long()


def _params(params) -> list[torch.Tensor]:
    if isinstance(params, nn.Module):
        params = params.parameters()
    if isinstance(params, torch.Tensor):
        params = [params]
    if not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of tensors or an nn.Module, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the tensors to penalize, e.g. model.parameters()")
    for p in params:
        _tensor("every parameter", p)
    return params


# ----------------------------------------------------------------------------- dropout

def dropout(x: torch.Tensor, p: float, training: bool = True, generator: torch.Generator | None = None, *,
            inplace: bool = False) -> torch.Tensor:
    """Inverted dropout: zero each entry with probability p, scale the survivors by 1 / (1 - p).

    In training, y = m * x / (1 - p) with m ~ Bernoulli(1 - p) drawn independently
    for every entry, so E[y] = x: the expected activation is the same as at test
    time, where dropout is the identity (``training=False``) and nothing needs
    rescaling. ``p`` is the *drop* probability, as in ``torch.nn.functional.dropout``.

    Args:
        x: any shape, floating point.
        p: drop probability in [0, 1]. p = 1 drops everything and returns x * 0 (as torch: there
            is nothing to rescale, and no random numbers are drawn).
        training: apply dropout (True) or return x unchanged (False).
        generator: optional ``torch.Generator`` for the mask (on x's device, or on
            the CPU: the mask is then moved to x's device).
        inplace: write the result into x (as ``F.dropout(..., inplace=True)``) and return x.

    Returns:
        A tensor of x's shape.
    """
    _tensor("x", x)
    p = _probability("p", p, closed_right=True)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x.mul_(0.0) if inplace else x * 0.0
    where = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)
    keep = u >= p                                     # P(keep) = 1 - p
    if inplace:
        return x.mul_(keep).div_(1.0 - p)
    return x * keep / (1.0 - p)


class Dropout(nn.Module):
    """Inverted dropout as a layer: :func:`dropout` in ``train()`` mode, the identity in ``eval()``.

    Args:
        p: drop probability in [0, 1] (``torch.nn.Dropout``'s convention; the dropout
            paper's p is the keep probability 1 - p).
        inplace: overwrite the input (as ``torch.nn.Dropout(inplace=True)``).

    Shape: input of any shape -> output of the same shape.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.p = _probability("p", p, closed_right=True)
        self.inplace = bool(inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" if self.inplace else f"p={self.p}"


# ----------------------------------------------------------------------------- norm penalties

def l2_penalty(params) -> torch.Tensor:
    """(1/2) sum_i ||w_i||^2 over the given tensors; its gradient with respect to w is w itself.

    So ``loss + lam * l2_penalty(params)`` has gradient ``grad(loss) + lam * w``: one SGD
    step on it equals one step of ``torch.optim.SGD(..., weight_decay=lam)``.

    Args:
        params: an iterable of tensors (``model.parameters()``, one group's params) or an nn.Module.

    Returns:
        A 0-d tensor, differentiable.
    """
    return 0.5 * sum((p * p).sum() for p in _params(params))


def l1_penalty(params) -> torch.Tensor:
    """sum_i ||w_i||_1 = sum of ``|w|`` over the given tensors; its (sub)gradient is sign(w).

    Gradient descent on ``loss + lam * l1_penalty`` pushes every weight toward 0 by
    lr * lam per step but, with steps of fixed size, makes it jump around 0 rather
    than land on it: exact zeros need the proximal step :func:`soft_threshold`.

    Args:
        params: an iterable of tensors or an nn.Module.

    Returns:
        A 0-d tensor, differentiable (torch uses sign(0) = 0 at w = 0).
    """
    return sum(p.abs().sum() for p in _params(params))


def soft_threshold(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """The proximal operator of threshold * ||w||_1: sign(w) * max(``|w|`` - threshold, 0).

    Proximal gradient descent for loss + lam ||w||_1 takes a plain gradient step on the
    loss, then ``w = soft_threshold(w, lr * lam)``: every weight with ``|w|`` <= lr * lam
    becomes exactly 0. Equal to ``torch.nn.functional.softshrink(w, threshold)``.

    Args:
        w: any shape. threshold: >= 0.

    Returns:
        A tensor of w's shape.
    """
    _tensor("w", w)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    return w.sign() * (w.abs() - threshold).clamp_min(0)


_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                 nn.modules.instancenorm._InstanceNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    from dlbook import norm as _norm                  # the book's own normalization layers (chapter 2)
    return isinstance(module, (_norm._BatchNorm, _norm.LayerNorm, _norm.GroupNorm, _norm.InstanceNorm2d, _norm.RMSNorm))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups that apply weight decay only to weight matrices and kernels.

    A parameter is decayed when it has two or more dimensions (a Linear weight
    (out, in), a Conv kernel (out, in, kh, kw), an embedding) and does not belong to
    a normalization layer. Biases and the gains and shifts of normalization layers
    are not: shrinking a bias toward 0 does not make the function simpler, and a
    norm's gain only sets a scale that the next layer can undo.

    Usage: ``torch.optim.AdamW(decay_groups(model, 0.05), lr=1e-3)``.

    Args:
        model: any nn.Module. weight_decay: >= 0, the decay of the first group.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]``
        (a group without parameters is left out). Frozen parameters (requires_grad False) are skipped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        in_norm = _is_norm(module)
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and not in_norm else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ----------------------------------------------------------------------------- label smoothing and mixup

def smoothed_targets(target: torch.Tensor, num_classes: int, eps: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Label-smoothed target distributions: (1 - eps) * onehot(target) + eps / K.

    The true class gets 1 - eps + eps/K and every other class eps/K (not eps/(K-1)):
    that is the convention of ``F.cross_entropy(..., label_smoothing=eps)``.

    Args:
        target: class ids (N,), or probability rows (N, K) that are smoothed the same way.
        num_classes: K. eps: in [0, 1).
        dtype: of the result; default float32 for class ids, the targets' own dtype for probabilities.

    Returns:
        (N, K) float rows that sum to 1.
    """
    K = _positive_int("num_classes", num_classes)
    eps = _probability("eps", eps)
    _tensor("target", target, floating=False)
    if target.is_floating_point():
        if target.dim() != 2 or target.shape[1] != K:
            raise ValueError(f"probability targets must have shape (N, {K}), got {tuple(target.shape)}")
        q = target if dtype is None else target.to(dtype)
    else:
        q = F.one_hot(_class_ids("target", target, len(target), K), K).to(dtype or torch.float32)
    return (1.0 - eps) * q + eps / K


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against label-smoothed targets: mean_n -sum_k q_nk log softmax(z_n)_k.

    q = (1 - eps) * onehot + eps / K (see :func:`smoothed_targets`). Equals
    ``F.cross_entropy(logits, target, label_smoothing=eps)``, for class ids and for
    probability targets (mixup's soft labels) alike; ``eps=0`` is plain cross-entropy.

    Args:
        logits: (N, K), or (N, K, d1, ..., dm) for K-way predictions at every position (as
            ``F.cross_entropy``: the class axis is axis 1). target: class ids (N,) (or
            (N, d1, ..., dm)) or probability rows of the logits' shape. eps: in [0, 1).

    Returns:
        A 0-d tensor: the mean over the N (N d1 ... dm) predictions.
    """
    _tensor("logits", logits)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, K) or (N, K, d1, ...), got {tuple(logits.shape)}")
    _tensor("target", target, floating=False)
    if logits.dim() > 2:                      # positions become rows: (N d1 ... dm, K)
        k = logits.shape[1]
        if target.is_floating_point():
            if target.shape != logits.shape:
                raise ValueError(f"probability targets must have the logits' shape {tuple(logits.shape)}, "
                                 f"got {tuple(target.shape)}")
            target = target.movedim(1, -1).reshape(-1, k)
        elif target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"class ids must have shape (N, d1, ...) = {(logits.shape[0], *logits.shape[2:])} "
                             f"for logits of shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        else:
            target = target.reshape(-1)
        logits = logits.movedim(1, -1).reshape(-1, k)
    if not target.is_floating_point():
        _class_ids("target", target, logits.shape[0], logits.shape[1])
    elif target.shape != logits.shape:
        raise ValueError(f"probability targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    q = smoothed_targets(target, logits.shape[1], eps, dtype=logits.dtype)
    return -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _beta_sample(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta distribution takes no generator; draw a seed from the generator (or the global
    # torch RNG) and sample with NumPy, so that results are reproducible either way.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup: train on convex combinations of pairs of examples and of their targets.

    One lam ~ Beta(alpha, alpha) per batch and a random pairing pi (a permutation)::

        x_mix = lam * x + (1 - lam) * x[pi]
        y_mix = lam * onehot(y) + (1 - lam) * onehot(y[pi])

    Train with a loss that takes probability targets, e.g.
    :func:`smoothed_cross_entropy` or ``F.cross_entropy``. Small alpha puts lam near 0
    or 1 (little mixing); alpha = 1 makes it uniform.

    Args:
        x: inputs (N, ...), floating point. y: class ids (N,) or probability rows (N, K).
        alpha: > 0. num_classes: K.
        generator: optional CPU ``torch.Generator`` for lam and the pairing.

    Returns:
        (x_mix of x's shape, y_mix of shape (N, K) in x's dtype).
    """
    _tensor("x", x)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or math.isinf(alpha):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    if x.dim() < 1 or len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    q = smoothed_targets(y, num_classes, 0.0, dtype=x.dtype)
    lam = _beta_sample(float(alpha), generator)
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * q + (1 - lam) * q[perm]


class _MappedBatches:
    def __init__(self, loader, fn):
        self.loader, self.fn = loader, fn

    def __iter__(self):
        for x, y in self.loader:
            yield self.fn(x, y)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def generator(self):                      # fit's checkpoints save the inner loader's order
        return getattr(self.loader, "generator", None)


def map_batches(loader, fn: Callable):
    """A loader that yields ``fn(x, y)`` for every (x, y) batch of ``loader``, anew on every pass.

    The way to augment or mix only the *training* batches given to ``dlbook.train.fit``
    while validation and test loaders stay untouched::

        train = map_batches(tensor_loader(X, y, 32), lambda x, y: (augment_digits(x), y))
        train = map_batches(loader, lambda x, y: mixup(x, y, 0.2, 10))

    Args:
        loader: re-iterable (x, y) batches (``tensor_loader``, a DataLoader, a list).
        fn: ``fn(x, y) -> (x', y')``.
    """
    if loader is None or not isinstance(loader, Iterable) or iter(loader) is loader:
        raise TypeError("loader must be re-iterable (a tensor_loader, DataLoader or list), "
                        f"got {type(loader).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(x, y) -> (x, y), got {type(fn).__name__}")
    return _MappedBatches(loader, fn)


# ----------------------------------------------------------------------------- early stopping

class EarlyStopping:
    """Stop when a validation score has not improved for ``patience`` epochs; keep the best weights.

    After each epoch call ``step(score, model)``: when the score improves on the best
    so far (by more than ``min_delta``), a copy of ``model.state_dict()`` is kept. It
    returns True once ``patience`` epochs in a row brought no improvement. Then
    ``restore(model)`` loads the best weights, not the last ones. With
    ``dlbook.train.fit``, which has no callbacks, run one epoch per call::

        stopper = EarlyStopping(patience=5)
        for _ in range(max_epochs):
            h = fit(model, loss_fn, opt, train, val, epochs=1, progress=False)
            if stopper.step(h.epochs[-1]["val_accuracy"], model):
                break
        stopper.restore(model)

    or call :func:`fit_early_stopping`, which does exactly that and joins the histories.

    Args:
        patience: epochs without improvement before stopping, >= 1.
        mode: ``"max"`` (accuracy) or ``"min"`` (loss).
        min_delta: an improvement must beat the best by more than this (>= 0).

    Attributes:
        best: the best score so far (None before the first step).
        best_epoch: the epoch of the best score, counted from 1.
        epoch: epochs seen.
        bad_epochs: epochs since the best.
        best_state: the kept state dict (tensors cloned, on the model's device).
    """

    def __init__(self, patience: int = 5, mode: str = "max", min_delta: float = 0.0):
        self.patience = _positive_int("patience", patience)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' (a score such as accuracy) or 'min' (a loss), got {mode!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.mode, self.min_delta = mode, float(min_delta)
        self.best: float | None = None
        self.best_epoch = 0
        self.epoch = 0
        self.bad_epochs = 0
        self.best_state: dict | None = None

    def improved(self, score: float) -> bool:
        """Whether ``score`` beats the best so far by more than ``min_delta``."""
        if self.best is None:
            return True
        return score > self.best + self.min_delta if self.mode == "max" else score < self.best - self.min_delta

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` steps have passed without an improvement of the best score."""
        return self.bad_epochs >= self.patience

    def step(self, score: float, model: nn.Module) -> bool:
        """Record one epoch's validation ``score``; returns True when training should stop."""
        if isinstance(score, torch.Tensor):
            score = score.item()
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise ValueError(f"score must be a number (not NaN), got {score!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.epoch += 1
        if self.improved(float(score)):
            self.best, self.best_epoch, self.bad_epochs = float(score), self.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.should_stop

    def restore(self, model: nn.Module) -> nn.Module:
        """Load the best weights into ``model`` (in place) and return it."""
        if self.best_state is None:
            raise RuntimeError("no score was recorded yet: call step(score, model) after each epoch first")
        model.load_state_dict(self.best_state)
        return model

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, mode={self.mode!r}, best={self.best}, "
                f"best_epoch={self.best_epoch}, epoch={self.epoch})")


def fit_early_stopping(model: nn.Module, loss_fn: Callable, optimizer, train_loader, val_loader,
                       max_epochs: int, stopper: EarlyStopping, monitor: str = "val_accuracy",
                       restore: bool = True, **fit_kwargs):
    """``dlbook.train.fit`` one epoch at a time, stopped and restored by ``stopper``.

    Args:
        model, loss_fn, optimizer, train_loader, val_loader: as for ``fit``.
        max_epochs: at most this many epochs (>= 1).
        stopper: an :class:`EarlyStopping`. monitor: the per-epoch key it watches
            (``"val_accuracy"``, ``"val_loss"``, ...; match ``stopper.mode``).
        restore: load the best weights at the end (else the model keeps the last ones).
        fit_kwargs: passed to ``fit`` (``device``, ``scheduler``, ...; ``progress`` defaults to False).

    Returns:
        One ``History`` over all epochs run (epochs numbered 1, 2, ...).
    """
    from dlbook.train import History, fit     # train sits below regularization in the book's layering

    max_epochs = _positive_int("max_epochs", max_epochs)
    if not isinstance(stopper, EarlyStopping):
        raise TypeError(f"stopper must be an EarlyStopping, got {type(stopper).__name__}")
    fit_kwargs.setdefault("progress", False)
    history = History()
    for epoch in range(1, max_epochs + 1):
        h = fit(model, loss_fn, optimizer, train_loader, val_loader, epochs=1, **fit_kwargs)
        record = dict(h.epochs[-1], epoch=epoch)
        if monitor not in record:
            raise KeyError(f"no per-epoch value {monitor!r}; known keys: {sorted(record)}")
        history.epochs.append(record)
        history.step_loss += h.step_loss
        history.n_samples += h.n_samples
        history.train_time += h.train_time
        history.wall_time += h.wall_time
        if stopper.step(record[monitor], model):
            break
    history.samples_per_s = history.n_samples / max(history.train_time, 1e-12)
    if restore:
        stopper.restore(model)
    return history


# ----------------------------------------------------------------------------- calibration

def _check_probs(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _tensor("probs", probs)
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, K) with N >= 1, got {tuple(probs.shape)}")
    _class_ids("target", target, probs.shape[0], probs.shape[1])
    if bool((probs < 0).any()) or not torch.allclose(probs.sum(1).double(), torch.ones((), dtype=torch.float64,
                                                                                         device=probs.device), atol=1e-3):
        raise ValueError("probs must be probabilities: non-negative rows that sum to 1 (apply softmax to logits first)")
    return target.long()


def reliability_curve(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15):
    """Top-label confidence against accuracy, in ``n_bins`` equal-width confidence bins.

    Each prediction's confidence is c = max_k p_k, its prediction argmax_k p_k.
    Bin b holds the confidences in (b/B, (b+1)/B] (the first bin includes 0).

    Args:
        probs: (N, K) probabilities. target: (N,) class ids. n_bins: B >= 1.

    Returns:
        (confidence, accuracy, count), each of shape (B,), float64 on the CPU:
        the mean confidence and the accuracy of the predictions in each bin (NaN
        for an empty bin) and how many predictions fell in it. A perfectly
        calibrated model has accuracy = confidence in every bin.
    """
    n_bins = _positive_int("n_bins", n_bins)
    target = _check_probs(probs, target)
    conf, pred = probs.detach().double().cpu().max(dim=1)
    correct = (pred == target.cpu()).double()
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    sum_conf = torch.bincount(bins, weights=conf, minlength=n_bins)
    sum_acc = torch.bincount(bins, weights=correct, minlength=n_bins)
    nan = torch.full_like(count, float("nan"))
    return (torch.where(count > 0, sum_conf / count.clamp_min(1), nan),
            torch.where(count > 0, sum_acc / count.clamp_min(1), nan), count)


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: sum_b (``|B_b|`` / N) * ``|acc(B_b) - conf(B_b)|``.

    Top-label confidence, ``n_bins`` equal-width bins on [0, 1] (see
    :func:`reliability_curve`), empty bins contributing 0. 0 is perfect; the value
    depends on the bin count, so report it with the ECE.

    Args:
        probs: (N, K) probabilities (rows sum to 1). target: (N,) class ids. n_bins: >= 1.

    Returns:
        A float in [0, 1].
    """
    conf, acc, count = reliability_curve(probs, target, n_bins)
    gap = torch.where(count > 0, (acc - conf).abs(), torch.zeros_like(conf))
    return float((count * gap).sum() / count.sum())


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each predictive distribution: H(p) = -sum_k p_k log p_k (nats; 0 log 0 = 0).

    Args:
        probs: (..., K) probabilities.

    Returns:
        (...,): between 0 (certain) and log K (uniform).
    """
    _tensor("probs", probs)
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def _dropout_layers(model: nn.Module) -> list[nn.Module]:
    kinds = (Dropout, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
    return [m for m in model.modules() if isinstance(m, kinds)]


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, x: torch.Tensor, passes: int = 20) -> torch.Tensor:
    """Monte Carlo dropout: ``passes`` stochastic forward passes with only the dropout layers active.

    Every other layer stays in eval mode (batch norm uses its running statistics),
    so the passes differ only by their dropout masks; the mean of the returned
    probabilities is the MC-dropout prediction (Gal and Ghahramani, 2016). The
    model's train/eval modes are restored afterwards.

    Args:
        model: maps x (N, ...) to logits (N, K); must contain a dropout layer
            (``Dropout`` or ``torch.nn.Dropout``). x: a batch on the model's device.
        passes: T >= 1.

    Returns:
        (T, N, K) softmax probabilities.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    passes = _positive_int("passes", passes)
    layers = _dropout_layers(model)
    if not layers:
        raise ValueError("model has no dropout layer, so every pass would give the same output")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in layers:
            m.train()
        return torch.stack([F.softmax(model(x), dim=-1) for _ in range(passes)])
    finally:
        for m, mode in modes.items():
            m.train(mode)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Ties count one half (the Mann-Whitney U statistic divided by n_pos * n_neg), so
    it equals ``sklearn.metrics.roc_auc_score(labels, scores)``. 0.5 is chance.

    Args:
        scores: (N,) real numbers, higher meaning "more likely positive".
        labels: (N,) booleans or 0/1, with at least one of each.

    Returns:
        A float in [0, 1].
    """
    _tensor("scores", scores)
    _tensor("labels", labels, floating=False)
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both have shape (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    pos = labels.bool().cpu()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain at least one positive and one negative")
    s = scores.detach().double().cpu()
    # Average ranks (ties share the mean of their ranks), 1-based.
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


# ----------------------------------------------------------------------------- augmentation

def _as_images(x: torch.Tensor) -> tuple[torch.Tensor, Callable]:
    """(N, C, H, W) as is; (N, 64) flattened 8x8 digits as (N, 1, 8, 8). Returns the images and the way back."""
    _tensor("x", x)
    if x.dim() == 4:
        return x, lambda t: t
    if x.dim() == 2 and x.shape[1] == 64:
        return x.reshape(-1, 1, 8, 8), lambda t: t.reshape(-1, 64)
    raise ValueError(f"x must be images (N, C, H, W) or flattened 8x8 digits (N, 64), got shape {tuple(x.shape)}")


def _per_sample(name: str, v, n: int, device, dtype) -> torch.Tensor:
    v = torch.as_tensor(v, device=device, dtype=dtype)
    if v.dim() == 0:
        v = v.expand(n)
    if v.shape != (n,):
        raise ValueError(f"{name} must be a number or have shape ({n},), one per image, got {tuple(v.shape)}")
    return v


def shift_images(x: torch.Tensor, dy, dx, fill: float = 0.0) -> torch.Tensor:
    """Translate each image by whole pixels: out[n, :, i, j] = x[n, :, i - dy_n, j - dx_n], ``fill`` outside.

    Positive dy moves the content down, positive dx to the right; pixels pushed over
    the border are lost and the uncovered ones get ``fill`` (0 = the digits'
    background when pixels are in [0, 1], i.e. ``load_digits(standardize=False)``).

    Args:
        x: (N, C, H, W), or (N, 64) flattened 8x8 digits (returned flattened).
        dy, dx: ints, or int tensors of shape (N,), one shift per image.

    Returns:
        A tensor of x's shape.
    """
    imgs, back = _as_images(x)
    N, C, H, W = imgs.shape
    dy = _per_sample("dy", dy, N, imgs.device, torch.long)
    dx = _per_sample("dx", dx, N, imgs.device, torch.long)
    rows = torch.arange(H, device=imgs.device)[None, :] - dy[:, None]        # (N, H) source rows
    cols = torch.arange(W, device=imgs.device)[None, :] - dx[:, None]        # (N, W) source columns
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]   # (N, H, W)
    n = torch.arange(N, device=imgs.device)[:, None, None]
    out = imgs[n, :, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]        # (N, H, W, C)
    out = torch.where(inside[..., None], out, torch.full_like(out, fill))
    return back(out.permute(0, 3, 1, 2).contiguous())


def rotate_images(x: torch.Tensor, degrees) -> torch.Tensor:
    """Rotate each image about its centre by ``degrees`` (counter-clockwise), bilinear, zeros outside.

    Built on ``F.affine_grid`` + ``F.grid_sample`` (``align_corners=False``), so a
    rotation by a multiple of 90 degrees of a square image moves pixel centres onto
    pixel centres and equals ``torch.rot90`` up to rounding.

    Args:
        x: (N, C, H, W), or (N, 64) flattened 8x8 digits (returned flattened).
        degrees: a number or a tensor (N,), one angle per image.

    Returns:
        A tensor of x's shape.
    """
    imgs, back = _as_images(x)
    N = imgs.shape[0]
    theta = _per_sample("degrees", degrees, N, imgs.device, imgs.dtype) * (math.pi / 180)
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(cos)
    # affine_grid maps output coordinates to input ones: the inverse rotation, in (x, y) order with y down.
    A = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)   # (N, 2, 3)
    grid = F.affine_grid(A, list(imgs.shape), align_corners=False)
    return back(F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def random_shift(x: torch.Tensor, max_shift: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by random whole pixels dy, dx, each uniform in {-max_shift, ..., max_shift}.

    Args:
        x: (N, C, H, W) or (N, 64). max_shift: int >= 0. generator: optional CPU generator.

    Returns:
        A tensor of x's shape (see :func:`shift_images`).
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    n = _as_images(x)[0].shape[0]
    d = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator).to(x.device)
    return shift_images(x, d[0], d[1])


def random_rotation(x: torch.Tensor, max_degrees: float = 15.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by an angle uniform in [-max_degrees, max_degrees].

    Args:
        x: (N, C, H, W) or (N, 64). max_degrees: >= 0. generator: optional CPU generator.

    Returns:
        A tensor of x's shape (see :func:`rotate_images`).
    """
    if isinstance(max_degrees, bool) or not isinstance(max_degrees, (int, float)) or not max_degrees >= 0:
        raise ValueError(f"max_degrees must be a number >= 0, got {max_degrees!r}")
    n = _as_images(x)[0].shape[0]
    return rotate_images(x, _uniform(n, -max_degrees, max_degrees, generator, x.device))


def augment_digits(x: torch.Tensor, max_shift: int = 1, max_degrees: float = 10.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A random small rotation, then a random shift of every image: label-preserving for digits.

    Apply it to *training* batches only (see :func:`map_batches`); validation and test
    data are never augmented. Pixels are assumed to have background 0
    (``load_digits(standardize=False)``).

    Args:
        x: (N, C, H, W) or (N, 64). max_shift: pixels. max_degrees: degrees. generator: optional CPU generator.

    Returns:
        A tensor of x's shape.
    """
    return random_shift(random_rotation(x, max_degrees, generator), max_shift, generator)


# ----------------------------------------------------------------------------- double descent

def random_relu_features(x: torch.Tensor, num_features: int, seed: int = 0) -> torch.Tensor:
    """Random ReLU features: phi(x) = max(0, x W) with W (d, p) fixed, W_ij ~ N(0, 1/d).

    Only a linear read-out on phi is trained, so "model size" is just p, and least
    squares on phi is a convex problem with a closed-form solution. The same seed
    gives the same W, so train and test inputs share their features, and a larger
    p with the same seed adds columns only after drawing all of W.

    Args:
        x: (N, d) inputs. num_features: p >= 1. seed: seeds W.

    Returns:
        (N, p) features in x's dtype.
    """
    _tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, d), got {tuple(x.shape)}")
    p = _positive_int("num_features", num_features)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(x.shape[1], p, generator=g, dtype=torch.float64) / math.sqrt(x.shape[1])
    return torch.relu(x @ W.to(x.device, x.dtype))


def ridge_regression(features: torch.Tensor, targets: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Least-squares weights w = argmin ||Phi w - Y||^2 + ridge * ||w||^2; with ridge 0, the minimum-norm solution.

    ridge = 0: w = pinv(Phi) Y, the interpolating solution of smallest norm when
    p > n (what gradient descent from 0 converges to). ridge > 0:
    w = Phi^T (Phi Phi^T + ridge I)^{-1} Y, the same as (Phi^T Phi + ridge I)^{-1} Phi^T Y,
    solved in whichever of the two n x n or p x p forms is smaller. Computed in float64.

    Args:
        features: Phi (n, p). targets: Y (n,) or (n, K). ridge: >= 0.

    Returns:
        w of shape (p,) or (p, K), float64.
    """
    _tensor("features", features)
    _tensor("targets", targets)
    if features.dim() != 2 or targets.dim() not in (1, 2) or len(targets) != len(features):
        raise ValueError(f"features must be (n, p) and targets (n,) or (n, K) with the same n, "
                         f"got {tuple(features.shape)} and {tuple(targets.shape)}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    Phi, Y = features.double(), targets.double()
    n, p = Phi.shape
    if ridge == 0:
        return torch.linalg.pinv(Phi) @ Y
    if p > n:
        return Phi.T @ torch.linalg.solve(Phi @ Phi.T + ridge * torch.eye(n, dtype=Phi.dtype, device=Phi.device), Y)
    return torch.linalg.solve(Phi.T @ Phi + ridge * torch.eye(p, dtype=Phi.dtype, device=Phi.device), Phi.T @ Y)
