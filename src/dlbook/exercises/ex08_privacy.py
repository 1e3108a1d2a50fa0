"""Tests of exercise set 08_privacy (chapter 8: differential privacy, membership inference, secure aggregation).

Questions and the learner's names they read:

* q1 ``gaussian_sigma(sensitivity, epsilon, delta)`` and ``laplace_scale(sensitivity, epsilon)`` (3 points)
* q2 ``clip_and_sum(per_example_grads, max_norm)`` and
  ``dp_gradient(per_example_grads, max_norm, noise_multiplier, noise, expected_batch_size)`` (5 points)
* q3 ``loss_threshold_auc(member_losses, non_member_losses)`` (3 points)
* q4 ``pairwise_masks(r, modulus)`` and ``masked_sum(updates, masks, modulus)`` (4 points)

Every test only calls the learner's functions with tensors and numbers and compares what they
return with references computed here with torch, in float64. When an answer is wrong, the tests
try the usual mistakes and name the one that matches.
"""

from __future__ import annotations

import math

import torch

from dlbook.grading import assert_close, question
from dlbook.grading.hints import generator, hint_for

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- q1

@question("q1", points=2, timeout=10)
def gaussian_sigma_is_the_classic_formula(ns):
    """gaussian_sigma(Delta, eps, delta) = Delta sqrt(2 ln(1.25 / delta)) / eps for three settings."""
    for sens, eps, delta in ((1.0, 0.5, 1e-5), (2.0, 0.9, 1e-6), (0.25, 0.1, 1e-8)):
        out = ns.gaussian_sigma(sens, eps, delta)
        want = sens * math.sqrt(2 * math.log(1.25 / delta)) / eps
        assert_close(out, want, rtol=1e-9, atol=0, hint=hint_for(out, {
            "the noise must scale with the sensitivity: multiply by Delta": math.sqrt(2 * math.log(1.25 / delta)) / eps,
            "the log is of 1.25 / delta, not 1 / delta": sens * math.sqrt(2 * math.log(1 / delta)) / eps,
            "you forgot the square root around 2 ln(1.25 / delta)": sens * 2 * math.log(1.25 / delta) / eps,
            "divide by epsilon (more privacy, smaller epsilon, means more noise)":
                sens * math.sqrt(2 * math.log(1.25 / delta)) * eps,
        }, "sigma = Delta * sqrt(2 * ln(1.25 / delta)) / epsilon"))


@question("q1", points=1, timeout=10)
def laplace_scale_is_sensitivity_over_epsilon(ns):
    """laplace_scale(Delta, eps) = Delta / eps (the scale b of the Laplace noise)."""
    for sens, eps in ((1.0, 0.5), (3.0, 2.0)):
        out = ns.laplace_scale(sens, eps)
        assert_close(out, sens / eps, rtol=1e-12, atol=0, hint=hint_for(out, {
            "that is epsilon / Delta: the scale grows with the sensitivity and shrinks with epsilon": eps / sens,
            "that is the standard deviation sqrt(2) b; the question asks for the scale b": math.sqrt(2) * sens / eps,
        }, "b = L1 sensitivity / epsilon"))


# ---------------------------------------------------------------------------------------------- q2

def _grads():
    g = torch.randn(12, 7, generator=generator(11), dtype=F64)
    return g * torch.linspace(0.2, 3.0, 12, dtype=F64)[:, None]   # norms from small to large


# A library may divide by ||g_i|| + 1e-6 (Opacus does, against a zero norm): that moves each clipped row by at most
# 1e-6 / C of its length C, so the sum of the 12 rows by under 1.2e-5; float32 arithmetic moves it by about 1e-6.
CLIP_ATOL = 2e-5


def _clip_sum(g, c):
    n = g.norm(dim=1, keepdim=True)
    return (g * torch.clamp(c / n, max=1.0)).sum(0)


@question("q2", points=2, timeout=10)
def clip_and_sum_clips_each_example(ns):
    """clip_and_sum(G (B, P), C) = sum_i g_i min(1, C / ||g_i||)."""
    g, c = _grads(), 1.5
    out = ns.clip_and_sum(g.clone(), c)
    total = g.sum(0)
    assert_close(out, _clip_sum(g, c), atol=CLIP_ATOL, hint=hint_for(out, {
        "you clipped the batch's summed gradient, not each example's: clip every row g_i to norm C, then sum":
            total * min(1.0, c / float(total.norm())),
        "you clipped the mean gradient and returned it: clip each row, then sum (do not average before clipping)":
            g.mean(0) * min(1.0, c / float(g.mean(0).norm())),
        "you scaled every row to norm exactly C; rows already shorter than C must stay as they are":
            (g * (c / g.norm(dim=1, keepdim=True))).sum(0),
        "you clipped each coordinate to [-C, C] instead of the row's L2 norm": g.clamp(-c, c).sum(0),
        "you returned the mean of the clipped rows; the question asks for their sum": _clip_sum(g, c) / len(g),
    }, "for each row: factor = min(1, C / ||g_i||); sum factor * g_i over the rows"))


