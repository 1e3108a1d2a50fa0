"""The few figures every chapter draws, on matplotlib.

Each function draws into ``ax`` when given one (so figures compose into
subplots) and returns the Axes it drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_curves", "image_grid", "heatmap", "plot_history"]


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=float)


def _axes(ax, figsize=(5, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_curves(curves: Mapping[str, Sequence[float]], xlabel: str = "step", ylabel: str = "loss",
                ax=None, logy: bool = False, smooth: int = 1, title: str | None = None):
    """Plot named curves (for example training loss per step for several runs).

    Args:
        curves: ``{label: values}``; each values is a 1-D sequence or tensor,
            or a pair ``(x, y)`` of sequences of equal length.
        smooth: window of a moving average applied to each curve (1 = none);
            noisy per-step losses read better smoothed.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty mapping {label: values}")
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be a positive int, got {smooth!r}")
    ax = _axes(ax)
    for label, values in curves.items():
        if isinstance(values, tuple) and len(values) == 2:
            x, y = _as_numpy(values[0]), _as_numpy(values[1])
        else:
            y = _as_numpy(values)
            x = np.arange(len(y))
        if y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"curve {label!r} must be 1-D with matching x, got shapes {x.shape} and {y.shape}")
        if smooth > 1 and len(y) >= smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = x[smooth - 1:]
        ax.plot(x, y, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return ax


def image_grid(images, labels: Sequence | None = None, ncols: int = 8, cmap: str = "gray_r",
               figsize_per_image: float = 0.9):
    """Show images in a grid.

    Args:
        images: tensor or array of shape (N, H, W), (N, 1, H, W) or (N, H*W)
            with a square H*W.
        labels: optional N titles.

    Returns:
        The matplotlib Figure.
    """
    imgs = _as_numpy(images)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    if imgs.ndim == 2:
        side = int(round(np.sqrt(imgs.shape[1])))
        if side * side != imgs.shape[1]:
            raise ValueError(f"flat images must have a square number of pixels, got {imgs.shape[1]}")
        imgs = imgs.reshape(-1, side, side)
    if imgs.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), (N, 1, H, W) or (N, H*W), got {images.shape}")
    n = len(imgs)
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {n} images but {len(labels)} labels")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(figsize_per_image * ncols, figsize_per_image * nrows * 1.15),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(imgs[i], cmap=cmap)
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=8)
    fig.tight_layout()
    return fig


def heatmap(matrix, xlabels: Sequence | None = None, ylabels: Sequence | None = None, ax=None,
            cmap: str = "viridis", annotate: bool = False, fmt: str = ".2f", colorbar: bool = True,
            title: str | None = None, vmin=None, vmax=None):
    """Draw a 2-D matrix (attention weights, a confusion matrix) with labelled axes.

    Args:
        matrix: shape (rows, cols).
        annotate: write each value in its cell (for small matrices).
    """
    m = _as_numpy(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {m.shape}")
    ax = _axes(ax, figsize=(4.5, 4))
    im = ax.imshow(m, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    for labels, setter, size in ((xlabels, ax.set_xticks, m.shape[1]), (ylabels, ax.set_yticks, m.shape[0])):
        if labels is not None:
            if len(labels) != size:
                raise ValueError(f"expected {size} labels, got {len(labels)}")
            setter(range(size), [str(s) for s in labels])
    if annotate:
        threshold = (np.nanmax(m) + np.nanmin(m)) / 2
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                    color="black" if v > threshold else "white")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return ax


def plot_history(history, axes=None, smooth: int = 1, title: str | None = None):
    """Draw what ``dlbook.train.fit`` measured: losses on the left, validation metrics on the right.

    The left panel shows the loss of every optimizer step (optionally smoothed
    with a moving average of ``smooth`` steps) and, at the end of each epoch,
    the epoch's mean training loss and the validation loss. The right panel,
    drawn only when the history has validation metrics other than the loss,
    shows them per epoch.

    Args:
        history: a ``dlbook.train.History`` (anything with ``step_loss`` and
            ``epochs``, a list of per-epoch dicts).
        axes: one Axes, or a sequence of two; default: a new figure.

    Returns:
        The list of Axes drawn on.
    """
    step_loss = getattr(history, "step_loss", None)
    epochs = getattr(history, "epochs", None)
    if step_loss is None or epochs is None:
        raise TypeError(f"history must be a dlbook.train.History (with step_loss and epochs), got {type(history).__name__}")
    if len(step_loss) == 0 or len(epochs) == 0:
        raise ValueError("history is empty: train for at least one epoch before plotting")
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be a positive int, got {smooth!r}")
    metric_keys = [k for k in epochs[-1] if k.startswith("val_") and k != "val_loss"]
    if axes is None:
        ncols = 2 if metric_keys else 1
        _, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.5), squeeze=False)
        axes = list(axes[0])
    elif not isinstance(axes, (list, tuple, np.ndarray)):
        axes = [axes]
    axes = list(np.ravel(axes))
    if metric_keys and len(axes) < 2:
        raise ValueError("this history has validation metrics: pass two axes, or none")

    ends = np.cumsum([e.get("steps", len(step_loss) // len(epochs)) for e in epochs]) - 1  # last step of each epoch
    label = "step loss" if smooth == 1 else f"step loss (mean of {smooth})"
    ax = plot_curves({label: step_loss}, xlabel="optimizer step", ylabel="loss", ax=axes[0],
                     smooth=smooth, title=title)
    ax.lines[-1].set_alpha(0.6)
    ax.plot(ends, [e["train_loss"] for e in epochs], "o-", label="train loss (epoch mean)")
    if "val_loss" in epochs[-1]:
        ax.plot(ends, [e["val_loss"] for e in epochs], "s-", label="val loss")
    ax.legend(frameon=False)
    if metric_keys:
        x = [e["epoch"] for e in epochs]
        plot_curves({k[4:]: (x, [e[k] for e in epochs]) for k in metric_keys}, xlabel="epoch",
                    ylabel="validation metric", ax=axes[1])
    return axes
