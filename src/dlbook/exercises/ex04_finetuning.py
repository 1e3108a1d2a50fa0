"""Tests of exercise set 04_finetuning (chapter 4, part 2: parameter-efficient fine-tuning and DPO).

Questions and the learner's names they read (all pure functions: tensors in, tensors or numbers out):

* q1 ``lora_forward(x, W0, b0, A, B, alpha)``, without forming ``B A`` (3 points)
* q2 ``lora_init(d_out, d_in, r, generator)`` and ``lora_num_params(d_out, d_in, r)`` (3 points)
* q3 ``lora_merge(W0, A, B, alpha)`` (2 points)
* q4 ``response_logprob(logits, tokens, prompt_len)`` (3 points)
* q5 ``dpo_loss(pw, pl, rw, rl, beta)`` (3 points)

References are written here with torch (``F.linear``, ``log_softmax``, ``logsigmoid``), bound at
import before any learner code runs, in float64.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import linear as ref_linear
from torch.nn.functional import logsigmoid as ref_logsigmoid

from dlbook.grading import assert_close, assert_inputs_unchanged, question
from dlbook.grading.hints import generator, hint_for

F64 = torch.float64


def _lora_case(seed, d_out=6, d_in=10, r=3):
    g = generator(seed)
    return (torch.randn(4, d_in, generator=g, dtype=F64), torch.randn(d_out, d_in, generator=g, dtype=F64),
            torch.randn(d_out, generator=g, dtype=F64), torch.randn(r, d_in, generator=g, dtype=F64),
            torch.randn(d_out, r, generator=g, dtype=F64))


# ---------------------------------------------------------------------------------------------- q1

@question("q1", points=2, timeout=10)
def lora_forward_matches_the_formula(ns):
    """lora_forward(x, W0, b0, A, B, alpha) = x W0^T + b0 + (alpha/r) x A^T B^T, for r = 3, 1 and 4 (alpha = 10,
    not a multiple of 4)."""
    for seed, r, alpha in ((0, 3, 9.0), (1, 1, 2.0), (2, 4, 10.0)):
        x, w0, b0, a, b = _lora_case(seed, r=r)
        out = ns.lora_forward(x, w0, b0, a, b, alpha)
        base = ref_linear(x, w0, b0)
        update = x @ a.T @ b.T
        expected = base + alpha / r * update
        assert_close(out, expected, atol=1e-10, hint=hint_for(out, {
            f"alpha // r rounds down ({alpha:g} // {r} = {alpha // r:g}): the scale is the true ratio alpha / r = "
            f"{alpha / r:g}": base + (alpha // r) * update,
            "the update is not scaled: multiply B A x by alpha / r": base + update,
            "the scale is upside down: it is alpha / r, not r / alpha": base + r / alpha * update,
            "alpha / r is applied twice": base + (alpha / r) ** 2 * update,
            "the scale is alpha, not alpha / r": base + alpha * update,
            "the bias b0 is missing": expected - b0,
            "r is the rank, the number of rows of A (A.shape[0], or B.shape[1]); B.shape[0] is d_out":
                base + alpha / b.shape[0] * update,
        }, default="the frozen layer's output plus the low-rank update, scaled by alpha over the rank"))


def _overflow_case():
    """A and B with entries near 1e200 and x near 1e-200: B (A x) is finite, while B A alone overflows to inf."""
    x, w0, b0, a, b = _lora_case(8)
    return x * 1e-200, w0, b0, a * 1e200, b * 1e200


@question("q1", points=1, timeout=10)
def lora_forward_never_forms_ba(ns):
    """lora_forward computes B (A x) without the (d_out, d_in) product B A: on entries where B A overflows to inf and
    B (A x) does not, the output is finite and right."""
    x, w0, b0, a, b = _overflow_case()
    assert bool(torch.isinf(b @ a).any()) and bool(torch.isfinite(x @ a.T @ b.T).all())  # the case is what it says
    out = ns.lora_forward(x, w0, b0, a, b, 6.0)
    expected = ref_linear(x, w0, b0) + 2.0 * (x @ a.T @ b.T)
    if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
        raise AssertionError("the output overflowed to inf or nan on inputs where B (A x) stays finite: the code forms "
                             "the (d_out, d_in) matrix B A (or A^T B^T); apply A to x first, then B to the result, "
                             "which also costs r (d_in + d_out) per row instead of d_in d_out")
    assert_close(out, expected, rtol=1e-10, hint="h = W0 x + b0 + (alpha / r) B (A x)")


# ---------------------------------------------------------------------------------------------- q2

@question("q2", points=2, timeout=10)
def lora_init_leaves_the_model_unchanged(ns):
    """lora_init returns A (r, d_in) random and B (d_out, r) zero, so the update B A is exactly zero."""
    g = generator(7)
    a, b = ns.lora_init(6, 10, 3, g)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), "return the tuple (A, B) of tensors"
    assert a.dtype == F64 and b.dtype == F64, (f"A and B should be float64, got {a.dtype} and {b.dtype}: pass "
                                               "dtype=torch.float64 when you create them")
    assert tuple(a.shape) == (3, 10), f"A should have shape (r, d_in) = (3, 10), got {tuple(a.shape)}"
    assert tuple(b.shape) == (6, 3), f"B should have shape (d_out, r) = (6, 3), got {tuple(b.shape)}"
    if bool((b != 0).any()):
        raise AssertionError("B is initialized randomly: then B A != 0 and the pretrained model changes at step 0. "
                             "Initialize B to zeros (and A randomly)")
    assert bool((a != 0).any()), ("A is zero too: with A = B = 0 both gradients are zero and LoRA never learns; "
                                  "initialize A randomly")
    assert float(a.std()) > 1e-3, "A is (almost) constant; draw it at random"
    assert not torch.equal(g.get_state(), generator(7).get_state()), (
        "the generator passed in was not used: draw A with torch.randn(..., generator=generator)")
    again, _ = ns.lora_init(6, 10, 3, generator(7))
    other, _ = ns.lora_init(6, 10, 3, generator(8))
    assert torch.equal(torch.as_tensor(again), a) and not torch.equal(torch.as_tensor(other), a), (
        "A must come from the generator alone: the same seed gives the same A, another seed another A")


@question("q2", points=1, timeout=10)
def lora_num_params_counts_both_factors(ns):
    """lora_num_params(d_out, d_in, r) = r (d_out + d_in), for three layer shapes."""
    for d_out, d_in, r in ((768, 768, 8), (3072, 768, 4), (10, 64, 1)):
        n = ns.lora_num_params(d_out, d_in, r)
        expected = r * (d_out + d_in)
        hint = hint_for(n, {
            "that is the size of the full update matrix B A (d_out x d_in); LoRA stores the two factors":
                d_out * d_in,
            "count both factors: A has r x d_in entries and B has d_out x r": r * d_in,
            "count both factors: B has d_out x r entries and A has r x d_in": r * d_out,
            "that counts r times the whole matrix": r * d_out * d_in,
        }, default="A is (r, d_in) and B is (d_out, r)")
        assert_close(float(n), float(expected), atol=0, hint=hint)


# ---------------------------------------------------------------------------------------------- q3

@question("q3", points=2, timeout=10)
def lora_merge_folds_the_update_into_w0(ns):
    """lora_merge(W0, A, B, alpha) = W0 + (alpha/r) B A, a (d_out, d_in) matrix giving lora_forward's output."""
    x, w0, b0, a, b = _lora_case(3)
    merged = ns.lora_merge(w0, a, b, 4.0)
    assert isinstance(merged, torch.Tensor), "lora_merge should return a tensor"
    assert_inputs_unchanged(ns, "return a new matrix (W0 + ...), as the question asks")
    expected = w0 + 4.0 / 3 * (b @ a)
    assert_close(merged, expected, atol=1e-10, hint=hint_for(merged, {
        "the merged weight misses the scale alpha / r": w0 + b @ a,
        "the update was subtracted: merging adds (alpha / r) B A": w0 - 4.0 / 3 * (b @ a),
        "alpha / r is applied twice": w0 + (4.0 / 3) ** 2 * (b @ a),
    }, default="W = W0 + (alpha / r) B A"))
    assert_close(ref_linear(x, merged, b0), ref_linear(x, expected, b0), atol=1e-10,
                 hint="x W^T + b0 with the merged W should equal the unmerged LoRA output")


