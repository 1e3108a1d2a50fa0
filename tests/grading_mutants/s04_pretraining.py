"""Mutants of set 04_pretraining (see grading_mutants/__init__.py for the layout)."""

NAMES = {
    "q1": ["mask_with"],
    "q2": ["clm_loss"],
    "q3": ["mean_pool"],
    "q4": ["kshot_prompt"],
}

_MASK = """
def mask_with(ids, u, action, random_ids, mask_id, special_ids, p):
    special = torch.isin(ids, torch.tensor(special_ids))
    selected = ~special & (u < {p})
    inputs = ids.clone()
    inputs[selected & (action < {mask_until})] = mask_id
    rand = selected & (action >= 0.8) & (action < 0.9)
    inputs[rand] = random_ids[rand]
    return inputs, torch.where({labelled}, ids, torch.full_like(ids, -100))
"""


def _mask(p="p", mask_until="0.8", labelled="selected"):
    return _MASK.format(p=p, mask_until=mask_until, labelled=labelled)  # the reference, with one switch changed


RIGHT = {
    "q1": {
        "isin and where": """
def mask_with(ids, u, action, random_ids, mask_id, special_ids, p):
    selected = (u < p) & ~torch.isin(ids, torch.tensor(special_ids))
    inputs = torch.where(selected & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, ids.masked_fill(~selected, -100)
""",
    },
    "q2": {
        "cross_entropy on (B, V, T - 1)": """
def clm_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:])
""",
    },
    "q3": {
        "einsum": """
def mean_pool(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype)
    return torch.einsum("btc,bt->bc", hidden, m) / m.sum(1, keepdim=True)
""",
    },
    "q4": {
        "a comprehension": """
def kshot_prompt(xs, ys, query, k, arrow_id, sep_id):
    ids = [t for x, y in zip(xs[:k], ys[:k]) for t in (x, arrow_id, y, sep_id)]
    return torch.tensor(ids + [query, arrow_id])
""",
    },
}

WRONG = {
    "q1": {
        "ids corrupted in place, labels from them": ("""
def mask_with(ids, u, action, random_ids, mask_id, special_ids, p):
    selected = ~torch.isin(ids, torch.tensor(special_ids)) & (u < p)
    ids[selected & (action < 0.8)] = mask_id
    rand = selected & (action >= 0.8) & (action < 0.9)
    ids[rand] = random_ids[rand]
    return ids, torch.where(selected, ids, torch.full_like(ids, -100))
""", "labels must be the ORIGINAL ids"),
        "every selected position masked": ("""
def mask_with(ids, u, action, random_ids, mask_id, special_ids, p):
    selected = ~torch.isin(ids, torch.tensor(special_ids)) & (u < p)
    return ids.masked_fill(selected, mask_id), torch.where(selected, ids, torch.full_like(ids, -100))
""", "every selected position became [MASK]"),
        "labels everywhere": (_mask(labelled="torch.ones_like(selected)"), "labels at every position"),
        "specials selected": ("""
def mask_with(ids, u, action, random_ids, mask_id, special_ids, p):
    selected = u < p
    inputs = ids.clone()
    inputs[selected & (action < 0.8)] = mask_id
    rand = selected & (action >= 0.8) & (action < 0.9)
    inputs[rand] = random_ids[rand]
    return inputs, torch.where(selected, ids, torch.full_like(ids, -100))
""", "special tokens ([CLS], [PAD]) were selected too"),
    },
    "q2": {
        "no shift": ("""
def clm_loss(logits, ids):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
""", "no shift"),
        "a sum": ("""
def clm_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="sum")
""", "a sum, not a mean"),
    },
    "q3": {
        "the sum": ("""
def mean_pool(hidden, attention_mask):
    return (hidden * attention_mask[..., None]).sum(1)
""", "that is the sum"),
        "padding averaged in": ("""
def mean_pool(hidden, attention_mask):
    return hidden.mean(1)
""", "padding is averaged in"),
        "divided by T": ("""
def mean_pool(hidden, attention_mask):
    return (hidden * attention_mask[..., None]).sum(1) / hidden.shape[1]
""", "divided by T"),
    },
    "q4": {
        "a float tensor": ("""
def kshot_prompt(xs, ys, query, k, arrow_id, sep_id):
    ids = [t for x, y in zip(xs[:k], ys[:k]) for t in (x, arrow_id, y, sep_id)]
    return torch.tensor(ids + [query, arrow_id], dtype=torch.float32)
""", "a torch.long tensor"),
        "every demonstration": ("""
def kshot_prompt(xs, ys, query, k, arrow_id, sep_id):
    ids = [t for x, y in zip(xs, ys) for t in (x, arrow_id, y, sep_id)]
    return torch.tensor(ids + [query, arrow_id])
""", "use only the first k="),
        "no final arrow": ("""
def kshot_prompt(xs, ys, query, k, arrow_id, sep_id):
    ids = [t for x, y in zip(xs[:k], ys[:k]) for t in (x, arrow_id, y, sep_id)]
    return torch.tensor(ids + [query])
""", "must end with the query followed by the arrow"),
    },
}

CHEAT = """
def mask_with(ids, u, action, random_ids, mask_id, special_ids, p):
    ids.fill_(special_ids[0])
    return ids.clone(), torch.full_like(ids, -100)

def clm_loss(logits, ids):
    logits.zero_()
    return torch.tensor(math.log(logits.shape[-1]), dtype=logits.dtype)

def mean_pool(hidden, attention_mask):
    hidden.zero_()
    return torch.zeros(hidden.shape[0], hidden.shape[2], dtype=hidden.dtype)

def kshot_prompt(xs, ys, query, k, arrow_id, sep_id):
    xs.clear()
    ys.clear()
    return torch.tensor([query, arrow_id])
"""
