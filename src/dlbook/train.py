"""The one training loop of the book: ``fit`` and ``evaluate``.

Every chapter trains through this loop, so it is kept small enough to read in
one sitting::

    history = fit(model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, epochs=5)
    history.step_loss          # one float per optimizer step
    history.epochs[-1]         # {"epoch": 5, "train_loss": ..., "val_loss": ..., "val_accuracy": ...}
    history.samples_per_s      # training throughput

One optimizer step is::

    optimizer.zero_grad()
    loss = loss_fn(model(x), y)        # x: (B, ...), y: (B, ...); loss: a scalar, the batch mean
    loss.backward()
    clip_grad_norm_(params, c)         # optional
    optimizer.step(); scheduler.step() # scheduler optional

What the loop adds to those lines: batches moved to the model's device, the
losses kept as tensors and turned into floats once per epoch (a ``.item()``
per step would make a GPU wait for every step), a progress bar, validation
after each epoch, optional bf16 autocast on CUDA and ``torch.compile``, and a
checkpoint after each epoch that resumes *exactly*: the same weights, bit for
bit, as a run that was never interrupted.

A loader is anything that yields ``(x, y)`` batches again on every pass: a
``torch.utils.data.DataLoader``, ``dlbook.data.TensorBatches`` (what ``tensor_loader`` returns) or a list.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlbook.device import _mps_available, autocast

__all__ = ["History", "fit", "evaluate", "accuracy", "save_checkpoint", "load_checkpoint"]


# ----------------------------------------------------------------------------- history

@dataclass
class History:
    """What ``fit`` measured.

    Attributes:
        step_loss: the training loss of every optimizer step, in order (floats).
        epochs: one dict per epoch with ``"epoch"`` (1-based), ``"train_loss"``
            (mean over the epoch's samples), ``"lr"`` (of the first parameter
            group at the epoch's end), ``"time"`` (seconds), and with a
            validation loader ``"val_loss"``, ``"val_accuracy"`` and the other
            metrics, each prefixed ``val_``.
        wall_time: seconds the whole call took, validation included (summed
            over resumed runs).
        samples_per_s: training samples per second of training time (the
            optimizer steps, without validation).
        n_samples: training samples seen in all.
    """

    step_loss: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    wall_time: float = 0.0
    samples_per_s: float = 0.0
    n_samples: int = 0
    train_time: float = 0.0

    def series(self, key: str) -> list:
        """The values of one per-epoch key, e.g. ``history.series("val_accuracy")``."""
        if not self.epochs or key not in self.epochs[-1]:
            known = sorted(self.epochs[-1]) if self.epochs else []
            raise KeyError(f"no per-epoch value {key!r}; known keys: {known}")
        return [e[key] for e in self.epochs]

    @property
    def steps_per_epoch(self) -> list[int]:
        """How many optimizer steps each epoch took."""
        return [e["steps"] for e in self.epochs]

    def state_dict(self) -> dict:
        """A plain dict of lists and numbers (what a checkpoint stores)."""
        return {"step_loss": list(self.step_loss), "epochs": [dict(e) for e in self.epochs],
                "wall_time": self.wall_time, "samples_per_s": self.samples_per_s,
                "n_samples": self.n_samples, "train_time": self.train_time}

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "History":
        """The History that :meth:`state_dict` described."""
        return cls(**{k: state[k] for k in ("step_loss", "epochs", "wall_time", "samples_per_s",
                                              "n_samples", "train_time")})

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float) and k != "time")
        return (f"History({len(self.epochs)} epochs, {len(self.step_loss)} steps, {shown}, "
                f"{self.samples_per_s:,.0f} samples/s, {self.wall_time:.1f} s)")


# ----------------------------------------------------------------------------- batches

# ----------------------------------------------------------------------------- metrics

def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest logit is the target class.

    Args:
        output: logits of shape (N, C); target: class ids of shape (N,).

    Returns:
        A 0-d tensor in [0, 1] (on the output's device; no sync).
    """
    return (output.argmax(dim=1) == target).float().mean()


def _is_classification(output, target) -> bool:
    """True when ``output`` looks like (N, C) logits and ``target`` like (N,) class ids."""
    return (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)
            and output.ndim == 2 and target.ndim == 1 and len(output) == len(target)
            and not target.is_floating_point() and not target.is_complex())


# ----------------------------------------------------------------------------- helpers

