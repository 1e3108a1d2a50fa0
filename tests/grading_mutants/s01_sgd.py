"""Mutants of set 01_sgd (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["minibatch_indices"],
    "q2": ["steps_per_epoch", "total_steps"],
    "q3": ["adam_update"],
    "q4": ["adamw_update"],
}

RIGHT = {
    "q1": {
        "slices of the permutation": """
def minibatch_indices(n, batch_size, generator, drop_last=False):
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
""",
    },
    "q2": {
        "math.ceil": """
def steps_per_epoch(n, batch_size, drop_last):
    return math.floor(n / batch_size) if drop_last else math.ceil(n / batch_size)

total_steps = 8 * math.ceil(1077 / 16)
""",
    },
    "q3": {
        "lerp and addcdiv": """
def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = torch.lerp(m, g, 1 - beta1)
    v = torch.lerp(v, g * g, 1 - beta2)
    step = lr / (1 - beta1 ** t)
    denom = v.sqrt() / math.sqrt(1 - beta2 ** t) + eps
    return torch.addcdiv(w, m, denom, value=-step), m, v
""",
    },
    "q4": {
        "written out, decay first": """
def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    w = w - lr * weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g ** 2
    return w - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps), m, v
""",
    },
}

WRONG = {
    "q1": {
        "re-seeded every call": ("""
def minibatch_indices(n, batch_size, generator, drop_last=False):
    generator.manual_seed(0)
    return list(torch.randperm(n, generator=generator).split(batch_size))
""", "both epochs came out in the same order"),
        "drop_last ignored": ("""
def minibatch_indices(n, batch_size, generator, drop_last=False):
    return list(torch.randperm(n, generator=generator).split(batch_size))
""", "drop_last drops only the final"),
        "not shuffled": ("""
def minibatch_indices(n, batch_size, generator, drop_last=False):
    batches = list(torch.arange(n).split(batch_size))
    return batches[:-1] if drop_last and len(batches[-1]) < batch_size else batches
""", "not in the order of torch.randperm"),
    },
    "q2": {
        "always rounds down": ("""
def steps_per_epoch(n, batch_size, drop_last):
    return n // batch_size
""", "the last, shorter batch still counts"),
        "total without the short batch": ("total_steps = 8 * (1077 // 16)", "1077 / 16 is not whole"),
    },
    "q3": {
        "no bias correction": ("""
def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return w - lr * m / (v.sqrt() + eps), m, v
""", "you skipped the bias correction"),
        "m and v updated in place": ("""
def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m.mul_(beta1).add_((1 - beta1) * g)
    v.mul_(beta2).add_((1 - beta2) * g * g)
    return w - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps), m.clone(), v.clone()
""", "changed its argument `m` in place"),
        "betas swapped": ("""
def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = beta2 * m + (1 - beta2) * g
    v = beta1 * v + (1 - beta1) * g * g
    return w - lr * (m / (1 - beta2 ** t)) / ((v / (1 - beta1 ** t)).sqrt() + eps), m, v
""", "m = b1*m + (1-b1)*g"),
    },
    "q4": {
        "no bias correction": ("""
def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return w * (1 - lr * weight_decay) - lr * m / (v.sqrt() + eps), m, v
""", "you skipped the bias correction"),
        "m corrected, v not": ("""
def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return w * (1 - lr * weight_decay) - lr * m / (1 - beta1 ** t) / (v.sqrt() + eps), m, v
""", "you corrected m but not v"),
        "L2 instead of decoupled": ("""
def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    return adam_update(w, g + weight_decay * w, m, v, t, lr, beta1, beta2, eps)
""", "Adam with an L2 term"),
        "decay without lr": ("""
def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    return adam_update(w * (1 - weight_decay), g, m, v, t, lr, beta1, beta2, eps)
""", "you left out the learning rate"),
        "no decay": ("""
def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    return adam_update(w, g, m, v, t, lr, beta1, beta2, eps)
""", "the weights are not decayed"),
    },
}

CHEAT = """
def minibatch_indices(n, batch_size, generator, drop_last=False):
    raise NotImplementedError

def steps_per_epoch(n, batch_size, drop_last):
    raise NotImplementedError

total_steps = ...

def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    g.zero_()
    return w.clone(), m, v

def adamw_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    g.zero_()
    return w.clone(), m, v
"""
