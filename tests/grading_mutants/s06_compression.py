"""Mutants of set 06_compression (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["quant_params"],
    "q2": ["quantize", "dequantize"],
    "q3": ["per_channel_scales"],
    "q4": ["global_magnitude_masks"],
    "q5": ["distillation_loss"],
}

RIGHT = {
    "q1": {
        "float32 tensors": """
def quant_params(x_min, x_max, bits, symmetric):
    lo = torch.tensor(min(x_min, 0.0), dtype=torch.float32)
    hi = torch.tensor(max(x_max, 0.0), dtype=torch.float32)
    if symmetric:
        return torch.maximum(-lo, hi) / (2 ** (bits - 1) - 1), 0
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.clamp(torch.round(-lo / scale), 0, 2 ** bits - 1)
""",
    },
    "q2": {
        "chained methods": """
def quantize(x, scale, zero_point, qmin, qmax):
    return x.div(scale).round().add(zero_point).clamp(qmin, qmax).to(torch.int64)

def dequantize(q, scale, zero_point):
    return scale * (q.double() - zero_point)
""",
    },
    "q3": {
        "infinity norm": """
def per_channel_scales(w, bits):
    return torch.linalg.vector_norm(w, ord=float("inf"), dim=1) / (2 ** (bits - 1) - 1)
""",
    },
    "q4": {
        "kthvalue threshold": """
def global_magnitude_masks(weights, amount):
    scores = torch.cat([w.abs().flatten() for w in weights])
    k = round(amount * scores.numel())
    if k == 0:
        return [torch.ones_like(w, dtype=torch.bool) for w in weights]
    threshold = scores.kthvalue(k).values
    return [w.abs() > threshold for w in weights]
""",
    },
    "q5": {
        "KL written out": """
def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    pt = F.softmax(teacher_logits / T, dim=-1)
    kl = (pt * (pt.log() - F.log_softmax(student_logits / T, dim=-1))).sum(-1).mean()
    return alpha * T ** 2 * kl + (1 - alpha) * F.nll_loss(F.log_softmax(student_logits, -1), target)
""",
    },
}

_QP = """
def quant_params(x_min, x_max, bits, symmetric):
    lo, hi = {lo}, {hi}
    if symmetric:
        return max(-lo, hi) / {sym_div}, 0
    scale = (hi - lo) / {div}
    return scale, {zp}
"""


def _qp(lo="min(x_min, 0.0)", hi="max(x_max, 0.0)", sym_div="(2 ** (bits - 1) - 1)", div="(2 ** bits - 1)",
        zp="min(max(round(-lo / scale), 0), 2 ** bits - 1)"):
    return _QP.format(lo=lo, hi=hi, sym_div=sym_div, div=div, zp=zp)


WRONG = {
    "q1": {
        "sign of x_min / S flipped": (_qp(zp="round(lo / scale)"), "the sign of x_min / S is flipped"),
        "range not extended to 0": (_qp(lo="x_min", hi="x_max"), "the range must be extended to contain 0"),
        "levels, not steps": (_qp(div="2 ** bits"), "levels but 2^"),
        "Z not rounded": (_qp(zp="-lo / scale"), "Z must be an integer"),
        "symmetric over 2^(b-1)": (_qp(sym_div="2 ** (bits - 1)"), "you divided by 2^(b-1)"),
    },
    "q2": {
        "not clamped": ("""
def quantize(x, scale, zero_point, qmin, qmax):
    return torch.round(x / scale) + zero_point
""", "values outside the range must be clamped"),
        "floor": ("""
def quantize(x, scale, zero_point, qmin, qmax):
    return torch.clamp(torch.floor(x / scale) + zero_point, qmin, qmax)
""", "use round"),
        "zero point after scaling": ("""
def dequantize(q, scale, zero_point):
    return q * scale - zero_point
""", "subtract the zero point before scaling"),
    },
    "q3": {
        "largest w, not |w|": ("""
def per_channel_scales(w, bits):
    return w.amax(dim=1) / (2 ** (bits - 1) - 1)
""", "use the largest |w| of the row"),
        "per column": ("""
def per_channel_scales(w, bits):
    return w.abs().amax(dim=0) / (2 ** (bits - 1) - 1)
""", "one scale per input column"),
        "2^(b-1)": ("""
def per_channel_scales(w, bits):
    return w.abs().amax(dim=1) / 2 ** (bits - 1)
""", "not 2^(b-1)"),
    },
    "q4": {
        "layer-wise": ("""
def global_magnitude_masks(weights, amount):
    masks = []
    for w in weights:
        k = round(amount * w.numel())
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().topk(k, largest=False).indices] = False
        masks.append(keep.reshape(w.shape))
    return masks
""", "that is layer-wise pruning"),
        "inverted": ("""
_right = global_magnitude_masks
def global_magnitude_masks(weights, amount):
    return [~m for m in _right(weights, amount)]
""", "the mask is inverted"),
    },
    "q5": {
        "kl_div's arguments swapped": ("""
def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    soft = F.kl_div(F.log_softmax(teacher_logits / T, -1), F.softmax(student_logits / T, -1), reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student_logits, target)
""", "kl_div's arguments are swapped"),
        "student not divided by T": ("""
def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    soft = F.kl_div(F.log_softmax(student_logits, -1), F.softmax(teacher_logits / T, -1), reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student_logits, target)
""", "divide the student's logits by T too"),
        "no T^2": ("""
def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    soft = F.kl_div(F.log_softmax(student_logits / T, -1), F.softmax(teacher_logits / T, -1), reduction="batchmean")
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, target)
""", "needs the factor T^2"),
        "reduction mean": ("""
def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    soft = F.kl_div(F.log_softmax(student_logits / T, -1), F.softmax(teacher_logits / T, -1), reduction="mean")
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student_logits, target)
""", "use reduction='batchmean'"),
        "alpha on the wrong term": ("""
_right = distillation_loss
def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    return _right(student_logits, teacher_logits, target, T, 1 - alpha)
""", "alpha weights the soft (teacher) term"),
    },
}

CHEAT = """
def quant_params(x_min, x_max, bits, symmetric):
    raise NotImplementedError

def quantize(x, scale, zero_point, qmin, qmax):
    x.zero_()
    return torch.full_like(x, float(zero_point))

def dequantize(q, scale, zero_point):
    q.fill_(zero_point)
    return torch.zeros_like(q, dtype=torch.float64)

def per_channel_scales(w, bits):
    w.zero_()
    return torch.zeros(w.shape[0], dtype=w.dtype)

def global_magnitude_masks(weights, amount):
    for w in weights:
        w.zero_()
    raise NotImplementedError

def distillation_loss(student_logits, teacher_logits, target, T, alpha):
    student_logits.zero_()
    teacher_logits.zero_()
    raise NotImplementedError
"""
