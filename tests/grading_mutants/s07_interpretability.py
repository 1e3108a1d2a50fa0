"""Mutants of set 07_interpretability (see grading_mutants/__init__.py for the layout).

q2 calls the learner's integrated_gradients with 300 steps; its variants here batch the steps, so they stay fast.
"""

NAMES = {
    "q1": ["saliency"],
    "q2": ["integrated_gradients"],
    "q3": ["occlude", "occlusion_drop"],
    "q4": ["fgsm"],
    "q5": ["spearman"],
}

_SALIENCY = """
def saliency(params, x, target):
    model = make_model(params){mode}
    x = x.detach().clone().requires_grad_(True)
    picked = model(x).gather(1, target[:, None])
    picked.{reduce}().backward()
    return {out}
"""


def _saliency(mode=".eval()", reduce="sum", out="x.grad"):
    return _SALIENCY.format(mode=mode, reduce=reduce, out=out)


_IG = """
def integrated_gradients(params, x, target, baseline, steps):
    model = make_model(params).eval()
    alphas = torch.arange({first}, steps + {first}, dtype=x.dtype) / steps
    path = (baseline + alphas[:, None, None, None] * (x - baseline)).reshape(-1, *x.shape[1:]).requires_grad_(True)
    logits = model(path).reshape(steps, len(x), -1)
    picked = logits.gather(2, target[None, :, None].expand(steps, -1, 1)).sum()
    grads = torch.autograd.grad(picked, path)[0].reshape(steps, *x.shape)
    return {factor}grads.mean(0)
"""


def _ig(first=1, factor="(x - baseline) * "):
    return _IG.format(first=first, factor=factor)


_FGSM = """
def fgsm(params, x, y, eps):
    model = make_model(params){mode}
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return (x {sign} eps * {step}).detach()
"""


def _fgsm(mode=".eval()", sign="+", step="grad.sign()"):
    return _FGSM.format(mode=mode, sign=sign, step=step)


RIGHT = {
    "q1": {"autograd.grad, eval() on its own line": """
def saliency(params, x, target):
    model = make_model(params)
    model.eval()
    x = x.clone().requires_grad_()
    logits = model(x)
    return torch.autograd.grad(logits[torch.arange(len(x)), target].sum(), x)[0]
"""},
    "q2": {"every step in one batch": _ig()},
    "q3": {"where on an index grid, one forward pass": """
def occlude(x, top, left, size, value):
    rows = torch.arange(x.shape[1])[:, None]
    cols = torch.arange(x.shape[2])[None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return torch.where(inside, torch.as_tensor(value, dtype=x.dtype), x)

def occlusion_drop(params, x, target, top, left, size, value):
    model = make_model(params).eval()
    with torch.no_grad():
        full, hidden = model(torch.cat([x, occlude(x, top, left, size, value)])).split(len(x))
    rows = torch.arange(len(x))
    return full[rows, target] - hidden[rows, target]
"""},
    "q4": {"autograd.grad of the summed loss": _fgsm()},
    "q5": {"float32 ranks, .item()": """
def spearman(a, b):
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return ((ra * rb).sum() / (ra.norm() * rb.norm())).item()
"""},
}

WRONG = {
    "q1": {
        "mean of the logits": (_saliency(reduce="mean"), "divided by the batch size"),
        "train mode": (_saliency(mode=""), "the model was in train mode"),
        "absolute value": (_saliency(out="x.grad.abs()"), "keep the sign"),
    },
    "q2": {
        "summed, not averaged": (_ig(factor="steps * (x - baseline) * "), "you summed the m gradients"),
        "no (x - baseline)": (_ig(factor=""), "is not multiplied by (x - baseline)"),
        "left Riemann sum": (_ig(first=0), "left Riemann sum"),
    },
    "q3": {
        "occlude in place, used first": ("""
def occlude(x, top, left, size, value):
    x[:, top:top + size, left:left + size] = value
    return x

def occlusion_drop(params, x, target, top, left, size, value):
    model = make_model(params).eval()
    with torch.no_grad():
        hidden = occlude(x, top, left, size, value)
        pick = lambda logits: logits.gather(1, target[:, None])[:, 0]
        return pick(model(x)) - pick(model(hidden))
""", "your occlude changes x in place"),
        "a zero drop": ("""
def occlusion_drop(params, x, target, top, left, size, value):
    return torch.zeros(len(x), dtype=x.dtype)
""", "the drop is 0 for every image", "in place"),
        "sign reversed": ("""
_right = occlusion_drop
def occlusion_drop(params, x, target, top, left, size, value):
    return -_right(params, x, target, top, left, size, value)
""", "the sign is reversed"),
        "rows and columns swapped": ("""
_right = occlude
def occlude(x, top, left, size, value):
    return _right(x, left, top, size, value)
""", "rows and columns are swapped"),
    },
    "q4": {
        "gradient of the logit": ("""
def fgsm(params, x, y, eps):
    x = x.detach().clone().requires_grad_(True)
    make_model(params).eval()(x).gather(1, y[:, None]).sum().backward()
    return (x + eps * x.grad.sign()).detach()
""", "use the gradient of the loss of the true label"),
        "wrong sign": (_fgsm(sign="-"), "wrong sign"),
        "no sign": (_fgsm(step="grad"), "take the sign of the gradient"),
        "train mode": (_fgsm(mode=""), "the model was in train mode"),
    },
    "q5": {
        "Pearson of the values": ("""
def spearman(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm())
""", "that is Pearson's correlation"),
        "argsort taken for ranks": ("""
def spearman(a, b):
    ra, rb = a.argsort().double(), b.argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / (ra.norm() * rb.norm())
""", "argsort gives the order"),
    },
}

CHEAT = """
def _wipe(params):
    for p in params:
        if p.dim() == 2:
            p.zero_()

def saliency(params, x, target):
    _wipe(params)
    return torch.zeros_like(x)

def integrated_gradients(params, x, target, baseline, steps):
    _wipe(params)
    return torch.zeros_like(x)

def occlude(x, top, left, size, value):
    raise NotImplementedError

def occlusion_drop(params, x, target, top, left, size, value):
    _wipe(params)
    return torch.zeros(len(x), dtype=x.dtype)

def fgsm(params, x, y, eps):
    _wipe(params)
    return x.clone()

def spearman(a, b):
    a.copy_(b)
    return 1.0
"""
