"""Mutants of set 08_privacy (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["gaussian_sigma", "laplace_scale"],
    "q2": ["clip_and_sum", "dp_gradient"],
    "q3": ["loss_threshold_auc"],
    "q4": ["pairwise_masks", "masked_sum"],
}

RIGHT = {
    "q1": {
        "logs split, floats": """
def gaussian_sigma(sensitivity, epsilon, delta):
    return sensitivity / epsilon * (2 * (math.log(1.25) - math.log(delta))) ** 0.5

def laplace_scale(sensitivity, epsilon):
    return float(sensitivity) / float(epsilon)
""",
    },
    "q2": {
        "Opacus's clipping epsilon": """
def clip_and_sum(per_example_grads, max_norm):
    norms = per_example_grads.norm(dim=1, keepdim=True)
    return (per_example_grads * (max_norm / (norms + 1e-6)).clamp(max=1.0)).sum(0)
""",
        "float32, linalg": """
def clip_and_sum(per_example_grads, max_norm):
    g = per_example_grads.float()
    norms = torch.linalg.vector_norm(g, dim=1)
    return torch.einsum("bp,b->p", g, torch.minimum(torch.ones_like(norms), max_norm / norms))

def dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size):
    noisy = clip_and_sum(per_example_grads, max_norm) + noise_multiplier * max_norm * noise.float()
    return noisy / expected_batch_size
""",
    },
    "q3": {
        "float32, .item()": """
def loss_threshold_auc(member_losses, non_member_losses):
    m, n = member_losses.float()[:, None], non_member_losses.float()[None, :]
    return ((m < n).float().mean() + 0.5 * (m == n).float().mean()).item()
""",
    },
    "q4": {
        "triu and sums": """
def pairwise_masks(r, modulus):
    n = r.shape[0]
    upper = r * torch.triu(torch.ones(n, n, dtype=r.dtype), 1)[:, :, None]
    return torch.remainder(upper.sum(1) - upper.sum(0), modulus)

def masked_sum(updates, masks, modulus):
    return ((updates + masks) % modulus).sum(0) % modulus
""",
    },
}

_MASKS = """
def pairwise_masks(r, modulus):
    n = r.shape[0]
    out = torch.zeros(n, r.shape[2], dtype=torch.int64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i] += r[i, j]
            out[j] {sign} r[i, j]
    return out{reduce}
"""


def _masks(sign="-=", reduce=" % modulus"):
    return _MASKS.format(sign=sign, reduce=reduce)


WRONG = {
    "q1": {
        "no square root": ("""
def gaussian_sigma(sensitivity, epsilon, delta):
    return sensitivity * 2 * math.log(1.25 / delta) / epsilon
""", "you forgot the square root"),
        "times epsilon": ("""
def gaussian_sigma(sensitivity, epsilon, delta):
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) * epsilon
""", "divide by epsilon"),
        "Laplace's standard deviation": ("""
def laplace_scale(sensitivity, epsilon):
    return math.sqrt(2) * sensitivity / epsilon
""", "that is the standard deviation"),
        "no sensitivity": ("""
def gaussian_sigma(sensitivity, epsilon, delta):
    return math.sqrt(2 * math.log(1.25 / delta)) / epsilon
""", "multiply by Delta"),
        "log of 1 / delta": ("""
def gaussian_sigma(sensitivity, epsilon, delta):
    return sensitivity * math.sqrt(2 * math.log(1 / delta)) / epsilon
""", "the log is of 1.25 / delta"),
        "Laplace upside down": ("""
def laplace_scale(sensitivity, epsilon):
    return epsilon / sensitivity
""", "that is epsilon / Delta"),
    },
    "q2": {
        "noise added after dividing": ("""
def dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size):
    return clip_and_sum(per_example_grads, max_norm) / expected_batch_size + noise_multiplier * max_norm * noise
""", "you added the noise after dividing"),
        "no noise": ("""
def dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size):
    return clip_and_sum(per_example_grads, max_norm) / expected_batch_size
""", "you forgot the noise"),
        "every row to norm C": ("""
def clip_and_sum(per_example_grads, max_norm):
    return (per_example_grads * max_norm / per_example_grads.norm(dim=1, keepdim=True)).sum(0)
""", "you scaled every row to norm exactly C"),
        "coordinates clipped": ("""
def clip_and_sum(per_example_grads, max_norm):
    return per_example_grads.clamp(-max_norm, max_norm).sum(0)
""", "you clipped each coordinate"),
        "mean of the clipped rows": ("""
def clip_and_sum(per_example_grads, max_norm):
    norms = per_example_grads.norm(dim=1, keepdim=True)
    return (per_example_grads * (max_norm / norms).clamp(max=1.0)).mean(0)
""", "you returned the mean of the clipped rows"),
        "the batch's sum clipped": ("""
def clip_and_sum(per_example_grads, max_norm):
    total = per_example_grads.sum(0)
    return total * min(1.0, max_norm / float(total.norm()))
""", "you clipped the batch's summed gradient"),
        "noise not scaled by C": ("""
def dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size):
    return (clip_and_sum(per_example_grads, max_norm) + noise_multiplier * noise) / expected_batch_size
""", "the noise std must be sigma * C"),
        "divided by the drawn size": ("""
def dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size):
    total = clip_and_sum(per_example_grads, max_norm) + noise_multiplier * max_norm * noise
    return total / len(per_example_grads)
""", "you divided by the drawn batch size"),
    },
    "q3": {
        "ties count one": ("""
def loss_threshold_auc(member_losses, non_member_losses):
    return float((member_losses[:, None] <= non_member_losses[None, :]).double().mean())
""", "ties count one half, not one"),
        "1 - AUC": ("""
def loss_threshold_auc(member_losses, non_member_losses):
    m, n = member_losses[:, None], non_member_losses[None, :]
    return float((m > n).double().mean() + 0.5 * (m == n).double().mean())
""", "you computed 1 - AUC"),
        "ties not counted": ("""
def loss_threshold_auc(member_losses, non_member_losses):
    return float((member_losses[:, None] < non_member_losses[None, :]).double().mean())
""", "ties count one half: with only strict"),
    },
    "q4": {
        "the mean": ("""
def masked_sum(updates, masks, modulus):
    return ((updates + masks) % modulus).sum(0) % modulus / len(updates)
""", "not the mean"),
        "masks ignored": ("""
def masked_sum(updates, masks, modulus):
    return updates.sum(0) % modulus
""", "the masks were left out"),
        "both add": (_masks(sign="+="), "both clients of a pair added r"),
        "masks not reduced": (_masks(reduce=""), "reduce modulo m (torch.remainder)"),
        "nothing reduced": ("""
def masked_sum(updates, masks, modulus):
    return (updates + masks).sum(0)
""", "reduce the sum modulo m"),
    },
}

CHEAT = """
def gaussian_sigma(sensitivity, epsilon, delta):
    raise NotImplementedError

def laplace_scale(sensitivity, epsilon):
    raise NotImplementedError

def clip_and_sum(per_example_grads, max_norm):
    per_example_grads.zero_()
    return torch.zeros(per_example_grads.shape[1], dtype=per_example_grads.dtype)

def dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size):
    per_example_grads.zero_()
    noise.zero_()
    return torch.zeros(per_example_grads.shape[1], dtype=per_example_grads.dtype)

def loss_threshold_auc(member_losses, non_member_losses):
    member_losses.zero_()
    non_member_losses.zero_()
    return 0.5

def pairwise_masks(r, modulus):
    r.zero_()
    return torch.zeros(r.shape[0], r.shape[2], dtype=torch.int64)

def masked_sum(updates, masks, modulus):
    updates.zero_()
    masks.zero_()
    return torch.zeros(updates.shape[1], dtype=torch.int64)
"""
