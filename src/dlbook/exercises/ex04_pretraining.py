"""Tests of exercise set 04_pretraining (chapter 4, part 1: pretraining objectives and transfer).

Questions and the learner's names they read:

* q1 ``mask_with(ids, u, action, random_ids, mask_id, special_ids, p)`` (4 points): BERT's 80/10/10
* q2 ``clm_loss(logits, ids)`` (2 points): the causal LM shift
* q3 ``mean_pool(hidden, attention_mask)`` (2 points): mask-aware mean pooling
* q4 ``kshot_prompt(xs, ys, query, k, arrow_id, sep_id)`` (2 points): a K-shot prompt

Every learner function is pure: tensors and lists in, tensors out. References are computed here
with torch (``F.cross_entropy``, explicit loops), in float64 where there are floats.
"""

from __future__ import annotations

import torch
from torch.nn.functional import cross_entropy as ref_cross_entropy

from dlbook.grading import assert_close, question
from dlbook.grading.hints import generator, hint_for, matches

F64 = torch.float64
IGNORE = -100


# ---------------------------------------------------------------------------------------------- q1

def _mask_case(seed, p=0.15):
    g = generator(seed)
    ids = torch.randint(4, 30, (6, 40), generator=g)
    ids[:, 0] = 1                     # [CLS]
    ids[:, 30:] = 0                   # [PAD]
    u = torch.rand(6, 40, generator=g, dtype=F64)
    action = torch.rand(6, 40, generator=g, dtype=F64)
    random_ids = torch.randint(4, 30, (6, 40), generator=g)
    return ids, u, action, random_ids, 3, [0, 1, 2], p


def _ref_mask(ids, u, action, random_ids, mask_id, special_ids, p):
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in special_ids:
        special |= ids == s
    selected = ~special & (u < p)
    inputs = ids.clone()
    inputs[selected & (action < 0.8)] = mask_id
    rand = selected & (action >= 0.8) & (action < 0.9)
    inputs[rand] = random_ids[rand]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    return inputs, labels, selected, special


@question("q1", points=2, timeout=10)
def masked_inputs_follow_80_10_10(ns):
    """mask_with's inputs: [MASK] where action < 0.8, the random id where 0.8 <= action < 0.9, else unchanged."""
    for seed, p in ((0, 0.15), (1, 0.5)):
        case = _mask_case(seed, p)
        inputs, labels = ns.mask_with(*case)
        ref_inputs, ref_labels, selected, special = _ref_mask(*case)
        ids, u, action, random_ids, mask_id, _, _ = case
        all_masked = torch.where(selected, torch.full_like(ids, mask_id), ids)
        with_specials = ids.clone()
        sel_sp = u < p
        with_specials[sel_sp & (action < 0.8)] = mask_id
        with_specials[sel_sp & (action >= 0.8) & (action < 0.9)] = random_ids[sel_sp & (action >= 0.8) & (action < 0.9)]
        hint = hint_for(inputs, {
            "every selected position became [MASK]: only 80% should; 10% get random_ids, 10% stay": all_masked,
            "special tokens ([CLS], [PAD]) were selected too: they must never be": with_specials,
        }, default="select where u < p and the token is not special; then [MASK] if action < 0.8, "
                   "random_ids if 0.8 <= action < 0.9, unchanged otherwise")
        assert_close(inputs, ref_inputs, atol=0, hint=hint)


@question("q1", points=2, timeout=10)
def mlm_labels_only_at_selected_positions(ns):
    """mask_with's labels: the original id at selected positions, -100 everywhere else (padding included)."""
    for seed in (2, 3):
        case = _mask_case(seed)
        _, labels = ns.mask_with(*case)
        _, ref_labels, selected, special = _ref_mask(*case)
        ids = case[0]
        hint = hint_for(labels, {
            "labels at every position make the loss cover all tokens: put -100 where nothing was selected": ids,
            "labels must be the ORIGINAL ids, not the corrupted inputs": torch.where(selected, ns.mask_with(*case)[0],
                                                                                  torch.full_like(ids, IGNORE)),
            "padding and [CLS] got labels: specials are never selected": torch.where(case[1] < case[6], ids,
                                                                                    torch.full_like(ids, IGNORE)),
        }, default="labels = ids where selected, -100 elsewhere")
        assert_close(labels, ref_labels, atol=0, hint=hint)


