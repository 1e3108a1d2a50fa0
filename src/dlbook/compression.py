"""Compression: measure, prune, distill and quantize any ``nn.Module`` (chapter 6).

Every claim of "smaller" or "faster" in the chapter is a measurement::

    model_size(model)                    # ModelSize(bytes=..., params=..., nonzero=...)
    latency(model, x, threads=1)         # Latency(median=..., iqr=..., runs=...) in seconds

Pruning sets weights to zero (a mask) or removes whole neurons (a smaller model)::

    masks = magnitude_prune(model, 0.8, scope="global")   # the 80% smallest |w| of all layers
    apply_masks(model, masks)                             # after every optimizer step
    small = prune_neurons(model, 0.5)                     # half the hidden neurons, physically gone

Distillation trains a student on a teacher's softened probabilities::

    loss = distillation_loss(student(x), teacher(x), y, T=4.0, alpha=0.9)

Affine quantization maps a real number r to an integer q and back:

.. math::

    q = \\mathrm{clamp}(\\mathrm{round}(r / S) + Z,\\ q_{min},\\ q_{max}), \\qquad \\hat r = S\\,(q - Z).

``quant_params`` chooses S and Z from a range, ``quantize``/``dequantize`` apply the two maps
(per tensor, or per channel with ``axis``), ``fake_quantize`` does both in floating point with a
straight-through gradient for quantization-aware training (``QuantLinear``), and ``Int8Linear``
runs a real integer matmul (``torch._int_mm``: int8 inputs, int32 accumulator).
``tests/test_compression.py`` checks each piece against ``torch.nn.utils.prune`` and
``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` / ``torch.fake_quantize_per_tensor_affine``.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ModelSize", "Latency", "model_size", "latency",
    "magnitude_prune", "apply_masks", "prune_neurons",
    "distillation_loss",
    "qrange", "quant_params", "quantize", "dequantize", "fake_quantize",
    "QuantLinear", "Int8Linear", "replace_linears",
]


# ----------------------------------------------------------------------------- measuring

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


# ----------------------------------------------------------------------------- pruning

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_amount(amount) -> float | int:
    """A fraction in [0, 1) (a float), or a count >= 0 (an int, as in ``torch.nn.utils.prune``)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
            or (isinstance(amount, float) and not 0.0 <= amount < 1.0) or (isinstance(amount, int) and amount < 0):
        raise ValueError(f"amount must be a fraction in [0, 1) (a float) or a count >= 0 (an int), got {amount!r}")
    return amount


def _count(amount: float | int, n: int, what: str) -> int:
    """How many of n to remove: an int amount is the count itself, a float the fraction round(amount n)."""
    if isinstance(amount, int):
        if amount > n:
            raise ValueError(f"amount={amount} is more than the {n} {what} there are")
        return amount
    return round(amount * n)


def _prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    weights = {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
               if isinstance(m, _PRUNABLE)}
    if not weights:
        raise ValueError("the model has no Linear or Conv layer whose weights could be pruned")
    return weights


def _smallest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True everywhere except at the k smallest scores (the way torch.nn.utils.prune picks them)."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.reshape(-1), k=k, largest=False).indices] = False
    return mask.reshape(scores.shape)


