"""Compression: measure, prune, distill and quantize any ``nn.Module`` (chapter 6).

Every claim of "smaller" or "faster" in the chapter is a measurement::

    model_size(model)                    # ModelSize(bytes=..., params=..., nonzero=...)
    latency(model, x, threads=1)         # Latency(median=..., iqr=..., runs=...) in seconds
    compare_latency({"a": a, "b": b}, x) # interleaved rounds: each one's median, and speed-up over "a"

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

Every public name is importable from the package (``from dlbook.compression import model_size``);
each lives in the module of its section of the chapter: ``size_and_latency`` (notebook 1),
``pruning`` (notebook 2), ``distillation`` (notebook 3), ``quantization`` (notebooks 4 and 5) and
``quantized_linear`` (``QuantLinear``, ``Int8Linear`` and ``replace_linears``; notebooks 5 and 6).
"""

from __future__ import annotations

from dlbook.compression.size_and_latency import ModelSize, Latency, model_size, latency, Compared, compare_latency
from dlbook.compression.pruning import magnitude_prune, apply_masks, prune_neurons
from dlbook.compression.distillation import distillation_loss
from dlbook.compression.quantization import qrange, quant_params, quantize, dequantize, fake_quantize
from dlbook.compression.quantized_linear import QuantLinear, Int8Linear, replace_linears, int_mm_is_exact

__all__ = [
    "ModelSize", "Latency", "model_size", "latency", "Compared", "compare_latency",
    "magnitude_prune", "apply_masks", "prune_neurons",
    "distillation_loss", "qrange", "quant_params", "quantize", "dequantize", "fake_quantize", "QuantLinear",
    "Int8Linear", "replace_linears", "int_mm_is_exact",
]
