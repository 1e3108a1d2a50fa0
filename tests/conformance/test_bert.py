"""dlbook.pretrain.mask_tokens against BERT's ``create_masked_lm_predictions``.

Source: google-research/bert, create_pretraining_data.py::create_masked_lm_predictions: [CLS]
and [SEP] are never candidates; of the chosen positions 80 % become [MASK], 10 % keep their
token and 10 % get a random word. The repository has no test of it, so the cases are those
rules checked on 200,000 tokens, plus the Hugging Face calling convention (a tokenizer's
``all_special_ids``, which holds [MASK], passed as ``special_ids``).

Deliberately different: BERT masks exactly min(max_predictions_per_seq, max(1, round(p n)))
positions per sequence; dlbook (like Hugging Face's DataCollatorForLanguageModeling) selects each
position independently with probability p, so the count is p n on average. BERT's random word may
be any vocabulary entry, [CLS] and [MASK] included; dlbook draws only ordinary tokens.
"""

from __future__ import annotations

import torch

from dlbook.pretrain import mask_tokens

PAD, CLS, SEP, MASK, V = 0, 1, 2, 3, 30
SPECIAL = (PAD, CLS, SEP)


def _batch(n=400, t=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (n, t), generator=g)
    ids[:, 0], ids[:, -1], ids[:, -10:-1] = CLS, SEP, PAD
    return ids


def test_cls_and_sep_are_never_candidates():
    """create_masked_lm_predictions skips [CLS] and [SEP] (and dlbook's other special ids)."""
    ids = _batch()
    _, labels = mask_tokens(ids, MASK, V, SPECIAL, p=0.5, generator=torch.Generator().manual_seed(1))
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    assert (labels[special] == -100).all() and (labels[~special] != -100).float().mean() > 0.45


def test_80_10_10_split_of_the_selected():
    """Of the selected positions, 80 % [MASK], 10 % unchanged, 10 % a random ordinary token
    (each within 1 % on about 30,000 selections)."""
    ids = _batch()
    inputs, labels = mask_tokens(ids, MASK, V, SPECIAL, p=0.15, generator=torch.Generator().manual_seed(2))
    sel = labels != -100
    n = int(sel.sum())
    frac_mask = (inputs[sel] == MASK).float().mean().item()
    frac_same = (inputs[sel] == ids[sel]).float().mean().item()
    assert abs(n / int((ids > SEP).sum()) - 0.15) < 0.005
    assert abs(frac_mask - 0.8) < 0.01 and abs(frac_same - 0.1 - 0.1 / (V - 4)) < 0.01
    randoms = inputs[sel & (inputs != MASK) & (inputs != ids)]
    assert randoms.min() > MASK                                  # never a special id or [MASK]


def test_hugging_face_special_ids_include_mask():
    """A tokenizer's all_special_ids lists [MASK]; passing it is accepted, and a [MASK] already in
    the input is then never selected (it is special), while selected tokens still become [MASK]."""
    ids = _batch(n=50, t=200)
    ids[:, 5] = MASK
    inputs, labels = mask_tokens(ids, MASK, V, (*SPECIAL, MASK), p=0.3, generator=torch.Generator().manual_seed(3))
    assert (labels[:, 5] == -100).all() and (inputs[:, 5] == MASK).all()
    assert (inputs[labels != -100] == MASK).float().mean() > 0.75
