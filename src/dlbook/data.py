"""Offline-first datasets, a character tokenizer, and loaders.

Everything the book trains on is here, and none of it needs a network:

* ``load_digits``: scikit-learn's bundled 8x8 digits, split once and for all.
* ``make_regression`` / ``make_classification``: synthetic data from a seed.
* ``pydoc_text`` / ``docstring_corpus``: English prose that ships with Python.
* ``CharTokenizer``, ``windows``, ``random_batch``: text to (input, target) pairs.
* ``fetch``, ``load_mnist``, ``load_tiny_shakespeare``: optional downloads for
  readers with a network, checksummed and cached, that fail clearly offline.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DigitsSplits", "load_digits", "make_regression", "make_classification", "TensorBatches", "tensor_loader",
    "pydoc_text", "docstring_corpus", "CharTokenizer", "windows", "random_batch", "split_ids",
    "key_value_sequences",
    "DATASETS", "RemoteFile", "DownloadError", "fetch", "load_mnist", "load_tiny_shakespeare",
]


# ----------------------------------------------------------------------------- checks

def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- digits

@dataclass(frozen=True)
class DigitsSplits:
    """The digits dataset split into train / validation / test tensors.

    ``X_*`` are float32 of shape ``(N, 64)`` (or ``(N, 1, 8, 8)`` when loaded
    with ``flatten=False``); ``y_*`` are int64 labels 0-9 of shape ``(N,)``.
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self) -> int:
        """The number of classes, 10 (the digits 0-9)."""
        return 10

    def to(self, device) -> "DigitsSplits":
        """The same splits on another device."""
        return DigitsSplits(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def load_digits(flatten: bool = True, standardize: bool = True, val_frac: float = 0.2,
                test_frac: float = 0.2, split_seed: int = 0, device=None) -> DigitsSplits:
    """scikit-learn's 1,797 handwritten 8x8 digits, as tensors with a fixed split.

    Pixels (0-16) are scaled to [0, 1]. With ``standardize``, each pixel is
    shifted and scaled by the *training* mean and standard deviation. Border
    pixels are (nearly) constant in the training set: dividing by their tiny
    deviation would turn a rare ink pixel on another split into a value in the
    thousands. So deviations are floored at one grey level (1/16), which keeps
    every standardized value below 16 in magnitude.

    The split is stratified by class and depends only on ``split_seed``, so
    every chapter sees the same test set: with the defaults, 1,077 / 360 / 360.

    Returns:
        DigitsSplits with X of shape (N, 64), or (N, 1, 8, 8) if ``flatten=False``.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    val_frac = _check_fraction("val_frac", val_frac)
    test_frac = _check_fraction("test_frac", test_frac)
    if val_frac + test_frac >= 1.0:
        raise ValueError(f"val_frac + test_frac must be < 1, got {val_frac + test_frac}")
    X, y = _sk_digits(return_X_y=True)
    X = X.astype(np.float32) / 16.0
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_frac, stratify=y, random_state=split_seed) if test_frac else (idx, idx[:0])
    val_size = val_frac / (1.0 - test_frac)
    train, val = train_test_split(rest, test_size=val_size, stratify=y[rest], random_state=split_seed) if val_frac else (rest, rest[:0])
    if standardize:
        mean = X[train].mean(axis=0)
        std = X[train].std(axis=0)
        std = np.maximum(std, 1.0 / 16)  # guard (nearly) constant pixels, see docstring
        X = (X - mean) / std
    parts = []
    for part in (train, val, test):
        xs = torch.from_numpy(np.ascontiguousarray(X[part]))
        if not flatten:
            xs = xs.reshape(-1, 1, 8, 8)
        parts += [xs, torch.from_numpy(y[part].astype(np.int64))]
    splits = DigitsSplits(*parts)
    return splits.to(device) if device is not None else splits


# ----------------------------------------------------------------------------- synthetic

def make_regression(n_samples: int = 200, n_features: int = 1, noise: float = 0.1,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear regression problem ``y = X @ w_true + noise``.

    Returns:
        X of shape (n_samples, n_features), y of shape (n_samples,), and
        w_true of shape (n_features,), all float32.
    """
    n_samples = _check_int("n_samples", n_samples)
    n_features = _check_int("n_features", n_features)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, n_features, generator=g)
    w_true = torch.randn(n_features, generator=g)
    y = X @ w_true + noise * torch.randn(n_samples, generator=g)
    return X, y, w_true