def _to(batch, device: torch.device):
    """Move a tensor, or a tuple/list/dict of tensors, to ``device`` (no copy when already there)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _batch_size(y) -> int:
    if isinstance(y, torch.Tensor):
        return y.shape[0] if y.ndim else 1
    if isinstance(y, (tuple, list)):
        return _batch_size(y[0])
    if isinstance(y, Mapping):
        return _batch_size(next(iter(y.values())))
    return len(y)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _unpack(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("each batch must be a pair (x, y): inputs of shape (B, ...) and targets of shape (B, ...); "
                         f"got {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    return batch


def _check_loader(name: str, loader) -> None:
    if loader is None or not isinstance(loader, Iterable) or isinstance(loader, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of (x, y) batches such as a DataLoader or a list, "
                        f"got {type(loader).__name__}")
    if isinstance(loader, Iterator):  # a generator or iterator: empty after the first epoch
        raise TypeError(f"{name} is an iterator that is used up after one pass; pass something that can be "
                        "iterated again every epoch (a DataLoader, dlbook.data.tensor_loader, or a list of batches)")
    if hasattr(loader, "__len__") and len(loader) == 0:
        raise ValueError(f"{name} is empty: it yields no batches (is batch_size larger than the dataset "
                         "with drop_last=True?)")


def _check_metrics(metrics) -> None:
    if metrics is None:
        return
    if not isinstance(metrics, Mapping) or not all(callable(f) for f in metrics.values()):
        raise TypeError("metrics must be a dict {name: fn(output, target) -> batch mean}, "
                        f"got {type(metrics).__name__}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")


# ----------------------------------------------------------------------------- evaluate

@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: Callable, device=None, metrics: Mapping | None = None) -> dict:
    """Mean loss and metrics of ``model`` over every batch of ``loader``, in eval mode.

    Args:
        model: maps inputs x of shape (B, ...) to outputs, e.g. logits (B, C).
        loader: iterable of (x, y) batches.
        loss_fn: ``loss_fn(output, y)`` -> the batch mean (a scalar tensor).
        device: where to compute; default: where the model's parameters are.
        metrics: ``{name: fn(output, y) -> batch mean}``. Default: accuracy
            when outputs are (B, C) logits and targets (B,) class ids.

    Returns:
        ``{"loss": float, "accuracy": float, ...}``: sample-weighted means over the
        whole loader (batches of different sizes count by their size).
        The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
    _check_loader("loader", loader)
    _check_metrics(metrics)
    device = _model_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}   # per batch means, kept on the device: no sync per batch
    sizes: list[int] = []
    try:
        for batch in loader:
            x, y = _to(_unpack(batch), device)
            output = model(x)
            fns = metrics if metrics is not None else ({"accuracy": accuracy} if _is_classification(output, y) else {})
            values = {"loss": loss_fn(output, y), **{k: f(output, y) for k, f in fns.items()}}
            for k, v in values.items():
                parts.setdefault(k, []).append(torch.as_tensor(v, device=device).detach().float().reshape(()))
            sizes.append(_batch_size(y))
    finally:
        model.train(was_training)
    if not sizes:
        raise ValueError("loader yielded no batches, so there is nothing to evaluate")
    # Sample-weighted means, summed in float64 on the CPU (MPS has no float64).
    weights = torch.tensor(sizes, dtype=torch.float64)
    return {k: (torch.stack(v).cpu().double() @ weights / weights.sum()).item() for k, v in parts.items()}


# ----------------------------------------------------------------------------- checkpoints

def _rng_state(loader) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if _mps_available():
        state["mps"] = torch.mps.get_rng_state()
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(state: Mapping, loader) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and _mps_available():
        torch.mps.set_rng_state(state["mps"])
    generator = getattr(loader, "generator", None)
    if "loader" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["loader"])


def save_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None,
                    history: History | None = None, loader=None) -> Path:
    """Write everything needed to resume training exactly to ``path``.

    Saved: the model's and optimizer's state dicts, the scheduler's, the
    history so far (its number of epochs is the epoch to resume after), and
    every random state: Python, NumPy, torch (CPU and CUDA) and the loader's
    own generator when it has one (``tensor_loader``'s shuffling order). The
    file is written to a temporary name first and then renamed, so an
    interrupted save never leaves a broken checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "history": (history or History()).state_dict(), "rng": _rng_state(loader)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    loader=None, restore_rng: bool = True) -> History:
    """Load a checkpoint written by ``save_checkpoint`` into the given objects.

    Returns:
        The History stored in it; ``len(history.epochs)`` epochs were done.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError(f"{path} was saved without a scheduler, but a scheduler was given to resume")
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        _set_rng_state(state["rng"], loader)
    return History.from_state_dict(state["history"])


# ----------------------------------------------------------------------------- fit

def _progress_bar(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, mininterval=0.5)


