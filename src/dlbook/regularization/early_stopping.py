"""Early stopping (chapter 5, notebook 5): ``EarlyStopping(patience)`` keeps and restores the best weights,
``fit_early_stopping`` runs ``dlbook.train.fit`` with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dlbook.regularization._checks import _positive_int

__all__ = [
    "EarlyStopping", "fit_early_stopping",
]


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
