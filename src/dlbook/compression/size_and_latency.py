"""Measuring a model (chapter 6, notebook 1): its size and its latency.

Every claim of "smaller" or "faster" in the chapter is a measurement::

    model_size(model)                    # ModelSize(bytes=..., params=..., nonzero=...)
    latency(model, x, threads=1)         # Latency(median=..., iqr=..., runs=...) in seconds
    compare_latency({"a": a, "b": b}, x) # interleaved rounds: each one's median, and speed-up over "a"
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "ModelSize", "Latency", "model_size", "latency", "Compared", "compare_latency",
]


class ModelSize(NamedTuple):
    """What ``model_size`` measured: serialized ``bytes``, stored ``params``, and how many are ``nonzero``."""

    bytes: int
    params: int
    nonzero: int


class Latency(NamedTuple):
    """What ``latency`` measured, in seconds: the ``median`` time of one call, its interquartile range
    ``iqr`` over the timed blocks, and the number of ``runs`` (calls) timed."""

    median: float
    iqr: float
    runs: int


def _stored_values(t: torch.Tensor) -> torch.Tensor:
    """The values a tensor really stores: a sparse tensor's nonzero values, a dense tensor itself."""
    if t.layout == torch.strided:
        return t
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    return t.values()                                   # CSR, CSC, BSR ...


def _compact(t):
    """A copy that owns exactly its data: a view (or a CSR tensor from ``to_sparse_csr()``, whose column
    indices share a larger buffer) would make ``torch.save`` write the whole underlying storage."""
    if not isinstance(t, torch.Tensor) or type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        return t
    if t.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(t.crow_indices().clone(), t.col_indices().clone(), t.values().clone(), t.shape)
    if t.layout == torch.sparse_coo:
        t = t.coalesce()
        return torch.sparse_coo_tensor(t.indices().clone(), t.values().clone(), t.shape).coalesce()
    if t.layout == torch.strided and t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.detach().clone()
    return t


def _count_nonzero(t: torch.Tensor) -> int:
    """Nonzero entries; a quantized tensor subclass (torchao's) is counted through its dequantized values."""
    try:
        return int(torch.count_nonzero(t.detach()))
    except (NotImplementedError, RuntimeError):
        pass
    try:
        return int(torch.count_nonzero(t.detach().dequantize()))
    except (NotImplementedError, RuntimeError):
        # Older torchao subclasses (0.10, Colab's) wrap the quantized weight one level deeper.
        inner = getattr(t, "original_weight_tensor", None)
        if inner is not None:
            return _count_nonzero(inner)
        return t.numel()  # no way to read the values: count every entry, as a dense tensor would


