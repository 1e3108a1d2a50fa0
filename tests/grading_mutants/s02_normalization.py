"""Mutants of set 02_normalization (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["batch_norm"],
    "q2": ["reduction_axes", "set_size"],
    "q3": ["group_norm"],
    "q4": ["batch_norm_of_one", "bn2d_batch_of_one_is"],
    "q5": ["batch_renorm"],
}

RIGHT = {
    "q1": {
        "F.batch_norm on copies of the buffers": """
def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    rm, rv = running_mean.clone(), running_var.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=training, momentum=momentum, eps=eps)
    return y, rm, rv
""",
    },
    "q2": {
        "lists and negative axes, an if chain": """
reduction_axes = {"batch": [0, 2, 3], "layer": [1, -2, -1], "instance": [-2, -1]}

def set_size(method, N, C, H, W, groups=1):
    if method == "batch":
        return N * H * W
    if method == "layer":
        return C * H * W
    if method == "instance":
        return H * W
    return C * H * W // groups
""",
    },
    "q3": {
        "F.group_norm": """
def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    return F.group_norm(x, num_groups, gamma, beta, eps)
""",
        "var_mean over the flattened groups, float32 inside": """
def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    g = x.reshape(x.shape[0], num_groups, -1)
    var, mean = torch.var_mean(g, dim=-1, unbiased=False, keepdim=True)
    y = ((g - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (y * gamma.view(shape) + beta.view(shape)).float()
""",
    },
    "q4": {
        "beta, worked out on paper": """
def batch_norm_of_one(x, gamma, beta, eps=1e-5):
    return beta.expand_as(x).clone()

bn2d_batch_of_one_is = " Instance "
""",
    },
    "q5": {
        "clip and detach written differently": """
def batch_renorm(x, gamma, beta, running_mean, running_var, r_max, d_max, eps=1e-5):
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims)
    std = (x.var(dims, unbiased=False) + eps).sqrt()
    sigma = (running_var + eps).sqrt()
    r = torch.clip(std.detach() / sigma, 1 / r_max, r_max)
    d = torch.clip((mean.detach() - running_mean) / sigma, -d_max, d_max)
    y = (x - mean.reshape(shape)) / std.reshape(shape) * r.reshape(shape) + d.reshape(shape)
    return gamma.reshape(shape) * y + beta.reshape(shape)
""",
    },
}

WRONG = {
    "q1": {
        "unbiased variance": ("""
def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = x.mean(dims), x.var(dims, unbiased=True)
    y = (x - mean.view(shape)) / (var.view(shape) + eps).sqrt() * gamma.view(shape) + beta.view(shape)
    return y, (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var
""", "unbiased variance"),
        "momentum backwards": ("""
_right = batch_norm
def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    return _right(x, gamma, beta, running_mean, running_var, training, 1 - momentum, eps)
""", "momentum is the weight of the NEW batch"),
        "running statistics updated in place": ("""
_right = batch_norm
def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    y, m, v = _right(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    running_mean.copy_(m)
    running_var.copy_(v)
    return y, running_mean, running_var
""", "changed its argument `running_mean` in place"),
        "batch statistics in eval mode": ("""
_right = batch_norm
def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    y, m, v = _right(x, gamma, beta, running_mean, running_var, True, momentum, eps)
    return (y, m, v) if training else (y, running_mean, running_var)
""", "in eval mode, normalize with running_mean"),
    },
    "q2": {
        "batch norm over N only": ("""
reduction_axes = {"batch": (0,), "layer": (1, 2, 3), "instance": (2, 3)}
""", "batch norm: which axes"),
        "group size upside down": ("""
_right = set_size
def set_size(method, N, C, H, W, groups=1):
    return groups * H * W if method == "group" else _right(method, N, C, H, W, groups)
""", "set_size('group'"),
    },
    "q3": {
        "instance norm": ("""
def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    return F.instance_norm(x, weight=gamma, bias=beta, eps=eps)
""", "that is instance norm"),
        "layer norm": ("""
def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    return F.group_norm(x, 1, gamma, beta, eps)
""", "that is layer norm"),
        "no affine": ("""
def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    return F.group_norm(x, num_groups, eps=eps)
""", "did you forget gamma and beta"),
    },
    "q4": {
        "zeros": ("""
def batch_norm_of_one(x, gamma, beta, eps=1e-5):
    return torch.zeros_like(x)
""", "x - mean is 0 for a batch of one"),
        "layer": ('bn2d_batch_of_one_is = "layer"', "is not it"),
    },
    "q5": {
        "not clipped": ("""
_right = batch_renorm
def batch_renorm(x, gamma, beta, running_mean, running_var, r_max, d_max, eps=1e-5):
    return _right(x, gamma, beta, running_mean, running_var, float("inf"), float("inf"), eps)
""", "r and d are not clipped"),
        "gradient through r and d": ("""
def batch_renorm(x, gamma, beta, running_mean, running_var, r_max, d_max, eps=1e-5):
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    std, sigma = (var + eps).sqrt(), (running_var + eps).sqrt()
    r, d = (std / sigma).clamp(1 / r_max, r_max), ((mean - running_mean) / sigma).clamp(-d_max, d_max)
    return ((x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)) * gamma.view(shape) \\
        + beta.view(shape)
""", "the gradient flows through r and d"),
        "plain batch norm": ("""
def batch_renorm(x, gamma, beta, running_mean, running_var, r_max, d_max, eps=1e-5):
    return batch_norm(x, gamma, beta, running_mean, running_var, True, 0.1, eps)[0]
""", "that is plain batch norm"),
    },
}

CHEAT = """
reduction_axes = {}

def _wipe(*tensors):
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t.zero_()

def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    _wipe(x, gamma, beta, running_mean, running_var)
    return torch.zeros_like(x), running_mean, running_var

def set_size(method, N, C, H, W, groups=1):
    raise NotImplementedError

def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    _wipe(x, gamma, beta)
    return torch.zeros_like(x)

def batch_norm_of_one(x, gamma, beta, eps=1e-5):
    _wipe(x, gamma, beta)
    return torch.zeros_like(x)

bn2d_batch_of_one_is = ...

def batch_renorm(x, gamma, beta, running_mean, running_var, r_max, d_max, eps=1e-5):
    _wipe(x, gamma, beta, running_mean)
    return torch.zeros_like(x)
"""
