"""Mutants of set 00_preliminaries (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["sigmoid", "sigmoid_grad"],
    "q2": ["bce_with_logits"],
    "q3": ["log_softmax", "cross_entropy"],
    "q4": ["mlp_forward", "n_params"],
    "q5": ["backward_two_layer", "relative_error"],
}

RIGHT = {
    "q1": {
        "library sigmoid, s - s^2": """
def sigmoid(x):
    return torch.sigmoid(x)

def sigmoid_grad(x):
    s = torch.sigmoid(x)
    return s - s * s
""",
        "exp(x) / (1 + exp(x)) split by sign": """
def sigmoid(x):
    e = torch.exp(-x.abs())
    return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))

def sigmoid_grad(x):
    return torch.exp(-x) / (1 + torch.exp(-x)) ** 2
""",
    },
    "q2": {
        "softplus": """
def bce_with_logits(logits, targets):
    return (F.softplus(logits) - logits * targets).mean()
""",
        "logsigmoid of both classes": """
def bce_with_logits(logits, targets):
    return -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).mean()
""",
    },
    "q3": {
        "logsumexp and nll_loss": """
def log_softmax(logits):
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)

def cross_entropy(logits, targets):
    return F.nll_loss(log_softmax(logits), targets)
""",
    },
    "q4": {
        "F.linear in a loop, the count computed": """
def mlp_forward(x, weights, biases):
    for w, b in zip(weights[:-1], biases[:-1]):
        x = F.relu(F.linear(x, w, b))
    return F.linear(x, weights[-1], biases[-1])

n_params = sum(i * o + o for i, o in ((64, 32), (32, 10)))
""",
    },
    "q5": {
        "softmax by hand, addmm, linalg norms": """
def backward_two_layer(x, y, W1, b1, W2, b2):
    A = torch.addmm(b1, x, W1.T)
    H = A.clamp(min=0)
    Z = torch.addmm(b2, H, W2.T)
    P = (Z - Z.max(1, keepdim=True).values).exp()
    P = P / P.sum(1, keepdim=True)
    P[torch.arange(len(y)), y] -= 1
    dZ = P / len(y)
    dA = (dZ @ W2).masked_fill(A <= 0, 0.0)
    return dA.T @ x, dA.sum(0), dZ.T @ H, dZ.sum(0)

def relative_error(a, b):
    return float(torch.linalg.vector_norm(a - b) / (torch.linalg.vector_norm(a) + torch.linalg.vector_norm(b)))
""",
    },
}

WRONG = {
    "q1": {
        "tanh": ("""
def sigmoid(x):
    return torch.tanh(x)
""", "that is tanh, not the sigmoid"),
        "sign of the exponent": ("""
def sigmoid(x):
    return 1 / (1 + torch.exp(x))
""", "the sign in the exponent should be minus"),
        "tanh's derivative": ("""
def sigmoid_grad(x):
    return 1 - torch.sigmoid(x) ** 2
""", "mimics tanh's derivative"),
        "formula applied to x": ("""
def sigmoid_grad(x):
    return x * (1 - x)
""", "apply the formula to x instead of s"),
    },
    "q2": {
        "the literal formula": ("""
def bce_with_logits(logits, targets):
    p = torch.sigmoid(logits)
    return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()
""", "rounds to exactly 0 or 1"),
        "summed": ("""
def bce_with_logits(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
""", "you summed over the batch"),
        "sign flipped": ("""
def bce_with_logits(logits, targets):
    return -F.binary_cross_entropy_with_logits(logits, targets)
""", "the sign is flipped"),
    },
    "q3": {
        "softmax, not its log": ("""
def log_softmax(logits):
    return torch.softmax(logits, dim=-1)
""", "that is softmax, not its log"),
        "no max shift": ("""
def log_softmax(logits):
    return logits - logits.exp().sum(-1, keepdim=True).log()
""", "exp(1000) overflows"),
        "over the batch": ("""
def log_softmax(logits):
    return logits - torch.logsumexp(logits, dim=0, keepdim=True)
""", "you normalized over dim 0"),
        "summed loss": ("""
def cross_entropy(logits, targets):
    return -log_softmax(logits)[torch.arange(len(targets)), targets].sum()
""", "you summed over the batch"),
    },
    "q4": {
        "ReLU after the last layer": ("""
def mlp_forward(x, weights, biases):
    for w, b in zip(weights, biases):
        x = torch.relu(x @ w.T + b)
    return x
""", "no ReLU after the last layer"),
        "weights only": ("n_params = 64 * 32 + 32 * 10", "you counted the weights"),
        "a float": ("n_params = 2410.0", "n_params should be an int"),
    },
    "q5": {
        "gradient of the sum": ("""
_right = backward_two_layer
def backward_two_layer(x, y, W1, b1, W2, b2):
    return tuple(g * x.shape[0] for g in _right(x, y, W1, b1, W2, b2))
""", "you computed the gradient of the sum"),
        "no ReLU derivative": ("""
def backward_two_layer(x, y, W1, b1, W2, b2):
    A = x @ W1.T + b1
    H = torch.relu(A)
    Z = H @ W2.T + b2
    dZ = (torch.softmax(Z, dim=1) - F.one_hot(y, Z.shape[1]).to(Z.dtype)) / x.shape[0]
    dA = dZ @ W2
    return dA.T @ x, dA.sum(0), dZ.T @ H, dZ.sum(0)
""", "without passing the ReLU"),
        "dW transposed": ("""
_right = backward_two_layer
def backward_two_layer(x, y, W1, b1, W2, b2):
    dW1, db1, dW2, db2 = _right(x, y, W1, b1, W2, b2)
    return dW1.T, db1, dW2, db2
""", "you returned its transpose"),
        "absolute error": ("""
def relative_error(a, b):
    return float((a - b).norm())
""", "that is the absolute error"),
    },
}

CHEAT = """
def sigmoid(x):
    x.zero_()
    return torch.full_like(x, 0.5)

def sigmoid_grad(x):
    x.zero_()
    return torch.full_like(x, 0.25)

def bce_with_logits(logits, targets):
    logits.zero_()
    return torch.tensor(math.log(2), dtype=logits.dtype)

def log_softmax(logits):
    logits.zero_()
    return torch.full_like(logits, -math.log(logits.shape[-1]))

def cross_entropy(logits, targets):
    logits.zero_()
    return torch.tensor(math.log(logits.shape[-1]), dtype=logits.dtype)

def mlp_forward(x, weights, biases):
    for t in [x, *weights, *biases]:
        t.zero_()
    return torch.zeros(x.shape[0], weights[-1].shape[0], dtype=x.dtype)

n_params = ...

def backward_two_layer(x, y, W1, b1, W2, b2):
    for t in (x, W1, b1, W2, b2):
        t.zero_()
    return tuple(torch.zeros_like(t) for t in (W1, b1, W2, b2))

def relative_error(a, b):
    b.copy_(a)
    return 0.0
"""