@torch.no_grad()
def magnitude_prune(model: nn.Module, amount: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks that remove the fraction ``amount`` of weights with the smallest magnitude ``|w|``.

    Only the ``weight`` of Linear and Conv layers is pruned (biases are few and cheap).
    With ``scope="global"`` one threshold is used for all layers together, so layers with
    many small weights lose more; ``"layer"`` removes ``amount`` of every layer. The number
    removed is ``round(amount * n)`` (n: weights in the scope), the k smallest by ``torch.topk``,
    exactly as ``torch.nn.utils.prune.global_unstructured`` / ``l1_unstructured`` choose them.

    Weights already at 0 have the smallest magnitude, so for iterative pruning call it again
    with a larger ``amount``: it is the *total* fraction of zeros (torch's ``prune`` counts
    a fraction of the weights that remain instead).

    Args:
        model: any module with Linear or Conv layers. It is not changed: see ``apply_masks``.
        amount: fraction in [0, 1) of weights to remove, or an int: that many weights (in
            the scope: in all for ``"global"``, in each layer for ``"layer"``), as ``torch.nn.utils.prune``
            reads an int amount. (A fraction of 1.0, which torch accepts, is refused: a network with
            no weights left is no model.)
        scope: ``"global"`` or ``"layer"``.

    Returns:
        ``{parameter name: bool mask}``, each mask the shape of its weight, False = pruned.
    """
    amount = _check_amount(amount)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    weights = _prunable_weights(model)
    if scope == "layer":
        return {name: _smallest_mask(w.abs(), _count(amount, w.numel(), f"weights of {name}"))
                for name, w in weights.items()}
    scores = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    flat = _smallest_mask(scores, _count(amount, scores.numel(), "prunable weights"))
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = flat[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned weights in place: ``w <- w * mask`` for every ``{name: mask}``.

    Call it after every optimizer step while fine-tuning a pruned model: the gradient of a
    pruned weight is not zero, and momentum keeps moving it even when it is, so without the
    mask pruned weights come back. Returns the model.

    Raises:
        KeyError: if a name is not a parameter of the model. ValueError: on a shape mismatch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"{name!r} is not a parameter of the model; masks come from magnitude_prune(model, ...)")
        p = params[name]
        if mask.shape != p.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight {tuple(p.shape)}")
        p.mul_(mask.to(device=p.device, dtype=p.dtype))
    return model


_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.Identity, nn.Dropout,
                nn.Sequential, nn.ModuleList)


@torch.no_grad()
def prune_neurons(model: nn.Module, amount: float, norm: float = 2.0) -> nn.Module:
    """A copy of an MLP with the fraction ``amount`` of each hidden layer's neurons removed.

    Hidden neuron j of a Linear layer has an incoming weight row ``W[j, :]`` and an outgoing
    column ``W_next[:, j]`` in the next Linear. The neurons whose rows have the smallest
    L_p norm ``||W[j, :]||_p`` are dropped: their rows (and biases) and the matching columns
    of the next layer are cut out, so the returned model has physically smaller matrices,
    (out, in) -> (out - k, in) and (next_out, out) -> (next_out, out - k), and runs
    faster with any dense kernel. The output layer keeps all its units.

    Args:
        model: a module whose Linear layers, in ``model.modules()`` order, form a chain
            (each one's ``out_features`` is the next one's ``in_features``) with only
            elementwise layers (ReLU, GELU, Tanh, Dropout, ...) between them, e.g.
            ``dlbook.mlp.MLP`` or an ``nn.Sequential``.
        amount: fraction in [0, 1) of each hidden layer's neurons to remove (``round``), or an
            int: that many neurons from each hidden layer (at least one must stay).
        norm: p of the L_p norm used to rank neurons (> 0).

    Returns:
        A new module (``copy.deepcopy``) with smaller Linear layers; the input is unchanged.

    Raises:
        ValueError: if the Linear layers do not form such a chain, or another layer holds parameters.
    """
    amount = _check_amount(amount)
    if not isinstance(norm, (int, float)) or isinstance(norm, bool) or not norm > 0:
        raise ValueError(f"norm must be a positive number (the p of the L_p norm), got {norm!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    new = copy.deepcopy(model)
    linears = [m for m in new.modules() if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in new.modules()
              if not isinstance(m, (nn.Linear, *_ELEMENTWISE)) and any(True for _ in m.parameters(recurse=False))]
    if len(linears) < 2:
        raise ValueError("prune_neurons needs at least two Linear layers (a hidden layer feeding another layer)")
    if others:
        raise ValueError(f"prune_neurons only shrinks chains of Linear layers; these layers hold parameters "
                         f"it would have to cut too: {sorted(set(others))}")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"Linear layers do not form a chain: {a.out_features} outputs feed {b.in_features} inputs")
    for layer, nxt in zip(linears[:-1], linears[1:]):
        k = _count(amount, layer.out_features, "neurons in a hidden layer")
        if k >= layer.out_features:
            raise ValueError(f"amount={amount} would remove all {layer.out_features} neurons of a hidden layer")
        if k == 0:
            continue
        keep = torch.topk(layer.weight.norm(p=norm, dim=1), layer.out_features - k).indices.sort().values
        layer.weight = nn.Parameter(layer.weight[keep].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[keep].clone())
        layer.out_features = len(keep)
        nxt.weight = nn.Parameter(nxt.weight[:, keep].clone())
        nxt.in_features = len(keep)
    if isinstance(getattr(new, "sizes", None), list):              # dlbook.mlp.MLP records its widths
        new.sizes = [linears[0].in_features] + [m.out_features for m in linears]
    return new


# ----------------------------------------------------------------------------- distillation

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None,
                      T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Knowledge-distillation loss: soft targets from a teacher plus the usual cross-entropy.

    .. math::

        L = \\alpha\\, T^2\\, \\mathrm{KL}(p_T^{teacher} \\,\\|\\, p_T^{student}) + (1 - \\alpha)\\, \\mathrm{CE}(z^{student}, y),
        \\qquad p_T = \\mathrm{softmax}(z / T).

    The KL term is ``F.kl_div(log_softmax(z_s / T), softmax(z_t / T), reduction="batchmean")``
    (the student's *log*-probabilities first). Its gradient with respect to the student's logits
    scales as 1/T^2 for large T, so the factor T^2 keeps the soft and hard terms balanced when T
    changes. The teacher's logits are detached: no gradient flows into the teacher.

    Args:
        student_logits, teacher_logits: (N, C).
        target: (N,) class ids, or None when ``alpha == 1`` (an unlabelled transfer set).
        T: temperature > 0 (use T = 1, a plain softmax, at inference).
        alpha: weight in [0, 1] of the soft term.

    Returns:
        A 0-d tensor, the batch mean.
    """
    if not isinstance(T, (int, float)) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"T must be a positive temperature, got {T!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a weight in [0, 1], got {alpha!r}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must both be (N, C), got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if target is None and alpha < 1.0:
        raise ValueError("target is None, so alpha must be 1 (soft targets only); pass labels to mix in cross-entropy")
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.softmax(teacher_logits.detach() / T, dim=-1),
                    reduction="batchmean")
    loss = alpha * T * T * soft
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, target)
    return loss