# ---------------------------------------------------------------------------------------------- q2

@question("q2", points=2, timeout=10)
def clm_loss_shifts_targets_by_one(ns):
    """clm_loss(logits, ids) = mean cross-entropy of logits[:, t] against ids[:, t + 1]."""
    g = generator(4)
    logits = torch.randn(3, 9, 11, generator=g, dtype=F64)
    ids = torch.randint(0, 11, (3, 9), generator=g)
    out = ns.clm_loss(logits, ids)
    expected = ref_cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    hint = hint_for(out, {
        "no shift: position t must predict token t + 1, not itself": ref_cross_entropy(logits.reshape(-1, 11),
                                                                                      ids.reshape(-1)),
        "shifted the wrong way: logits[:, :-1] go with ids[:, 1:]": ref_cross_entropy(logits[:, 1:].reshape(-1, 11),
                                                                                     ids[:, :-1].reshape(-1)),
        "a sum, not a mean over the B (T - 1) predictions": ref_cross_entropy(
            logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="sum"),
    }, default="position t predicts token t + 1: pair each position's logits with the NEXT token (the last "
               "position has nothing to predict), then take the mean cross-entropy over the B (T - 1) predictions")
    assert_close(out, expected, atol=1e-10, hint=hint)


# ---------------------------------------------------------------------------------------------- q3

@question("q3", points=2, timeout=10)
def mean_pool_ignores_padding(ns):
    """mean_pool(hidden, attention_mask) averages only the real tokens (mask 1), for every row."""
    g = generator(5)
    hidden = torch.randn(4, 7, 5, generator=g, dtype=F64)
    lengths = [7, 1, 3, 5]
    mask = (torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]).long()
    out = ns.mean_pool(hidden, mask)
    expected = torch.stack([hidden[i, :n].mean(0) for i, n in enumerate(lengths)])
    m = mask[..., None].to(F64)
    hint = hint_for(out, {
        "padding is averaged in: exclude positions where attention_mask is 0": hidden.mean(1),
        "you zeroed the padding but divided by T: divide by the number of real tokens": (hidden * m).sum(1) / 7,
        "that is the sum; divide by the number of real tokens": (hidden * m).sum(1),
    }, default="sum(mask * hidden over T) / sum(mask over T)")
    assert_close(out, expected, atol=1e-12, hint=hint)


# ---------------------------------------------------------------------------------------------- q4

def _ref_prompt(xs, ys, query, k, arrow_id, sep_id):
    out = []
    for x, y in zip(xs[:k], ys[:k]):
        out += [x, arrow_id, y, sep_id]
    return torch.tensor(out + [query, arrow_id], dtype=torch.long)


@question("q4", points=2, timeout=10)
def kshot_prompt_layout(ns):
    """kshot_prompt: x1 -> y1 ; ... xK -> yK ; query ->  as ids, for K = 0, 1 and 3."""
    xs, ys, query, arrow, sep = [5, 6, 7, 8], [10, 11, 12, 13], 9, 1, 2
    for k in (0, 1, 3):
        out = ns.kshot_prompt(xs, ys, query, k, arrow, sep)
        expected = _ref_prompt(xs, ys, query, k, arrow, sep)
        assert isinstance(out, torch.Tensor), f"return a 1-D LongTensor, got {type(out).__name__}"
        assert out.dtype == torch.long, (f"the prompt is token ids, a torch.long tensor, got {out.dtype}: pass "
                                         "dtype=torch.long (an embedding layer accepts only integer ids)")
        hint = hint_for(out, {
            "the prompt must end with the query followed by the arrow, so the next token is the answer":
                expected[:-1],
            f"use only the first k={k} demonstrations": _ref_prompt(xs, ys, query, len(xs), arrow, sep),
        }, default="for each of the first k pairs: x, arrow, y, sep; then query, arrow")
        assert out.shape == expected.shape and matches(out, expected), hint
