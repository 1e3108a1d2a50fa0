"""dlbook.finetune.dpo_loss against the DPO reference implementation's ``preference_loss``.

Source: eric-mitchell/direct-preference-optimization, trainers.py::preference_loss (the authors'
code for Rafailov et al. 2023). Its sigmoid loss for one pair is

    -log sigmoid(beta * ((pi_w - pi_l) - (ref_w - ref_l))),

with pi/ref the summed log-probabilities of the chosen (w) and rejected (l) responses under the
policy and the reference; its rewards are beta (pi - ref), detached. The repository has no test
suite, so the cases are the function's own identities and hand-computed values, with the reference
formula restated below (``reference_losses``) for random inputs.

Deliberately different: dlbook returns the mean over pairs (the reference returns per-pair losses,
averaged by its trainer) and has no ``label_smoothing`` (conservative DPO), ``ipo`` or
``reference_free`` options: the book teaches the plain loss.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlbook.finetune import dpo_loss, implicit_reward


def reference_losses(pw, pl, rw, rl, beta):
    """Per-pair sigmoid DPO loss, as trainers.py::preference_loss defines it (label_smoothing=0)."""
    logits = (pw - pl) - (rw - rl)
    return -F.logsigmoid(beta * logits)


def test_policy_equal_to_reference_gives_log_2():
    """preference_loss at initialization (policy = reference): every pair's loss is log 2."""
    lp = torch.tensor([-12.0, -3.5, -40.0], dtype=torch.double)
    assert dpo_loss(lp, lp - 1, lp, lp - 1, 0.1).item() == pytest.approx(math.log(2), abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_hand_computed_pair(beta):
    """One pair whose chosen log-ratio is +2 and rejected -1: loss = log(1 + exp(-3 beta))."""
    got = dpo_loss(torch.tensor([-10.0]), torch.tensor([-14.0]), torch.tensor([-12.0]), torch.tensor([-13.0]), beta)
    assert got.item() == pytest.approx(math.log1p(math.exp(-3 * beta)), rel=1e-6)


@pytest.mark.parametrize("seed, beta", [(0, 0.1), (1, 0.5), (2, 2.0)])
def test_mean_of_reference_losses_and_gradients(seed, beta):
    """On random float64 log-probabilities the loss is the mean of preference_loss's per-pair losses
    (1e-14) and so are the policy gradients; the reference gets none."""
    g = torch.Generator().manual_seed(seed)
    pw, pl = (-20 * torch.rand(16, dtype=torch.double, generator=g)).requires_grad_(), \
        (-20 * torch.rand(16, dtype=torch.double, generator=g)).requires_grad_()
    rw, rl = (-20 * torch.rand(16, dtype=torch.double, generator=g)).requires_grad_(), \
        (-20 * torch.rand(16, dtype=torch.double, generator=g)).requires_grad_()
    ours = dpo_loss(pw, pl, rw, rl, beta)
    theirs = reference_losses(pw, pl, rw.detach(), rl.detach(), beta).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=0)
    g_ours = torch.autograd.grad(ours, (pw, pl), retain_graph=True)
    g_theirs = torch.autograd.grad(theirs, (pw, pl))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-16)
    ours.backward()
    assert rw.grad is None and rl.grad is None


def test_rewards_are_beta_log_ratios():
    """preference_loss's chosen/rejected rewards: beta (policy - reference) log-probabilities."""
    pw, rw = torch.tensor([-3.0, -7.0]), torch.tensor([-4.0, -6.0])
    torch.testing.assert_close(implicit_reward(pw, rw, 0.1), torch.tensor([0.1, -0.1]))