def make_classification(n_samples: int = 300, n_classes: int = 2, kind: str = "blobs",
                        noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-dimensional classification data.

    Args:
        kind: ``"blobs"`` (one Gaussian per class, linearly separable for small
            noise), ``"spirals"`` (interleaved arms, needs a nonlinear model) or
            ``"moons"`` (two half circles; ``n_classes`` must be 2).

    Returns:
        X of shape (n_samples, 2), float32, and y of shape (n_samples,), int64.
    """
    n_samples = _check_int("n_samples", n_samples)
    n_classes = _check_int("n_classes", n_classes, low=2)
    if kind not in ("blobs", "spirals", "moons"):
        raise ValueError(f"kind must be 'blobs', 'spirals' or 'moons', got {kind!r}")
    if kind == "moons" and n_classes != 2:
        raise ValueError(f"kind='moons' has exactly 2 classes, got n_classes={n_classes}")
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_samples) % n_classes
    y = y[torch.randperm(n_samples, generator=g)]
    if kind == "blobs":
        angle = 2 * torch.pi * y.float() / n_classes
        centers = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
        X = centers + (0.5 + noise) * torch.randn(n_samples, 2, generator=g)
    elif kind == "spirals":
        r = torch.rand(n_samples, generator=g)
        theta = 3.0 * r * torch.pi + 2 * torch.pi * y.float() / n_classes
        X = r[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
        X = X + noise * 0.3 * torch.randn(n_samples, 2, generator=g)
    else:
        t = torch.pi * torch.rand(n_samples, generator=g)
        upper = torch.stack([t.cos(), t.sin()], dim=1)
        lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
        X = torch.where(y[:, None] == 0, upper, lower) + noise * torch.randn(n_samples, 2, generator=g)
    return X.float(), y.long()


class TensorBatches:
    """Mini-batches of in-memory tensors, reshuffled every epoch: a fast loader for small data.

    Iterating yields ``(X[idx], y[idx])`` for consecutive slices ``idx`` of a
    fresh random permutation of the N samples, so every sample is seen once
    per epoch; there are ceil(N / batch_size) batches, or floor with
    ``drop_last``. Unlike a ``DataLoader`` over a ``TensorDataset`` it indexes
    the whole batch at once, on the tensors' own device (no per-sample Python
    work, no host-to-GPU copies), which matters for tiny models.

    Args:
        X: inputs of shape (N, ...); y: targets of shape (N, ...), same device.
        batch_size: samples per batch, >= 1.
        shuffle: reshuffle every epoch (else the order 0..N-1).
        seed: seeds the batch order's own generator (``self.generator``, which
            ``dlbook.train.fit``'s checkpoints save and restore).
        drop_last: drop the last, smaller batch.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int = 32, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"X and y must be tensors, got {type(X).__name__} and {type(y).__name__}")
        if len(X) != len(y):
            raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.X, self.y, self.batch_size = X, y, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.X)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.X)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.X.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.X[idx], self.y[idx]