def fit(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, train_loader,
        val_loader=None, epochs: int = 1, *, device=None, scheduler=None, scheduler_interval: str = "step",
        clip_grad_norm: float | None = None, metrics: Mapping | None = None, amp: bool = False,
        compile: bool | Mapping = False, progress: bool = True, checkpoint_path=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader`` and return its History.

    Args:
        model: maps a batch x of shape (B, ...) to outputs, e.g. logits (B, C).
        loss_fn: ``loss_fn(output, y)`` -> a scalar tensor, the batch mean.
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters
            (``dlbook.optim``'s are too).
        train_loader: iterable of (x, y) batches, iterated once per epoch.
        val_loader: optional; evaluated after every epoch (see ``evaluate``).
        epochs: total number of epochs (>= 1). With a checkpoint to resume
            from, only the epochs not yet done are run.
        device: where to train. Default: where the model's parameters are.
            Given, the model is moved there. Batches always follow the model.
        scheduler: optional learning-rate scheduler, stepped after every
            optimizer step (``scheduler_interval="step"``, the default: the
            book's warmup and cosine schedules count steps) or after every
            epoch (``"epoch"``). ``ReduceLROnPlateau`` is stepped once per
            epoch with the validation loss (the training loss without one).
        clip_grad_norm: if given, rescale gradients to this total L2 norm at most.
        metrics: ``{name: fn(output, y) -> batch mean}`` for validation;
            default accuracy for (B, C) logits and (B,) class ids.
        amp: bf16 autocast on CUDA (``dlbook.device.autocast``); a no-op on
            CPU and MPS, so results there are exact float32.
        compile: ``True`` or a dict of ``torch.compile`` options (for example
            ``{"mode": "reduce-overhead"}``). Off by default: the first call
            costs seconds of compilation.
        progress: show a tqdm progress bar (one per call; it disappears when done).
        checkpoint_path: if given, a checkpoint is saved there after every
            epoch, and if the file already exists training resumes from it,
            restoring model, optimizer, scheduler, history and random states,
            so that 1 epoch + resume + 1 epoch equals 2 epochs bit for bit.

    Returns:
        History with ``step_loss``, ``epochs``, ``wall_time``, ``samples_per_s``.
    """
    # -- check the arguments before any work is done
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    _check_loader("train_loader", train_loader)
    if val_loader is not None:
        _check_loader("val_loader", val_loader)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler must have a step() method (a torch.optim.lr_scheduler), got {type(scheduler).__name__}")
    if scheduler_interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    if clip_grad_norm is not None:
        _check_positive("clip_grad_norm", clip_grad_norm)
    _check_metrics(metrics)
    if not isinstance(compile, (bool, Mapping)):
        raise TypeError(f"compile must be a bool or a dict of torch.compile options, got {type(compile).__name__}")

    start = time.perf_counter()
    if device is not None:
        model.to(torch.device(device))
    device = _model_device(model)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    step_scheduler = scheduler if (scheduler is not None and scheduler_interval == "step" and not plateau) else None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    forward = model
    if compile:
        forward = torch.compile(model, **(compile if isinstance(compile, Mapping) else {}))

    history = History()
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        history = load_checkpoint(checkpoint_path, model, optimizer, scheduler, loader=train_loader)
    first_epoch = len(history.epochs) + 1
    wall_before = history.wall_time

    total = len(train_loader) * (epochs - first_epoch + 1) if hasattr(train_loader, "__len__") else None
    bar = _progress_bar(progress and first_epoch <= epochs, total)
    try:
        for epoch in range(first_epoch, epochs + 1):
            # -- one pass over the training data: the lines from the module docstring
            model.train()
            t0 = time.perf_counter()
            losses, sizes = [], []
            for batch in train_loader:
                x, y = _to(_unpack(batch), device)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, enabled=amp):
                    loss = loss_fn(forward(x), y)
                loss.backward()
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
                if step_scheduler is not None:
                    step_scheduler.step()
                losses.append(loss.detach())        # kept as a tensor: no GPU sync per step
                sizes.append(_batch_size(y))
                if bar is not None:
                    bar.update()
            if not losses:
                raise ValueError("train_loader yielded no batches in epoch "
                                 f"{epoch}; a loader must yield (x, y) batches on every pass")
            step_losses = torch.stack(losses).float().tolist()   # one sync per epoch
            n_seen = sum(sizes)
            train_loss = sum(l * b for l, b in zip(step_losses, sizes)) / n_seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"the training loss became {train_loss} in epoch {epoch}: "
                                         "lower the learning rate or clip gradients (clip_grad_norm=1.0)")
            train_time = time.perf_counter() - t0
            history.step_loss += step_losses
            history.n_samples += n_seen
            history.train_time += train_time
            record = {"epoch": epoch, "train_loss": train_loss, "steps": len(losses)}

            # -- validation, then the per-epoch scheduler and the checkpoint
            if val_loader is not None:
                with autocast(device, enabled=amp):
                    scores = evaluate(forward, val_loader, loss_fn, device=device, metrics=metrics)
                record.update({f"val_{k}": v for k, v in scores.items()})
            if scheduler is not None and plateau:
                scheduler.step(record.get("val_loss", train_loss))
            elif scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            record["lr"] = float(optimizer.param_groups[0]["lr"])
            record["time"] = time.perf_counter() - t0
            history.epochs.append(record)
            history.wall_time = wall_before + time.perf_counter() - start
            history.samples_per_s = history.n_samples / max(history.train_time, 1e-12)
            if bar is not None:
                shown = {k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_loss", "val_accuracy")}
                bar.set_postfix(epoch=epoch, **shown, refresh=False)
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, model, optimizer, scheduler, history, train_loader)
    finally:
        if bar is not None:
            bar.close()
    history.wall_time = wall_before + time.perf_counter() - start
    return history
