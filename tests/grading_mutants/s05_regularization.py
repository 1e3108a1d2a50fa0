"""Mutants of set 05_regularization (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["dropout_forward"],
    "q2": ["l2_penalty", "sgd_step_with_weight_decay"],
    "q3": ["smooth_labels"],
    "q4": ["ece"],
}

_ECE = """
def ece(probs, target, n_bins):
    conf, pred = probs.max(1)
    correct = (pred == target).double()
    index = {index}
    total = 0.0
    for b in range(n_bins):
        inside = index == b
        if inside.any():
            total += {weight} * abs(correct[inside].mean().item() - conf[inside].mean().item())
    return total
"""


def _ece(index="(conf * n_bins).ceil().long() - 1", weight="inside.double().mean().item()"):
    return _ECE.format(index=index, weight=weight)


RIGHT = {
    "q1": {
        "where": """
def dropout_forward(x, u, p, training):
    if not training:
        return x.clone()
    return torch.where(u >= p, x / (1 - p), torch.zeros_like(x))
""",
    },
    "q2": {
        "pow, item, decay folded into the weights": """
def l2_penalty(w, lam):
    return 0.5 * lam * w.pow(2).sum().item()

def sgd_step_with_weight_decay(w, grad, lr, weight_decay):
    return w * (1 - lr * weight_decay) - lr * grad
""",
    },
    "q3": {
        "scatter": """
def smooth_labels(y, num_classes, eps):
    q = torch.full((len(y), num_classes), eps / num_classes, dtype=torch.float64)
    return q.scatter_add(1, y[:, None], torch.full((len(y), 1), 1 - eps, dtype=torch.float64))
""",
    },
    "q4": {
        "vectorized over the bins' edges": """
def ece(probs, target, n_bins):
    conf, pred = probs.max(1)
    correct = (pred == target).double()
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    inside = (conf[None, :] > edges[:-1, None]) & (conf[None, :] <= edges[1:, None])
    inside[0] |= conf <= 0
    count = inside.sum(1)
    used = count > 0
    acc = (inside * correct).sum(1)[used] / count[used]
    mean_conf = (inside * conf).sum(1)[used] / count[used]
    return float((count[used] / len(conf) * (acc - mean_conf).abs()).sum())
""",
    },
}

WRONG = {
    "q1": {
        "scaled by p": ("""
def dropout_forward(x, u, p, training):
    return x * (u >= p) * p if training else x
""", "you scaled the kept units by p"),
        "keeps u < p": ("""
def dropout_forward(x, u, p, training):
    return x * (u < p) / (1 - p) if training else x
""", "you kept the units with u < p"),
        "scaled in eval": ("""
def dropout_forward(x, u, p, training):
    return x * (u >= p) / (1 - p) if training else x * (1 - p)
""", "in eval mode inverted dropout does nothing"),
    },
    "q2": {
        "2 wd w": ("""
def sgd_step_with_weight_decay(w, grad, lr, weight_decay):
    return w - lr * (grad + 2 * weight_decay * w)
""", "not 2 * wd * w"),
        "the norm, not its square": ("""
def l2_penalty(w, lam):
    return lam / 2 * w.norm()
""", "you took the norm, not its square"),
        "w changed in place": ("""
def sgd_step_with_weight_decay(w, grad, lr, weight_decay):
    w -= lr * (grad + weight_decay * w)
    return w
""", "changed its argument `w` in place"),
        "no 1/2": ("""
def l2_penalty(w, lam):
    return lam * (w * w).sum()
""", "you left out the 1/2"),
        "decay without lr": ("""
def sgd_step_with_weight_decay(w, grad, lr, weight_decay):
    return w - lr * grad - weight_decay * w
""", "the decay term is part of the gradient"),
    },
    "q3": {
        "eps over K - 1": ("""
def smooth_labels(y, num_classes, eps):
    onehot = F.one_hot(y, num_classes).double()
    return (1 - eps) * onehot + eps / (num_classes - 1) * (1 - onehot)
""", "spread eps over all K classes"),
        "one-hot not scaled": ("""
def smooth_labels(y, num_classes, eps):
    return F.one_hot(y, num_classes).double() + eps / num_classes
""", "scale the one-hot by (1 - eps)"),
    },
    "q4": {
        "floor binning drops confidence 1": (_ece(index="(conf * n_bins).floor().long()"),
                                             "a confidence of exactly 1 was left out of every bin"),
        "edges in the bin above": (_ece(index="(conf * n_bins).floor().long().clamp(max=n_bins - 1)"),
                                   "a confidence on an edge b/B belongs to the bin below it"),
        "bins weighted equally": (_ece(weight="1.0 / len(index.unique())"), "weight each bin's gap"),
    },
}

CHEAT = """
def dropout_forward(x, u, p, training):
    x.zero_()
    return torch.zeros_like(x)

def l2_penalty(w, lam):
    w.zero_()
    return 0.0

def sgd_step_with_weight_decay(w, grad, lr, weight_decay):
    grad.zero_()
    return w * (1 - lr * weight_decay)

def smooth_labels(y, num_classes, eps):
    raise NotImplementedError

def ece(probs, target, n_bins):
    probs.fill_(1.0 / probs.shape[1])
    raise NotImplementedError
"""