def tensor_loader(X: torch.Tensor, y: torch.Tensor, batch_size: int = 32, shuffle: bool = True,
                  seed: int = 0, drop_last: bool = False) -> TensorBatches:
    """Mini-batches over in-memory tensors that reshuffle every epoch, reproducibly.

    The book's one in-memory loader: this is ``TensorBatches(X, y, ...)``. Its
    order comes from its own generator seeded with ``seed``, so it does not
    depend on how much global randomness the notebook used before, and
    ``dlbook.train.fit`` checkpoints restore it exactly.

    Args:
        X: inputs of shape (N, ...); y: targets of shape (N, ...).
    """
    return TensorBatches(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


# ----------------------------------------------------------------------------- text

def pydoc_text() -> str:
    """About 465 KB of English prose: Python's reference topics, shipped with every CPython.

    The topics come from the standard library's ``pydoc_data.topics`` and are
    joined in sorted order, so the text is the same on every run.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


_DEFAULT_DOC_MODULES = ("collections", "functools", "itertools", "json", "os", "pathlib",
                        "random", "re", "statistics", "string", "textwrap", "typing")


def docstring_corpus(modules=_DEFAULT_DOC_MODULES, min_length: int = 200) -> list[tuple[str, str]]:
    """Standard-library docstrings labelled by the module they come from.

    Returns:
        A list of ``(docstring, module_name)`` pairs, in a stable order, keeping
        docstrings of at least ``min_length`` characters. A text-classification
        dataset that every Python install already has.
    """
    pairs: list[tuple[str, str]] = []
    for name in modules:
        module = importlib.import_module(name)
        seen = set()
        for attr in sorted(dir(module)):
            obj = getattr(module, attr, None)
            # submodules are skipped: which of them are attributes depends on what else was imported
            if inspect.ismodule(obj) or getattr(obj, "__module__", None) not in (name, f"_{name}", None):
                continue
            doc = inspect.getdoc(obj) if obj is not None else None
            if doc and len(doc) >= min_length and doc not in seen:
                seen.add(doc)
                pairs.append((doc, name))
    return pairs


class CharTokenizer:
    """Maps each distinct character of a text to an integer id, and back.

    >>> tok = CharTokenizer("hello")
    >>> tok.decode(tok.encode("hell"))
    'hell'
    """

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("CharTokenizer needs a non-empty string to learn its vocabulary from")
        self.itos = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters V (ids run from 0 to V - 1)."""
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        """A string of length T to an int64 tensor of shape (T,)."""
        unknown = set(text) - self.stoi.keys()
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(sorted(unknown))!r}")
        return torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        """Token ids (any 1-D sequence or tensor) back to a string."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {min(ids)}..{max(ids)}")
        return "".join(self.itos[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _check_ids(ids: torch.Tensor, block_size: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got {getattr(ids, 'shape', type(ids))}")
    if len(ids) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(ids)}")


def windows(ids: torch.Tensor, block_size: int, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into (input, target) windows; the target is the input shifted by one.

    Args:
        ids: shape (N,).
        stride: step between window starts (default ``block_size``: no overlap).

    Returns:
        X, Y of shape (num_windows, block_size), with ``Y[:, t] == X[:, t + 1]``
        inside a window.
    """
    block_size = _check_int("block_size", block_size)
    stride = _check_int("stride", stride if stride is not None else block_size)
    _check_ids(ids, block_size)
    starts = torch.arange(0, len(ids) - block_size, stride)
    offsets = torch.arange(block_size)
    X = ids[starts[:, None] + offsets]
    Y = ids[starts[:, None] + offsets + 1]
    return X, Y