# ---------------------------------------------------------------------------------------------- q4

def _lm_case(seed):
    g = generator(seed)
    return torch.randn(3, 7, 5, generator=g, dtype=F64), torch.randint(0, 5, (3, 7), generator=g)


def _token_logps(logits, tokens):
    """log p(tokens[:, t] | tokens[:, :t]) for t = 1..T-1, shape (B, T-1)."""
    return logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


@question("q4", points=3, timeout=10)
def response_logprob_counts_response_tokens_only(ns):
    """response_logprob(logits, tokens, prompt_len) sums log p over tokens[:, prompt_len:] only, for
    prompt lengths 1, 3 and 6 (logits[:, t-1] predicts tokens[:, t])."""
    logits, tokens = _lm_case(4)
    lp = _token_logps(logits, tokens)                       # lp[:, t-1] scores tokens[:, t]
    for prompt_len in (1, 3, 6):
        out = ns.response_logprob(logits, tokens, prompt_len)
        expected = lp[:, prompt_len - 1:].sum(-1)
        shifted = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)[:, prompt_len:].sum(-1)
        unnormalized = logits[:, prompt_len - 1:-1].gather(-1, tokens[:, prompt_len:, None]).squeeze(-1).sum(-1)
        assert_close(out, expected, atol=1e-10, hint=hint_for(out, {
            "prompt tokens are counted: sum over the response tokens only": lp.sum(-1),
            "off by one: the logits at position t - 1 predict token t": shifted,
            "use log-probabilities (log_softmax over the vocabulary), not raw logits": unnormalized,
            "you averaged: DPO uses the sum over response tokens": lp[:, prompt_len - 1:].mean(-1),
        }, default="add up, over the response tokens only, the log-probability the model gave each of them; "
                   "the logits at position t - 1 are the prediction of token t"))