def model_size(model: nn.Module | Mapping) -> ModelSize:
    """Bytes on disk and parameter count of a model (or of a state dict).

    ``bytes`` is the length of ``torch.save(state_dict)`` written to memory: the real cost of
    storing or shipping the model, including each tensor's dtype (int8 takes a quarter of
    float32) and, for sparse tensors, their index arrays (a CSR matrix with int64 indices costs
    about 12 bytes per nonzero). Zeros in a dense tensor save nothing. Tensors of a mapping are
    saved as compact copies (a view, or the column indices of ``to_sparse_csr()``, can share a
    larger buffer that ``torch.save`` would write in full).

    Args:
        model: an ``nn.Module``, or a mapping of names to tensors (a state dict, which may hold
            sparse tensors such as ``w.to_sparse_csr()``).

    Returns:
        ModelSize(bytes, params, nonzero). For a module, ``params`` counts the elements of
        ``model.parameters()`` (int8 weights stored as frozen parameters count too); for a
        mapping, the values each tensor stores (a sparse tensor's nonzeros). ``nonzero``
        counts those that are not 0.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(model, nn.Module):
        state, tensors = model.state_dict(), list(model.parameters())
    elif isinstance(model, Mapping):
        state = {k: _compact(v) for k, v in model.items()}
        tensors = [_stored_values(t) for t in model.values() if isinstance(t, torch.Tensor)]
    else:
        raise TypeError(f"model must be an nn.Module or a state dict (a mapping of tensors), got {type(model).__name__}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    params = sum(t.numel() for t in tensors)
    nonzero = sum(_count_nonzero(t) for t in tensors)
    return ModelSize(bytes=buffer.getbuffer().nbytes, params=params, nonzero=nonzero)


def latency(model: Callable, x: torch.Tensor, threads: int = 1, min_run_time: float = 0.2,
            warmup: int = 3) -> Latency:
    """Time one forward call ``model(x)`` with ``torch.utils.benchmark``, the way inference runs.

    The model is put in ``eval()`` mode (restored afterwards) and called under
    ``torch.inference_mode()`` after ``warmup`` untimed calls, on exactly ``threads`` intra-op
    threads. Then single calls are timed with ``torch.utils.benchmark.Timer.timeit(1)`` (which
    synchronizes CUDA and holds the thread count) until ``min_run_time`` seconds have passed
    (at least 7 calls, at most 10,000). Each timed run is *one* call, so that a call interrupted
    by another process on a shared machine is an outlier that the median ignores, instead of
    spoiling a whole block of calls. Compare two models only at the same batch size and thread count.

    Args:
        model: an ``nn.Module`` or any callable of one tensor.
        x: the input batch, e.g. (N, d_in), on the model's device.
        threads: intra-op threads during the measurement (>= 1).
        min_run_time: seconds of timing at least (> 0).
        warmup: untimed calls before timing (>= 0).

    Returns:
        Latency(median, iqr, runs): median and interquartile range of the single-call times,
        in seconds, and the number of timed calls.
    """
    import time

    from torch.utils import benchmark

    if not callable(model):
        raise TypeError(f"model must be an nn.Module or a callable of one tensor, got {type(model).__name__}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if not isinstance(min_run_time, (int, float)) or not min_run_time > 0:
        raise ValueError(f"min_run_time must be a positive number of seconds, got {min_run_time!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    was_training = getattr(model, "training", None)
    if isinstance(model, nn.Module):
        model.eval()
    previous_threads = torch.get_num_threads()

    def run(inp):
        with torch.inference_mode():
            return model(inp)

    times: list[float] = []
    try:
        torch.set_num_threads(threads)
        for _ in range(warmup):
            run(x)
        timer = benchmark.Timer(stmt="run(x)", globals={"run": run, "x": x}, num_threads=threads)
        start = time.perf_counter()
        while len(times) < 7 or (time.perf_counter() - start < min_run_time and len(times) < 10_000):
            times.append(float(timer.timeit(number=1).times[0]))
    finally:
        torch.set_num_threads(previous_threads)
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    t = torch.tensor(times, dtype=torch.float64)
    q1, median, q3 = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return Latency(median=median, iqr=q3 - q1, runs=len(times))


class Compared(NamedTuple):
    """What ``compare_latency`` measured for one model: its ``median`` time in seconds (the median over
    rounds of each round's median), and its ``speedup`` over the first model (the median over rounds of
    t_first / t_model, both taken in the same round)."""

    median: float
    speedup: float


def compare_latency(models: Mapping[str, Callable], x: torch.Tensor, threads: int = 1, rounds: int = 3,
                    min_run_time: float = 0.02) -> dict[str, Compared]:
    """Time several models on the same input in interleaved rounds, for a speed-up a busy machine cannot fake.

    Each round times every model once, in order, with ``latency``; a speed-up is a ratio of two
    times from the *same* round, so load that comes and goes slows both sides of it alike, and the
    median over rounds discards a round that a burst of load hit unevenly. Same batch and thread
    count for all models, as ``latency`` requires.

    Args:
        models: name -> model (or callable of one tensor); the first is the reference.
        x: the input batch, e.g. (N, d_in).
        threads: intra-op threads (>= 1). rounds: rounds (>= 1).
        min_run_time: seconds of timing per model and round at least (> 0; at least 7 calls each).

    Returns:
        name -> Compared(median, speedup); the first model's speedup is 1.
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError("models must be a non-empty mapping of name -> model")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    times = [{name: latency(m, x, threads=threads, min_run_time=min_run_time).median for name, m in models.items()}
             for _ in range(rounds)]
    first = next(iter(models))

    def middle(values):
        return torch.tensor(values, dtype=torch.float64).quantile(0.5).item()

    return {name: Compared(middle([t[name] for t in times]), middle([t[first] / t[name] for t in times]))
            for name in models}
