"""Label-preserving augmentation of small images (chapter 5, notebook 5).

``shift_images`` and ``rotate_images`` (deterministic), ``random_shift``, ``random_rotation`` and
``augment_digits`` (random, per image), and ``map_batches(loader, fn)``, a loader whose batches
pass through fn (augmentation, mixup).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from dlbook.regularization._checks import _tensor

__all__ = [
    "map_batches", "shift_images", "rotate_images", "random_shift", "random_rotation", "augment_digits",
]


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