def random_batch(ids: torch.Tensor, block_size: int, batch_size: int,
                 generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows from a token stream.

    Returns:
        X, Y of shape (batch_size, block_size) with Y the next-token targets.
    """
    block_size = _check_int("block_size", block_size)
    batch_size = _check_int("batch_size", batch_size)
    _check_ids(ids, block_size)
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    X = ids[starts[:, None] + offsets]
    Y = ids[starts[:, None] + offsets + 1]
    if device is not None:
        X, Y = X.to(device), Y.to(device)
    return X, Y


def split_ids(ids: torch.Tensor, val_frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream into a leading training part and a trailing held-out part."""
    val_frac = _check_fraction("val_frac", val_frac)
    n_train = int(len(ids) * (1 - val_frac))
    return ids[:n_train], ids[n_train:]


def key_value_sequences(n: int, pairs: int, n_keys: int = 8, n_values: int = 8,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """An associative-recall task: ``key value key value ...``, each sequence with its own random map.

    Keys are ids ``0 .. n_keys - 1`` and values ``n_keys .. n_keys + n_values - 1``. Every
    sequence draws its own one-to-one map from keys to values, so a value can be predicted only
    by finding an earlier pair with the same key in the same sequence (in-context lookup:
    chapter 4 notebook 5, and ``benchmarks/gpt_init.py``).

    Returns:
        Token ids of shape (n, 2 * pairs), int64.
    """
    _check_int("n", n)
    _check_int("pairs", pairs)
    _check_int("n_keys", n_keys)
    if _check_int("n_values", n_values) < n_keys:
        raise ValueError(f"n_values must be >= n_keys for a one-to-one map, got {n_values} < {n_keys}")
    maps = torch.stack([torch.randperm(n_values, generator=generator) for _ in range(n)]) + n_keys   # (n, V)
    keys = torch.randint(n_keys, (n, pairs), generator=generator)                                   # (n, pairs)
    return torch.stack([keys, maps.gather(1, keys)], dim=2).view(n, -1)


# ----------------------------------------------------------------------------- optional downloads

class DownloadError(RuntimeError):
    """An optional dataset could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """An optional download: where it is, its expected SHA-256, and the file name it is cached under."""

    url: str
    sha256: str
    filename: str


# Nothing in a build or a test downloads these: tests point ``fetch`` at local files instead.
#: Bigger datasets for readers with a network. The optional downloads :func:`fetch` knows, by name, each with its URL and SHA-256.
DATASETS: dict[str, RemoteFile] = {
    "mnist-train-images": RemoteFile(
        "https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", "train-images-idx3-ubyte.gz"),
    "mnist-train-labels": RemoteFile(
        "https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", "train-labels-idx1-ubyte.gz"),
    "mnist-test-images": RemoteFile(
        "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", "t10k-images-idx3-ubyte.gz"),
    "mnist-test-labels": RemoteFile(
        "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", "t10k-labels-idx1-ubyte.gz"),
    "tiny-shakespeare": RemoteFile(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", "tiny_shakespeare.txt"),
}


def cache_dir() -> Path:
    """Where optional downloads are kept: ``$DLBOOK_DATA`` or ``~/.cache/dlbook``."""
    return Path(os.environ.get("DLBOOK_DATA", Path.home() / ".cache" / "dlbook"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name_or_file: str | RemoteFile, root: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Return the local path of an optional dataset file, downloading it once if needed.

    The file is verified against its SHA-256 both after download and when found
    in the cache; a corrupt file is deleted and reported, never used.

    Args:
        name_or_file: a key of ``DATASETS`` or a ``RemoteFile``.
        root: cache folder (default ``cache_dir()``).

    Raises:
        DownloadError: offline, on an HTTP error, or on a checksum mismatch,
            with a message that says what to do instead.
    """
    if isinstance(name_or_file, str):
        if name_or_file not in DATASETS:
            raise ValueError(f"unknown dataset {name_or_file!r}; known: {', '.join(sorted(DATASETS))}")
        remote = DATASETS[name_or_file]
    elif isinstance(name_or_file, RemoteFile):
        remote = name_or_file
    else:
        raise TypeError(f"expected a dataset name or RemoteFile, got {type(name_or_file).__name__}")
    root = Path(root) if root is not None else cache_dir()
    path = root / remote.filename
    if path.exists():
        if _sha256(path) == remote.sha256:
            return path
        path.unlink()  # a corrupt or truncated cache entry: fetch it again
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        got = _sha256(Path(tmp))
        if got != remote.sha256:
            raise DownloadError(f"{remote.filename}: checksum mismatch (expected sha256 {remote.sha256}, "
                                f"got {got}); the file was discarded. Try again, or place a correct copy at {path}")
        os.replace(tmp, path)
        return path
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"could not download {remote.filename} from {remote.url} ({err}). "
                            f"This dataset is optional and needs a network; offline, use dlbook.data.load_digits "
                            f"or put the file at {path} yourself.") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a NumPy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {body.size} values")
    return body.reshape(shape)


def load_mnist(train: bool = True, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST (needs a network once). Returns X of shape (N, 1, 28, 28) in [0, 1] and y of shape (N,)."""
    part = "train" if train else "test"
    images = read_idx(fetch(f"mnist-{part}-images", root))
    labels = read_idx(fetch(f"mnist-{part}-labels", root))
    X = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return X, torch.from_numpy(labels.astype(np.int64))


def load_tiny_shakespeare(root: str | Path | None = None) -> str:
    """The tiny-shakespeare text, about 1.1 MB (needs a network once)."""
    return fetch("tiny-shakespeare", root).read_text(encoding="utf-8")
