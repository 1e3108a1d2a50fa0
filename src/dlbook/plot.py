"""The few figures every chapter draws, on matplotlib.

Each function draws into ``ax`` when given one (so figures compose into
subplots) and returns the Axes it drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_curves", "image_grid", "heatmap"]


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
