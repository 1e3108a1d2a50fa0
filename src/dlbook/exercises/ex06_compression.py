"""Tests of exercise set 06_compression (chapter 6: compression).

Questions and the learner's names they read:

* q1 ``quant_params(x_min, x_max, bits, symmetric)`` -> (scale, zero_point) (3 points)
* q2 ``quantize(x, scale, zero_point, qmin, qmax)`` and ``dequantize(q, scale, zero_point)`` (3 points)
* q3 ``per_channel_scales(w, bits)``: symmetric scales, one per output row of a Linear weight (2 points)
* q4 ``global_magnitude_masks(weights, amount)`` (3 points)
* q5 ``distillation_loss(student_logits, teacher_logits, target, T, alpha)`` (3 points)

Every reference result comes from torch (``torch.nn.utils.prune``, ``F.kl_div``,
``F.cross_entropy``, tensor arithmetic), bound at import before any learner code runs,
in float64. When an answer is wrong, the tests try the usual mistakes and name the one
that matches. Tests only call the learner's functions with tensors and numbers and
compare what they return.
"""

from __future__ import annotations

import torch
from torch.nn import Linear as _Linear
from torch.nn.functional import cross_entropy as ref_cross_entropy
from torch.nn.functional import kl_div as ref_kl_div
from torch.nn.functional import log_softmax as ref_log_softmax
from torch.nn.functional import softmax as ref_softmax
from torch.nn.utils.prune import L1Unstructured as _L1Unstructured
from torch.nn.utils.prune import global_unstructured as ref_global_unstructured
from torch.nn.utils.prune import l1_unstructured as ref_l1_unstructured

from dlbook.grading import assert_close, question
from dlbook.grading.hints import generator, hint_for

F64 = torch.float64


def _pair(result, what: str):
    assert isinstance(result, (tuple, list)) and len(result) == 2, \
        f"{what} should return a pair (scale, zero_point), got {type(result).__name__}"
    return result


# ---------------------------------------------------------------------------------------------- q1

RANGES = [(-1.3, 2.9), (0.5, 2.0), (-3.0, -0.2), (-0.01, 7.0)]


def _ref_params(lo, hi, bits, symmetric):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return max(-lo, hi) / qmax, 0
    qmin, qmax = 0, 2 ** bits - 1
    scale = (hi - lo) / (qmax - qmin)
    z = float(torch.clamp(torch.round(torch.tensor(qmin - lo / scale, dtype=F64)), qmin, qmax))
    return scale, z


@question("q1", points=2, timeout=10)
def asymmetric_params_are_right(ns):
    """Asymmetric (uint8, 4-bit): S = (max - min) / (qmax - qmin) over the range extended to 0, Z an integer."""
    for bits in (8, 4):
        qmax = 2 ** bits - 1
        for lo, hi in RANGES:
            scale, zp = _pair(ns.quant_params(lo, hi, bits, False), "quant_params")
            s_ref, z_ref = _ref_params(lo, hi, bits, False)
            lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
            assert_close(scale, s_ref, atol=1e-9, rtol=1e-6, hint=hint_for(scale, {
                "the range must be extended to contain 0 first: x_min <- min(x_min, 0), x_max <- max(x_max, 0)":
                    (hi - lo) / qmax,
                f"{bits} bits give 2^{bits} levels but 2^{bits} - 1 steps: divide by qmax - qmin = {qmax}":
                    (hi0 - lo0) / (qmax + 1),
            }, f"S = (x_max - x_min) / (qmax - qmin) with qmin = 0, qmax = {qmax} ({bits} bits, range [{lo}, {hi}])"))
            assert_close(zp, z_ref, atol=1e-9, hint=hint_for(zp, {
                "Z must be an integer: round it (then 0 maps exactly to the integer Z)": -lo0 / s_ref,
                "Z = qmin - round(x_min / S): the sign of x_min / S is flipped": round(lo0 / s_ref),
            }, f"Z = clamp(round(qmin - x_min / S), qmin, qmax) (range [{lo}, {hi}], {bits} bits)"))


