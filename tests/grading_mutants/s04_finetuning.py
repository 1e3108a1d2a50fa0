"""Mutants of set 04_finetuning (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["lora_forward"],
    "q2": ["lora_init", "lora_num_params"],
    "q3": ["lora_merge"],
    "q4": ["response_logprob"],
    "q5": ["dpo_loss"],
}

RIGHT = {
    "q1": {
        "F.linear, r from B": """
def lora_forward(x, W0, b0, A, B, alpha):
    return F.linear(x, W0, b0) + alpha / B.shape[1] * F.linear(F.linear(x, A), B)
""",
    },
    "q2": {
        "normal_ on an empty tensor": """
def lora_init(d_out, d_in, r, generator):
    A = torch.empty(r, d_in, dtype=torch.float64).normal_(0.0, 0.02, generator=generator)
    return A, A.new_zeros(d_out, r)

def lora_num_params(d_out, d_in, r):
    return (d_out + d_in) * r
""",
    },
    "q3": {
        "addmm": """
def lora_merge(W0, A, B, alpha):
    return torch.addmm(W0, B, A, alpha=alpha / A.shape[0])
""",
    },
    "q4": {
        "log_softmax over all positions, then slices": """
def response_logprob(logits, tokens, prompt_len):
    lp = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return lp[:, prompt_len - 1:].sum(-1)
""",
    },
    "q5": {
        "softplus": """
def dpo_loss(pw, pl, rw, rl, beta):
    return F.softplus(-beta * ((pw - pl) - (rw - rl))).mean()
""",
    },
}

_FORWARD = """
def lora_forward(x, W0, b0, A, B, alpha):
    r = {r}
    return x @ W0.T + b0 + {scale} * {update}
"""


def _forward(r="A.shape[0]", scale="(alpha / r)", update="((x @ A.T) @ B.T)"):
    return _FORWARD.format(r=r, scale=scale, update=update)


WRONG = {
    "q1": {
        "alpha // r": (_forward(scale="(alpha // r)"), "alpha // r rounds down"),
        "r from B.shape[0]": (_forward(r="B.shape[0]"), "r is the rank"),
        "forms B A": (_forward(update="(x @ (B @ A).T)"), "forms the (d_out, d_in) matrix B A"),
        "not scaled": (_forward(scale="1.0"), "the update is not scaled"),
    },
    "q2": {
        "B random": ("""
def lora_init(d_out, d_in, r, generator):
    return (torch.randn(r, d_in, generator=generator, dtype=torch.float64),
            torch.randn(d_out, r, generator=generator, dtype=torch.float64))
""", "B is initialized randomly"),
        "float32": ("""
def lora_init(d_out, d_in, r, generator):
    return torch.randn(r, d_in, generator=generator), torch.zeros(d_out, r)
""", "A and B should be float64"),
        "the global generator": ("""
def lora_init(d_out, d_in, r, generator):
    return torch.randn(r, d_in, dtype=torch.float64), torch.zeros(d_out, r, dtype=torch.float64)
""", "the generator passed in was not used"),
        "the full matrix": ("""
def lora_num_params(d_out, d_in, r):
    return d_out * d_in
""", "the size of the full update matrix"),
    },
    "q3": {
        "W0 changed in place": ("""
def lora_merge(W0, A, B, alpha):
    W0 += alpha / A.shape[0] * (B @ A)
    return W0
""", "changed its argument `W0` in place"),
        "no scale": ("""
def lora_merge(W0, A, B, alpha):
    return W0 + B @ A
""", "misses the scale alpha / r"),
        "subtracted": ("""
def lora_merge(W0, A, B, alpha):
    return W0 - alpha / A.shape[0] * (B @ A)
""", "the update was subtracted"),
    },
    "q4": {
        "prompt counted": ("""
def response_logprob(logits, tokens, prompt_len):
    return logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(-1)
""", "prompt tokens are counted"),
        "off by one": ("""
def response_logprob(logits, tokens, prompt_len):
    lp = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    return lp[:, prompt_len:].sum(-1)
""", "off by one"),
        "averaged": ("""
def response_logprob(logits, tokens, prompt_len):
    lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return lp[:, prompt_len - 1:].mean(-1)
""", "you averaged"),
    },
    "q5": {
        "no beta": ("""
def dpo_loss(pw, pl, rw, rl, beta):
    return -F.logsigmoid((pw - rw) - (pl - rl)).mean()
""", "beta is missing"),
        "sign flipped": ("""
def dpo_loss(pw, pl, rw, rl, beta):
    return -F.logsigmoid(beta * ((pl - rl) - (pw - rw))).mean()
""", "the sign is flipped"),
        "summed": ("""
def dpo_loss(pw, pl, rw, rl, beta):
    return -F.logsigmoid(beta * ((pw - rw) - (pl - rl))).sum()
""", "you summed over pairs"),
    },
}

CHEAT = """
def lora_forward(x, W0, b0, A, B, alpha):
    for t in (x, b0):
        t.zero_()
    return torch.zeros(x.shape[0], W0.shape[0], dtype=x.dtype)

def lora_init(d_out, d_in, r, generator):
    raise NotImplementedError

def lora_num_params(d_out, d_in, r):
    raise NotImplementedError

def lora_merge(W0, A, B, alpha):
    W0.zero_()
    B.zero_()
    return torch.zeros_like(W0)

def response_logprob(logits, tokens, prompt_len):
    logits.zero_()
    raise NotImplementedError

def dpo_loss(pw, pl, rw, rl, beta):
    for t in (pw, pl, rw, rl):
        t.zero_()
    return torch.tensor(math.log(2), dtype=pw.dtype)
"""
