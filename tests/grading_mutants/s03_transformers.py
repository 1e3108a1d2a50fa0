"""Mutants of set 03_transformers (see grading_mutants/__init__.py for the layout).

q5 runs GPTs and is the slowest question of all the sets: its mutants are the few that each test a different hint.
"""

NAMES = {
    "q1": ["causal_mask"],
    "q2": ["attention"],
    "q3": ["split_heads", "merge_heads"],
    "q4": ["sinusoidal_encoding"],
    "q5": ["past_change", "is_causal"],
}

_PERTURBATION = """
def past_change(model, ids, t):
    before = model(ids)
    changed = ids.clone()
    changed[:, t + {first}:] = (changed[:, t + {first}:] + 1) % before.shape[-1]
    diff = (model(changed) - before)[:, :t + {last}].abs()
    return float(diff.{reduce}()) if diff.numel() else 0.0

def is_causal(model, ids):
    return all(past_change(model, ids, t) <= {tolerance} for t in range(ids.shape[1] - 1))
"""


def _perturbation(first=1, last=1, reduce="max", tolerance=0.0):
    return _PERTURBATION.format(first=first, last=last, reduce=reduce, tolerance=tolerance)


_ATTENTION = """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1){scale}
    if mask is not None:
        scores = scores.masked_fill({blocked}, float("-inf"))
    return scores.softmax({axis}) @ v
"""


def _attention(scale=" / math.sqrt(q.shape[-1])", blocked="~mask", axis="-1"):
    return _ATTENTION.format(scale=scale, blocked=blocked, axis=axis)


RIGHT = {
    "q1": {
        "comparison of positions": """
def causal_mask(T):
    return torch.arange(T)[:, None] >= torch.arange(T)[None, :]
""",
    },
    "q2": {
        "the library's SDPA": """
def attention(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
""",
        "einsum and where": """
def attention(q, k, v, mask=None):
    scores = torch.einsum("...td,...sd->...ts", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    return torch.einsum("...ts,...sd->...td", torch.softmax(scores, -1), v)
""",
    },
    "q3": {
        "reshape and permute": """
def split_heads(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, T, n_head, -1).permute(0, 2, 1, 3)

def merge_heads(x):
    return x.permute(0, 2, 1, 3).flatten(2)
""",
    },
    "q4": {
        "float32, stacked": """
def sinusoidal_encoding(length, dim):
    angle = torch.arange(length, dtype=torch.float32)[:, None] * torch.exp(
        -math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)
""",
    },
    "q5": {"a loop over positions": _perturbation()},
}

WRONG = {
    "q1": {
        "upper triangle": ("""
def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).triu()
""", "the mask is flipped"),
        "no diagonal": ("""
def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril(-1)
""", "the diagonal is missing"),
        "all False": ("""
def causal_mask(T):
    return torch.zeros(T, T, dtype=torch.bool)
""", "the mask blocks the past too"),
        "float ones": ("""
def causal_mask(T):
    return torch.ones(T, T).tril()
""", "the mask should be bool"),
    },
    "q2": {
        "unscaled": (_attention(scale=""), "you forgot to divide the scores by sqrt(d)"),
        "softmax over the queries": (_attention(axis="-2"), "softmax over the wrong axis"),
        "mask inverted": (_attention(blocked="mask & ~torch.eye(mask.shape[-1], dtype=torch.bool)"),
                          "the mask is inverted"),
    },
    "q3": {
        "reshaped straight": ("""
def split_heads(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, n_head, T, C // n_head)
""", "you reshaped straight to (B, H, T, D)"),
        "merged without the transpose": ("""
def merge_heads(x):
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)
""", "transpose(1, 2) back"),
    },
    "q4": {
        "sin and cos swapped": ("""
def sinusoidal_encoding(length, dim):
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.stack([angle.cos(), angle.sin()], -1).reshape(length, dim)
""", "sin and cos are swapped"),
        "halves": ("""
def sinusoidal_encoding(length, dim):
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.cat([angle.sin(), angle.cos()], -1)
""", "interleave them"),
    },
    "q5": {
        "positions before t only": (_perturbation(last=0), "compared the positions before t only"),
        "with a tolerance": (_perturbation(tolerance=1e-6), "compare exactly"),
        "token t changed too": (_perturbation(first=0), "you changed token t too"),
        "the mean change": (_perturbation(reduce="mean"), "not the mean"),
    },
}

CHEAT = """
def causal_mask(T):
    raise NotImplementedError

def attention(q, k, v, mask=None):
    for t in (q, k, v):
        t.zero_()
    return torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)

def split_heads(x, n_head):
    x.zero_()
    B, T, C = x.shape
    return torch.zeros(B, n_head, T, C // n_head, dtype=x.dtype)

def merge_heads(x):
    x.zero_()
    B, H, T, D = x.shape
    return torch.zeros(B, T, H * D, dtype=x.dtype)

def sinusoidal_encoding(length, dim):
    raise NotImplementedError

def past_change(model, ids, t):
    ids.zero_()
    raise NotImplementedError

def is_causal(model, ids):
    raise NotImplementedError
"""