@question("q1", points=1, timeout=10)
def symmetric_params_are_right(ns):
    """Symmetric (int8, 4-bit): Z = 0 and S = max|x| / (2^(b-1) - 1), so -128 is never used."""
    for bits in (8, 4):
        for lo, hi in RANGES:
            scale, zp = _pair(ns.quant_params(lo, hi, bits, True), "quant_params")
            s_ref, _ = _ref_params(lo, hi, bits, True)
            m = max(-min(lo, 0.0), max(hi, 0.0))
            assert_close(zp, 0.0, atol=1e-12, hint="symmetric quantization has Z = 0")
            assert_close(scale, s_ref, atol=1e-9, rtol=1e-6, hint=hint_for(scale, {
                f"you divided by 2^(b-1) = {2 ** (bits - 1)}, as if the range were [-128, 127]: symmetric int8 uses "
                f"[-127, 127] so that +-max|x| both map onto the grid; divide by {2 ** (bits - 1) - 1}": m / 2 ** (bits - 1),
                "that is the asymmetric scale: symmetric uses S = max(|x_min|, |x_max|) / (2^(b-1) - 1)":
                    (max(hi, 0) - min(lo, 0)) / (2 ** bits - 1),
            }, f"S = max(|x_min|, |x_max|) / {2 ** (bits - 1) - 1} (range [{lo}, {hi}], {bits} bits)"))


# ---------------------------------------------------------------------------------------------- q2

def _q2_data():
    x = torch.randn(200, generator=generator(21), dtype=F64) * 1.5
    scale, zp, qmin, qmax = 0.021, 113.0, 0, 255
    return x, scale, zp, qmin, qmax


@question("q2", points=2, timeout=10)
def quantize_matches_formula(ns):
    """quantize(x, S, Z, qmin, qmax) equals clamp(round(x / S) + Z, qmin, qmax), some values clamped."""
    x, s, z, qmin, qmax = _q2_data()
    expected = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    out = ns.quantize(x, s, z, qmin, qmax)
    assert_close(out, expected, atol=1e-9, hint=hint_for(out, {
        "values outside the range must be clamped to [qmin, qmax]": torch.round(x / s) + z,
        "use round (to the nearest integer), not floor or int() (which truncates)": torch.clamp(torch.floor(x / s) + z, qmin, qmax),
        "truncation toward zero is not rounding: use torch.round": torch.clamp(torch.trunc(x / s) + z, qmin, qmax),
        "add the zero point after dividing: round(x / S) + Z": torch.clamp(torch.round(x / s) - z, qmin, qmax),
    }, "q = clamp(round(x / S) + Z, qmin, qmax)"))


@question("q2", points=1, timeout=10)
def round_trip_error_is_at_most_half_a_step(ns):
    """dequantize(quantize(x)) is within S/2 of x inside the range (and equals S (q - Z))."""
    x, s, z, qmin, qmax = _q2_data()
    x = x.clamp((qmin - z) * s, (qmax - z) * s)
    q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    out = ns.dequantize(q.clone(), s, z)
    assert_close(out, (q - z) * s, atol=1e-9, hint=hint_for(out, {
        "subtract the zero point before scaling: S * (q - Z)": q * s - z,
        "multiply by S, do not divide": (q - z) / s,
    }, "r_hat = S * (q - Z)"))
    back = ns.dequantize(ns.quantize(x.clone(), s, z, qmin, qmax), s, z)
    err = (torch.as_tensor(back, dtype=F64) - x).abs().max().item()
    assert err <= s / 2 + 1e-12, f"the round trip is off by {err:.4g}, more than S/2 = {s / 2:.4g}"


# ---------------------------------------------------------------------------------------------- q3

@question("q3", points=2, timeout=10)
def per_channel_scales_per_output_row(ns):
    """per_channel_scales(w, bits) gives one symmetric scale per output row of w (out, in)."""
    w = torch.randn(6, 10, generator=generator(31), dtype=F64) * torch.logspace(-2, 0, 6, dtype=F64)[:, None]
    w = w * torch.where(w.gather(1, w.abs().argmax(1, keepdim=True)) > 0, 1.0, -1.0)  # every row's largest |w| ...
    w[::2] = -w[::2]  # ... positive in rows 1, 3, 5 and negative in rows 0, 2, 4, so max(w) != max(|w|) there
    for bits in (8, 4):
        qmax = 2 ** (bits - 1) - 1
        out = ns.per_channel_scales(w.clone(), bits)
        expected = w.abs().amax(dim=1) / qmax
        assert_close(out, expected, atol=1e-12, rtol=1e-9, hint=hint_for(out, {
            "that is one scale per input column: a Linear weight (out, in) is quantized per output row, dim=1 "
            "reduces over the inputs": w.abs().amax(dim=0) / qmax,
            f"divide by 2^(b-1) - 1 = {qmax}, not 2^(b-1): symmetric quantization leaves out -2^(b-1)":
                w.abs().amax(dim=1) / 2 ** (bits - 1),
            "one scale for the whole matrix is per-tensor quantization: compute one per row":
                (w.abs().max() / qmax).expand(6),
            "use the largest |w| of the row, not the largest w": w.amax(dim=1) / qmax,
        }, f"scale_j = max_i |w_ji| / {qmax} for row j ({bits} bits)"))