@question("q2", points=3, timeout=10)
def dp_gradient_adds_noise_scaled_by_c_and_divides_by_expected_size(ns):
    """dp_gradient = (clip_and_sum(G, C) + sigma C noise) / expected_batch_size."""
    g, c, sigma, expected = _grads(), 1.5, 0.8, 20.0
    noise = torch.randn(7, generator=generator(12), dtype=F64)
    out = ns.dp_gradient(g.clone(), c, sigma, noise.clone(), expected)
    s = _clip_sum(g, c)
    assert_close(out, (s + sigma * c * noise) / expected, atol=CLIP_ATOL / expected, hint=hint_for(out, {
        "the noise std must be sigma * C, not sigma: scale the noise by the clipping bound":
            (s + sigma * noise) / expected,
        "you divided by the drawn batch size B; with Poisson sampling divide by the expected size q N "
        "(the drawn size depends on the data; a fixed-size shuffled batch is sampling without replacement, "
        "which the accountant does not assume)": (s + sigma * c * noise) / len(g),
        "you added the noise after dividing: add it to the sum, then divide": s / expected + sigma * c * noise,
        "you forgot the noise": s / expected,
        "you clipped the batch's summed gradient, not each example's":
            (g.sum(0) * min(1.0, c / float(g.sum(0).norm())) + sigma * c * noise) / expected,
    }, "(sum of clipped rows + noise_multiplier * max_norm * noise) / expected_batch_size"))


# ---------------------------------------------------------------------------------------------- q3

def _auc(pos, neg):   # P(score_member > score_non_member) + 0.5 P(tie), scores = -loss
    sp, sn = -pos, -neg
    return float((sp[:, None] > sn[None, :]).double().mean() + 0.5 * (sp[:, None] == sn[None, :]).double().mean())


@question("q3", points=3, timeout=10)
def loss_threshold_auc_matches_the_rank_statistic(ns):
    """loss_threshold_auc = P(a member's loss < a non-member's loss) + half the ties."""
    member = torch.randint(0, 30, (40,), generator=generator(21)).double() / 10
    non_member = torch.randint(5, 40, (50,), generator=generator(22)).double() / 10   # ties on purpose
    out = ns.loss_threshold_auc(member.clone(), non_member.clone())
    want = _auc(member, non_member)
    strict = float((member[:, None] < non_member[None, :]).double().mean())
    assert_close(out, want, atol=1e-6, hint=hint_for(out, {  # a float32 mean of 2,000 pairs is within ~1e-7
        "the score is minus the loss (a member has a LOW loss): you computed 1 - AUC": 1 - want,
        "ties count one half: with only strict comparisons the AUC comes out too low": strict,
        "ties count one half, not one": strict + float((member[:, None] == non_member[None, :]).double().mean()),
    }, "compare every (member, non-member) pair: 1 if the member's loss is lower, 0.5 if equal"))


# ---------------------------------------------------------------------------------------------- q4

MOD = 2 ** 16


def _pair_values(n=4, p=5):
    return torch.randint(0, MOD, (n, n, p), generator=generator(31))


def _masks(r, mod, reduce=True):
    n = r.shape[0]
    out = torch.zeros(n, r.shape[2], dtype=torch.int64)
    for i in range(n):
        for j in range(n):
            if j > i:
                out[i] += r[i, j]
            elif j < i:
                out[i] -= r[j, i]
    return torch.remainder(out, mod) if reduce else out


@question("q4", points=2, timeout=10)
def pairwise_masks_cancel(ns):
    """pairwise_masks(r, m)[i] = (sum_{j>i} r[i, j] - sum_{j<i} r[j, i]) mod m, and the masks sum to 0 mod m."""
    r = _pair_values()
    out = ns.pairwise_masks(r.clone(), MOD)
    want = _masks(r, MOD)
    n = r.shape[0]
    both_add = torch.remainder(torch.stack([sum(r[min(i, j), max(i, j)] for j in range(n) if j != i)
                                            for i in range(n)]), MOD)
    assert_close(torch.as_tensor(out), want, atol=0, hint=hint_for(out, {
        "both clients of a pair added r: one must add it and the other subtract it, or the masks never cancel":
            both_add,
        "reduce modulo m (torch.remainder) so every mask lies in [0, m)": _masks(r, MOD, reduce=False),
    }, "client i adds r[i, j] for j > i and subtracts r[j, i] for j < i, then takes the result mod m"))


@question("q4", points=2, timeout=10)
def masked_sum_equals_plain_sum(ns):
    """masked_sum(U, M, m) = sum of (U + M) mod m: with cancelling masks, the plain sum mod m."""
    r = _pair_values()
    updates = torch.randint(0, MOD, (4, 5), generator=generator(32))
    # cancelling masks, then masks that do not cancel (a client dropped out): the server's sum is the same recipe
    for masks in (_masks(r, MOD), torch.randint(0, MOD, (4, 5), generator=generator(33))):
        out = ns.masked_sum(updates.clone(), masks.clone(), MOD)
        want = torch.remainder((updates + masks).sum(0), MOD)
        assert_close(torch.as_tensor(out), want, atol=0, hint=hint_for(out, {
            "reduce the sum modulo m: the masks cancel only modulo m": (updates + masks).sum(0),
            "you subtracted the masks: the server never sees them, it only adds the masked updates":
                torch.remainder((updates - masks).sum(0), MOD),
            "return the sum over clients (axis 0), not the mean": torch.remainder((updates + masks).sum(0), MOD) / 4,
            "the masks were left out: the server adds the MASKED updates (update + mask) mod m, which equals the "
            "plain sum only when the masks cancel": torch.remainder(updates.sum(0), MOD),
        }, "mask each update ((update + mask) mod modulus), then add the masked updates over the clients, mod "
           "modulus"))