# ---------------------------------------------------------------------------------------------- q5

@question("q5", points=2, timeout=10)
def dpo_loss_matches_the_formula(ns):
    """dpo_loss = mean -log sigma(beta [(pw - rw) - (pl - rl)]) over 8 pairs, beta = 0.1 and 0.5."""
    g = generator(5)
    pw, pl, rw, rl = (torch.randn(8, generator=g, dtype=F64) * 3 - 10 for _ in range(4))
    for beta in (0.1, 0.5):
        out = ns.dpo_loss(pw, pl, rw, rl, beta)
        margin = (pw - rw) - (pl - rl)
        expected = -ref_logsigmoid(beta * margin).mean()
        assert_close(out, expected, atol=1e-10, hint=hint_for(out, {
            "beta is missing: the margin is multiplied by beta inside the sigmoid": -ref_logsigmoid(margin).mean(),
            "the sign is flipped: the chosen response's log-ratio comes first": -ref_logsigmoid(-beta * margin).mean(),
            "the reference is missing: use log pi - log pi_ref for each response":
                -ref_logsigmoid(beta * (pw - pl)).mean(),
            "take -log of the sigmoid, not 1 - sigmoid": (1 - torch.sigmoid(beta * margin)).mean(),
            "you summed over pairs; take the mean": -ref_logsigmoid(beta * margin).sum(),
        }, default="-log sigmoid(beta * ((pw - rw) - (pl - rl))), averaged over the pairs"))


@question("q5", points=1, timeout=10)
def dpo_loss_is_log2_at_the_reference(ns):
    """When the policy equals the reference the loss is log 2; a policy that prefers the chosen responses more than
    the reference does has a lower loss."""
    g = generator(6)
    pw, pl = torch.randn(5, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    out = ns.dpo_loss(pw, pl, pw.clone(), pl.clone(), 0.3)
    assert_close(out, math.log(2), atol=1e-10, hint="at the start of DPO (policy = reference) every margin is 0, "
                                                      "so the loss is -log sigma(0) = log 2")
    better = float(torch.as_tensor(ns.dpo_loss(pw + 1.0, pl, pw.clone(), pl.clone(), 0.3)))
    assert better < math.log(2) - 0.1, (
        f"the loss is {better:.4g} for a policy that raised every chosen response's log-probability by 1 above the "
        "reference: it should fall below log 2 (DPO rewards preferring the chosen response more than the reference)")