# ---------------------------------------------------------------------------------------------- q4

def _q4_weights():
    g = generator(41)
    return [torch.randn(8, 6, generator=g, dtype=F64), torch.randn(5, 8, generator=g, dtype=F64) * 0.3,
            torch.randn(3, 5, generator=g, dtype=F64) * 2]


def _ref_masks(weights, amount, scope="global"):
    layers = []
    for w in weights:
        layer = _Linear(w.shape[1], w.shape[0], bias=False, dtype=F64)
        with torch.no_grad():
            layer.weight.copy_(w)
        layers.append(layer)
    if scope == "global":
        ref_global_unstructured([(m, "weight") for m in layers], pruning_method=_L1Unstructured, amount=amount)
    else:
        for m in layers:
            ref_l1_unstructured(m, "weight", amount=amount)
    return [m.weight_mask.detach().bool() for m in layers]


@question("q4", points=3, timeout=10)
def global_masks_equal_torch_prune(ns):
    """global_magnitude_masks(weights, amount) equals torch.nn.utils.prune.global_unstructured's masks."""
    weights = _q4_weights()
    for amount in (0.3, 0.6):
        out = ns.global_magnitude_masks([w.clone() for w in weights], amount)
        assert isinstance(out, (list, tuple)) and len(out) == len(weights), \
            f"return one mask per weight matrix ({len(weights)} in all)"
        expected = _ref_masks(weights, amount)
        layerwise = _ref_masks(weights, amount, scope="layer")
        for i, (o, e) in enumerate(zip(out, expected)):
            o = torch.as_tensor(o)
            assert tuple(o.shape) == tuple(e.shape), f"mask {i} has shape {tuple(o.shape)}, its weight {tuple(e.shape)}"
            assert_close(o.to(F64), e.to(F64), atol=0, hint=hint_for(o.to(F64), {
                "that is layer-wise pruning (each layer loses the same fraction): use ONE threshold over all "
                "weights together": layerwise[i].to(F64),
                "the mask is inverted: True (1) keeps a weight, False (0) prunes it": (~e).to(F64),
            }, f"concatenate |w| of all layers, remove the round({amount} * n) smallest (amount={amount}, mask {i})"))


# ---------------------------------------------------------------------------------------------- q5

def _q5_data():
    s = torch.randn(12, 5, generator=generator(51), dtype=F64)
    t = torch.randn(12, 5, generator=generator(52), dtype=F64) * 3
    y = torch.randint(0, 5, (12,), generator=generator(53))
    return s, t, y


def _ref_kd(s, t, y, T, alpha):
    soft = ref_kl_div(ref_log_softmax(s / T, dim=-1), ref_softmax(t / T, dim=-1), reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * ref_cross_entropy(s, y)


@question("q5", points=3, timeout=10)
def distillation_loss_matches_reference(ns):
    """distillation_loss equals alpha T^2 KL(p_T^teacher || p_T^student) + (1 - alpha) CE, for several T and alpha."""
    s, t, y = _q5_data()
    for T, alpha in ((4.0, 0.9), (2.0, 0.5), (1.0, 0.3)):
        out = ns.distillation_loss(s.clone(), t.clone(), y.clone(), T, alpha)
        ce = ref_cross_entropy(s, y)
        kl = ref_kl_div(ref_log_softmax(s / T, dim=-1), ref_softmax(t / T, dim=-1), reduction="batchmean")
        assert_close(out, _ref_kd(s, t, y, T, alpha), atol=1e-9, hint=hint_for(out, {
            "the soft term needs the factor T^2 (its gradient shrinks as 1/T^2 otherwise)":
                alpha * kl + (1 - alpha) * ce,
            "kl_div's arguments are swapped: kl_div(student LOG-probabilities, teacher probabilities)":
                alpha * T * T * ref_kl_div(ref_log_softmax(t / T, dim=-1), ref_softmax(s / T, dim=-1),
                                           reduction="batchmean") + (1 - alpha) * ce,
            "use reduction='batchmean' (sum over classes, mean over the batch); 'mean' also divides by the classes":
                alpha * T * T * kl / s.shape[1] + (1 - alpha) * ce,
            "divide the student's logits by T too, not only the teacher's":
                alpha * T * T * ref_kl_div(ref_log_softmax(s, dim=-1), ref_softmax(t / T, dim=-1),
                                           reduction="batchmean") + (1 - alpha) * ce,
            "alpha weights the soft (teacher) term, 1 - alpha the cross-entropy": _ref_kd(s, t, y, T, 1 - alpha),
        }, f"alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y) (T={T}, alpha={alpha})"))