# ----------------------------------------------------------------------------- quantization

def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    return bits


def qrange(bits: int = 8, symmetric: bool = False) -> tuple[int, int]:
    """The integer range (q_min, q_max) used for ``bits`` bits.

    Symmetric quantization uses signed integers with the range restricted to be symmetric,
    [-(2^(b-1) - 1), 2^(b-1) - 1] ([-127, 127] for int8: -128 is left out, so that the
    scale that maps the largest ``|r|`` to 127 also maps -``|r|`` to -127 and Z = 0 is exact).
    Asymmetric (affine) quantization uses unsigned integers [0, 2^b - 1] ([0, 255], uint8).
    """
    bits = _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def quant_params(x_min, x_max, bits: int = 8, symmetric: bool = False,
                 eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale S and zero point Z that map the range [x_min, x_max] onto ``qrange(bits, symmetric)``.

    The range is first extended to contain 0 (x_min <- min(x_min, 0), x_max <- max(x_max, 0)),
    so that the real number 0 (zero padding, ReLU outputs, pruned weights) is represented
    exactly by the integer Z. Then

    * symmetric: S = max(``|x_min|``, ``|x_max|``) / q_max, Z = 0;
    * asymmetric: S = (x_max - x_min) / (q_max - q_min), Z = clamp(round(q_min - x_min / S), q_min, q_max),
      an integer, so that 0 / S + Z = Z exactly.

    Args:
        x_min, x_max: numbers or tensors of the same shape (one range per channel: per-channel
            quantization), for example ``w.amin(dim=1)`` and ``w.amax(dim=1)``.
        bits: 2..16. symmetric: see ``qrange``.
        eps: if > 0, a range narrower than eps is widened to eps instead of raising (for
            ranges measured on data, such as a channel that is all zero).

    Returns:
        (scale, zero_point): float tensors and int64 tensors of the broadcast shape of the
        inputs (0-d for numbers).

    Raises:
        ValueError: if x_min > x_max anywhere, or a range has zero width (both ends 0) and eps is 0.
    """
    qmin, qmax = qrange(bits, symmetric)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    lo, hi = torch.as_tensor(x_min), torch.as_tensor(x_max)
    if not lo.is_floating_point():
        lo = lo.to(torch.get_default_dtype())
    hi = hi.to(device=lo.device, dtype=lo.dtype)
    lo, hi = torch.broadcast_tensors(lo.detach(), hi.detach())
    if bool((lo > hi).any()):
        raise ValueError(f"x_min must be <= x_max, got x_min={lo.tolist()} and x_max={hi.tolist()}")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        width = torch.maximum(-lo, hi)
        denom = qmax
    else:
        width = hi - lo
        denom = qmax - qmin
    if eps > 0:
        width = width.clamp(min=eps)
    elif bool((width == 0).any()):
        raise ValueError("zero-width range: x_min = x_max = 0, so no scale maps it onto the integers; "
                         "pass eps > 0 to allow it (for example for an all-zero channel)")
    scale = width / denom
    if symmetric:
        zero_point = torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)
    else:
        lo = torch.minimum(lo, hi - width)              # where eps widened the range, widen it downwards
        zero_point = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int64)
    return scale, zero_point


def _storage_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype that holds [qmin, qmax]."""
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    raise ValueError(f"no integer dtype holds [{qmin}, {qmax}]")


def _check_qminmax(qmin, qmax) -> tuple[int, int]:
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if qmin >= qmax:
        raise ValueError(f"qmin must be < qmax, got qmin={qmin}, qmax={qmax}")
    if qmin < -(2 ** 31) or qmax > 2 ** 31 - 1:
        raise ValueError(f"[qmin, qmax] = [{qmin}, {qmax}] does not fit in int32")
    return qmin, qmax


def _broadcast_params(x: torch.Tensor, scale, zero_point, axis: int | None):
    """Shape S and Z to broadcast against x: scalars, or one value per slice along ``axis``."""
    scale = torch.as_tensor(scale, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    if not scale.is_floating_point():
        raise TypeError(f"scale must be a float (tensor), got dtype {scale.dtype}")
    if bool((scale <= 0).any()):
        raise ValueError("scale must be > 0")
    if axis is None:
        if scale.numel() != 1 or zero_point.numel() != 1:
            raise ValueError(f"per-tensor quantization takes one scale and zero point, got {scale.numel()} and "
                             f"{zero_point.numel()} values; pass axis=... for per-channel quantization")
        return scale.reshape(()), zero_point.reshape(())
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be an int in [{-x.dim()}, {x.dim()}) for an input of shape {tuple(x.shape)}, got {axis!r}")
    axis %= x.dim()
    n = x.shape[axis]
    if scale.shape != (n,) or zero_point.shape != (n,):
        raise ValueError(f"per-channel quantization along axis {axis} needs scale and zero_point of shape ({n},), "
                         f"got {tuple(scale.shape)} and {tuple(zero_point.shape)}")
    shape = [1] * x.dim()
    shape[axis] = n
    return scale.reshape(shape), zero_point.reshape(shape)


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> torch.Tensor:
    """Real numbers to integers: q = clamp(round(x / S) + Z, q_min, q_max).

    ``round`` rounds halves to even, as ``torch.quantize_per_tensor`` does. Like torch, x / S
    is computed as x * (1 / S) (one reciprocal, then a multiply; in float32 for float16 and
    bfloat16 inputs), and for float32 the sum x * (1 / S) + Z is rounded to float32 once, as
    the fused multiply-add of torch's kernels does (on every CPU kernel path), before it is
    rounded to an integer. These differ from round(x / S) + Z in the last bit for some x,
    which moves a value lying on a rounding tie by one code; matching torch code for code
    is the point here. (``fake_quantize`` follows torch's fake-quantize kernel instead,
    round(x * (1 / S)) + Z.)

    Args:
        x: a float tensor of any shape.
        scale, zero_point: one number each (per tensor), or with ``axis`` one per slice
            ``x.select(axis, i)``: 1-d tensors of length ``x.shape[axis]`` (per channel; for a
            Linear weight (out, in) the channels are the output rows, ``axis=0``).
        qmin, qmax: the integer range, e.g. from ``qrange``.
        axis: None (per tensor) or the channel axis.

    Returns:
        q of the shape of x, in the smallest integer dtype that holds [qmin, qmax]
        (int8 for [-128, 127], uint8 for [0, 255], then int16, int32).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {type(x).__name__}" +
                        (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    qmin, qmax = _check_qminmax(qmin, qmax)
    s, z = _broadcast_params(x, scale, zero_point, axis)
    dt = _compute_dtype(x)
    inv = torch.reciprocal(s.to(dt))
    if dt == torch.float32:   # the exact product plus Z (float64 holds it), rounded once: an FMA
        t = (x.to(torch.float64) * inv.to(torch.float64) + z.to(torch.float64)).to(dt)
    else:
        t = x * inv + z.to(dt)
    q = torch.clamp(torch.round(t), qmin, qmax)
    return q.to(_storage_dtype(qmin, qmax))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # half-precision values are quantized in float32, as torch's kernels do: float16's 11-bit
    # mantissa cannot even hold every code of an 8-bit grid times its scale exactly
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def dequantize(q: torch.Tensor, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    """Integers back to real numbers: r_hat = S (q - Z).

    Args:
        q: an integer tensor (from ``quantize``). scale, zero_point, axis: as for ``quantize``.

    Returns:
        A float tensor of q's shape, in the dtype of ``scale``. For x inside the range,
        ``|x - dequantize(quantize(x))|`` <= S / 2.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a tensor, got {type(q).__name__}")
    s, z = _broadcast_params(q, scale, zero_point, axis)
    return (q.to(s.dtype) - z.to(s.dtype)) * s


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize in floating point, with a straight-through gradient.

    Forward: S (clamp(round(x / S) + Z, q_min, q_max) - Z), the value the integer model computes
    with. Backward (the straight-through estimator, STE): round() has zero gradient almost
    everywhere, so it is treated as the identity: the gradient is 1 where
    q_min <= round(x / S) + Z <= q_max and 0 where the value was clamped (as
    ``torch.fake_quantize_per_tensor_affine``). S and Z get no gradient. As in ``quantize``,
    x / S is x * (1 / S), and float16/bfloat16 inputs are computed in float32 and cast back (as torch).

    Args:
        x, scale, zero_point, qmin, qmax, axis: as for ``quantize``.

    Returns:
        A tensor like x.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {type(x).__name__}")
    qmin, qmax = _check_qminmax(qmin, qmax)
    s, z = _broadcast_params(x, scale, zero_point, axis)
    dt = _compute_dtype(x)
    s, z = s.to(dt).detach(), z.to(dt)
    q = torch.round(x.detach().to(dt) * torch.reciprocal(s)) + z
    inside = (q >= qmin) & (q <= qmax)
    x_hat = ((q.clamp(qmin, qmax) - z) * s).to(x.dtype)
    return x_hat + (x - x.detach()) * inside


class _SignSTE(torch.autograd.Function):
    """sign(w) forward; the gradient passes where ``|w|`` <= 1 (the hard-tanh STE of BinaryConnect)."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


class QuantLinear(nn.Linear):
    """A Linear layer that computes with quantized weights (and activations): for QAT and PTQ.

    The float weight W (out, in) is kept and updated by the optimizer ("latent" weights);
    every forward pass uses its quantized version:

    * ``bits`` in 2..16: symmetric per-output-row fake quantization,
      S_j = max_i ``|W_ji|`` / q_max, with the STE (``fake_quantize``);
    * ``bits = 1``: binarization, W_b = alpha_j sign(W_j) with alpha_j = mean_i ``|W_ji|``
      (XNOR-Net's scale), gradient through sign only where ``|W|`` <= 1 (BinaryConnect).

    With ``act_bits`` the input is fake-quantized too, per tensor and asymmetric, over the
    range [act_min, act_max] (buffers). In training mode the range follows the batches (an
    exponential moving average with ``momentum``, the first batch copied); in eval mode it is
    fixed: set it from a calibration set, or let QAT learn it.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        bits: weight bits, 1 (binary) or 2..16. per_channel: one scale per output row, else
            one for the whole matrix. act_bits: None (float activations) or 2..16.
        momentum: of the activation-range average, in (0, 1].

    Shape: ``(N, *, in_features)`` -> ``(N, *, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8,
                 per_channel: bool = True, act_bits: int | None = None, momentum: float = 0.1,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if bits != 1:
            _check_bits(bits)
        if act_bits is not None:
            _check_bits(act_bits)
        if not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.bits, self.per_channel, self.act_bits, self.momentum = bits, bool(per_channel), act_bits, float(momentum)
        self.register_buffer("act_min", torch.tensor(0.0, device=device))
        self.register_buffer("act_max", torch.tensor(0.0, device=device))
        self.register_buffer("act_seen", torch.tensor(False, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, per_channel: bool = True,
                    act_bits: int | None = None, momentum: float = 0.1) -> "QuantLinear":
        """A QuantLinear with a copy of a trained ``nn.Linear``'s weights (PTQ, or the start of QAT)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=bits,
                    per_channel=per_channel, act_bits=act_bits, momentum=momentum,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: (out, in), fake-quantized or binarized (with the STE)."""
        w = self.weight
        if self.bits == 1:
            alpha = w.detach().abs().mean(dim=1, keepdim=True) if self.per_channel else w.detach().abs().mean()
            return alpha * _SignSTE.apply(w)
        qmin, qmax = qrange(self.bits, symmetric=True)
        if self.per_channel:
            scale, zp = quant_params(w.detach().amin(dim=1), w.detach().amax(dim=1), self.bits, True, eps=1e-12)
            return fake_quantize(w, scale, zp, qmin, qmax, axis=0)
        scale, zp = quant_params(w.detach().min(), w.detach().max(), self.bits, True, eps=1e-12)
        return fake_quantize(w, scale, zp, qmin, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is not None:
            if self.training:
                with torch.no_grad():
                    lo, hi = x.detach().min(), x.detach().max()
                    if not bool(self.act_seen):
                        self.act_min.copy_(lo)
                        self.act_max.copy_(hi)
                        self.act_seen.fill_(True)
                    else:
                        self.act_min.lerp_(lo, self.momentum)
                        self.act_max.lerp_(hi, self.momentum)
            elif not bool(self.act_seen):
                raise RuntimeError("QuantLinear has no activation range yet: run it in train mode on some "
                                   "batches (calibration or QAT), or set act_min/act_max, before eval")
            scale, zp = quant_params(self.act_min, self.act_max, self.act_bits, False, eps=1e-8)
            qmin, qmax = qrange(self.act_bits, symmetric=False)
            x = fake_quantize(x, scale, zp, qmin, qmax)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, per_channel={self.per_channel}, act_bits={self.act_bits}"


class Int8Linear(nn.Module):
    """An inference-only Linear layer that multiplies int8 by int8 with an int32 accumulator.

    Weights: symmetric per-output-row int8, W_ji ~ s_j q_ji with s_j = max_i ``|W_ji|`` / 127.
    Activations, quantized on the fly for every call ("dynamic"): symmetric per input row,
    x_ni ~ t_n p_ni with t_n = max_i ``|x_ni|`` / 127. Then

    .. math::

        y_{nj} = t_n\\, s_j \\sum_i p_{ni}\\, q_{ji} + b_j,

    where the sum is an exact integer matmul (``torch._int_mm``, int32 accumulator) and the
    rescale is one float multiply per output. Where ``torch._int_mm`` is not available for the
    shapes or the device, the same integers are multiplied in float32 (exact while
    in_features * 127^2 < 2^24, within float32 rounding beyond).

    Build it from a trained layer with ``Int8Linear.from_linear(linear)``. The int8 weight
    is a frozen ``nn.Parameter`` (so ``model_size`` counts it), scales and bias are float32.

    Shape: (N, in_features) or (*, in_features) -> (*, out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize a trained ``nn.Linear`` (per output row, symmetric int8)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device)
        scale, zp = quant_params(w.amin(dim=1), w.amax(dim=1), bits=8, symmetric=True, eps=1e-12)
        layer.weight.copy_(quantize(w, scale, zp, -127, 127, axis=0))
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def _int_matmul(self, p: torch.Tensor) -> torch.Tensor:
        """(M, K) int8 @ (K, N) int8 -> (M, N) int32 accumulator (float32 where _int_mm cannot run)."""
        w_t = self.weight.t()
        m, k = p.shape
        ok = hasattr(torch, "_int_mm") and (
            p.device.type == "cpu" or (p.device.type == "cuda" and m > 16 and k % 8 == 0 and self.out_features % 8 == 0))
        if ok:
            try:
                return torch._int_mm(p, w_t)
            except RuntimeError:
                pass
        return p.float() @ w_t.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects inputs (..., {self.in_features}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        t = x2.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0     # (M, 1) activation scales
        p = torch.round(x2 / t).clamp_(-127, 127).to(torch.int8)
        acc = self._int_matmul(p)                                            # (M, N) int32
        y = acc.float() * (t * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.Linear`` replaced by ``make(linear)``.

    For example ``replace_linears(model, Int8Linear.from_linear)`` or
    ``replace_linears(model, lambda l: QuantLinear.from_linear(l, bits=4))``. A Linear that is
    already the result (a ``QuantLinear``) is left alone. The input model is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(make):
        raise TypeError(f"make must be a function nn.Linear -> nn.Module, got {type(make).__name__}")
    new = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, make(child))
            else:
                swap(child)

    if type(new) is nn.Linear:
        return make(new)
    swap(new)
    return new
