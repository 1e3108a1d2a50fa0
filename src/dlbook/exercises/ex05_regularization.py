"""Tests of exercise set 05_regularization (chapter 5: regularization).

Questions and the learner's names they read:

* q1 ``dropout_forward(x, u, p, training)`` (3 points)
* q2 ``l2_penalty(w, lam)`` and ``sgd_step_with_weight_decay(w, grad, lr, weight_decay)`` (3 points)
* q3 ``smooth_labels(y, num_classes, eps)`` (3 points)
* q4 ``ece(probs, target, n_bins)`` (3 points)

Every reference result is computed here with torch (``torch.optim.SGD``,
``F.cross_entropy(label_smoothing=...)``, tensor operations), bound at import
before any learner code runs, in float64. Learner functions are only called with
tensors and numbers, and only what they return is compared.
"""

from __future__ import annotations

import torch
from torch.nn.functional import cross_entropy as ref_cross_entropy
from torch.nn.functional import log_softmax as ref_log_softmax
from torch.nn.functional import one_hot as ref_one_hot
from torch.optim import SGD as RefSGD

from dlbook.grading import assert_close, assert_inputs_unchanged, question
from dlbook.grading.hints import generator, hint_for

F64 = torch.float64

# The first optimizer a process builds imports torch._dynamo (seconds, more on a busy machine): build one now, at
# import (checker() imports this module), so that it never counts against a test's time limit.
RefSGD([torch.nn.Parameter(torch.zeros(1, dtype=F64))], lr=0.1)


def _as_float(value, what: str) -> float:
    if isinstance(value, torch.Tensor):
        assert value.numel() == 1, f"{what} should be one number, got a tensor of shape {tuple(value.shape)}"
        return float(value.detach().double())
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (
        f"{what} should be a number, got {type(value).__name__}")
    return float(value)


# ---------------------------------------------------------------------------------------------- q1

def _dropout_case(seed: int, shape=(6, 5)):
    g = generator(seed)
    return torch.randn(*shape, generator=g, dtype=F64), torch.rand(*shape, generator=g, dtype=F64)


@question("q1", points=2, timeout=10)
def dropout_training_matches_inverted_dropout(ns):
    """In training, dropout_forward keeps x where u >= p, scaled by 1 / (1 - p), for p = 0.2, 0.5, 0.7."""
    for seed, p in ((0, 0.2), (1, 0.5), (2, 0.7)):
        x, u = _dropout_case(seed)
        out = ns.dropout_forward(x.clone(), u.clone(), p, True)
        keep = (u >= p).to(F64)
        expected = x * keep / (1 - p)
        assert_close(out, expected, atol=1e-12, hint=hint_for(out, {
            "you scaled the kept units by p: inverted dropout divides by the keep probability 1 - p":
                x * keep * p,
            "you scaled by 1 / p: p is the DROP probability, so divide by the keep probability 1 - p":
                x * keep / p,
            "the kept units must be scaled by 1 / (1 - p), so that E[output] = x": x * keep,
            "you kept the units with u < p: p is the probability of DROPPING a unit (torch's convention)":
                x * (u < p).to(F64) / (1 - p),
            "you kept the units with u < p and divided by p: p is the drop probability, keep u >= p and divide by 1 - p":
                x * (u < p).to(F64) / p,
        }, "p is the probability of dropping a unit: keep the units with u >= p, and scale the kept ones so that "
           "the expected output equals x"))


@question("q1", points=1, timeout=10)
def dropout_eval_is_the_identity(ns):
    """With training=False, dropout_forward returns x unchanged (no mask, no scaling)."""
    x, u = _dropout_case(3)
    out = ns.dropout_forward(x.clone(), u.clone(), 0.5, False)
    assert_close(out, x, atol=0, hint=hint_for(out, {
        "in eval mode inverted dropout does nothing: the scaling already happened in training": x * 0.5,
        "in eval mode nothing is dropped: ignore u": x * (u >= 0.5).to(F64) / 0.5,
    }, "eval mode: return x"))


# ---------------------------------------------------------------------------------------------- q2

@question("q2", points=1, timeout=10)
def l2_penalty_value(ns):
    """l2_penalty(w, lam) = (lam / 2) * sum of w**2, for a matrix and a vector."""
    g = generator(4)
    for shape, lam in (((4, 3), 0.1), ((7,), 2.0)):
        w = torch.randn(*shape, generator=g, dtype=F64)
        out = _as_float(ns.l2_penalty(w.clone(), lam), "l2_penalty")
        expected = float(lam / 2 * (w * w).sum())
        assert_close(torch.tensor(out), torch.tensor(expected), atol=1e-10, hint=hint_for(out, {
            "you left out the 1/2: the penalty is (lam / 2) ||w||^2, so that its gradient is lam * w":
                2 * expected,
            "you took the norm, not its square": float(lam / 2 * w.norm()),
        }, "(lam / 2) * (w ** 2).sum()"))


@question("q2", points=2, timeout=10)
def sgd_weight_decay_step_matches_torch(ns):
    """sgd_step_with_weight_decay equals one step of torch.optim.SGD(lr, weight_decay), for 3 settings."""
    g = generator(5)
    for lr, wd in ((0.1, 0.01), (0.5, 0.2), (0.01, 1.0)):
        w = torch.randn(5, 3, generator=g, dtype=F64)
        grad = torch.randn(5, 3, generator=g, dtype=F64)
        ref = torch.nn.Parameter(w.clone())
        ref.grad = grad.clone()
        RefSGD([ref], lr=lr, weight_decay=wd).step()
        expected = ref.detach()
        out = ns.sgd_step_with_weight_decay(w.clone(), grad.clone(), lr, wd)
        assert_close(out, expected, atol=1e-12, hint=hint_for(out, {
            "the decay term is part of the gradient, so it is multiplied by lr too: w - lr * (grad + wd * w)":
                w - lr * grad - wd * w,
            "the gradient of (wd / 2) ||w||^2 is wd * w, not 2 * wd * w": w - lr * (grad + 2 * wd * w),
            "the decay pulls w toward 0: add + wd * w to the gradient, not - wd * w": w - lr * (grad - wd * w),
            "you forgot the weight decay": w - lr * grad,
        }, "one plain SGD step on the loss plus (weight_decay / 2) ||w||^2: first work out that term's gradient"))
        assert_inputs_unchanged(ns, "return a new tensor and leave w as it was, as the question asks "
                                    "(w - ..., not w -= ...)")


# ---------------------------------------------------------------------------------------------- q3

@question("q3", points=2, timeout=10)
def smoothed_labels_match_torch_label_smoothing(ns):
    """Cross-entropy against smooth_labels(y, K, eps) equals F.cross_entropy(label_smoothing=eps), K = 4 and 10."""
    g = generator(6)
    for K, eps in ((4, 0.1), (10, 0.3)):
        y = torch.randint(0, K, (12,), generator=g)
        logits = torch.randn(12, K, generator=g, dtype=F64)
        q = ns.smooth_labels(y.clone(), K, eps)
        assert isinstance(q, torch.Tensor) and q.shape == (12, K), (
            f"smooth_labels should return a tensor of shape (12, {K}), got "
            f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
        onehot = ref_one_hot(y, K).to(F64)
        expected = (1 - eps) * onehot + eps / K
        assert_close(q, expected, atol=1e-12, hint=hint_for(q, {
            "spread eps over all K classes (eps / K), as torch does, not over the K - 1 others (eps / (K - 1))":
                (1 - eps) * onehot + eps / (K - 1) * (1 - onehot),
            "scale the one-hot by (1 - eps) before adding eps / K, so that each row sums to 1":
                onehot + eps / K,
            "you gave the true class eps and the others (1 - eps) / K: the true class keeps most of the mass":
                eps * onehot + (1 - eps) / K,
        }, "the true class keeps 1 - eps of the mass on top of its share, and eps is spread evenly over all K "
           "classes"))
        loss = -(q.to(F64) * ref_log_softmax(logits, dim=1)).sum(1).mean()
        assert_close(loss, ref_cross_entropy(logits, y, label_smoothing=eps), atol=1e-10,
                     hint="with these targets the cross-entropy should equal torch's label_smoothing")


@question("q3", points=1, timeout=10)
def smoothed_labels_rows_sum_to_one_and_eps0_is_onehot(ns):
    """Each row of smooth_labels sums to 1, and eps = 0 gives the one-hot targets."""
    y = torch.tensor([0, 2, 1, 2])
    q0 = ns.smooth_labels(y.clone(), 3, 0.0)
    assert_close(q0, ref_one_hot(y, 3).to(F64), atol=1e-12, hint="eps = 0 must give one_hot(y, K)")
    q = ns.smooth_labels(y.clone(), 3, 0.25)
    assert_close(q.sum(1), torch.ones(4, dtype=F64), atol=1e-12, hint="every row is a distribution: it sums to 1")


# ---------------------------------------------------------------------------------------------- q4

def _ref_ece(probs: torch.Tensor, target: torch.Tensor, n_bins: int) -> float:
    conf, pred = probs.max(dim=1)
    correct = (pred == target).to(F64)
    total = torch.zeros((), dtype=F64)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi)
        if b == 0:
            inside = inside | (conf <= lo)
        if inside.any():
            total = total + inside.to(F64).mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(total)


def _ece_case(seed: int, n: int = 300, K: int = 5):
    g = generator(seed)
    probs = torch.softmax(2.5 * torch.randn(n, K, generator=g, dtype=F64), dim=1)
    target = torch.where(torch.rand(n, generator=g) < 0.6, probs.argmax(1), torch.randint(0, K, (n,), generator=g))
    return probs, target


@question("q4", points=2, timeout=10)
def ece_matches_the_binned_definition(ns):
    """ece(probs, target, n_bins) = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| with equal-width bins, for 5, 10, 15 bins."""
    probs, target = _ece_case(7)
    for n_bins in (5, 10, 15):
        out = _as_float(ns.ece(probs.clone(), target.clone(), n_bins), "ece")
        expected = _ref_ece(probs, target, n_bins)
        conf, pred = probs.max(1)
        overall = abs(float((pred == target).to(F64).mean() - conf.mean()))
        unweighted = 0.0
        used = 0
        for b in range(n_bins):
            inside = (conf > b / n_bins) & (conf <= (b + 1) / n_bins)
            if inside.any():
                used += 1
                unweighted += float(((pred == target)[inside].to(F64).mean() - conf[inside].mean()).abs())
        assert_close(torch.tensor(out), torch.tensor(expected), atol=1e-9, hint=hint_for(out, {
            "weight each bin's gap by the fraction of predictions in it (|B_b| / N), not equally":
                unweighted / max(used, 1),
            "take |accuracy - confidence| per bin, then average; the overall gap lets errors of opposite sign cancel":
                overall,
        }, "confidence = max prob, prediction = argmax; bins (b/B, (b+1)/B]; "
           "ECE = sum over non-empty bins of (count / N) * |accuracy - mean confidence|"))


@question("q4", points=1, timeout=10)
def ece_of_simple_cases(ns):
    """ECE is 0.25 for two 75%-confident predictions with one right, 0 for confident correct predictions, and follows
    the bins (b/B, (b+1)/B] for confidences on their edges (1 in the last bin)."""
    p = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=F64)
    out = _as_float(ns.ece(p, torch.tensor([0, 0]), 10), "ece")
    assert_close(torch.tensor(out), torch.tensor(0.25), atol=1e-9, hint="accuracy 0.5 at confidence 0.75: a gap of 0.25")
    out = _as_float(ns.ece(torch.eye(3, dtype=F64), torch.arange(3), 10), "ece")
    assert_close(torch.tensor(out), torch.tensor(0.0), atol=1e-9,
                 hint="confidence 1 and always right is perfectly calibrated; a confidence of exactly 1 belongs to "
                      "the last bin (b/B, (b+1)/B]")
    _ece_on_the_edges(ns)


def _ece_edges():
    """Confidences on the bins' edges (5 bins): 1.0 twice (one right), 0.6 (a right edge: bin (0.4, 0.6]), 0.8 and
    0.75; every predicted class is right but the first."""
    probs = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.75, 0.125, 0.125]],
                         dtype=F64)
    return probs, torch.tensor([0, 0, 0, 2, 0])


def _ece_on_the_edges(ns):
    """With confidences exactly on bin edges (5 bins): a confidence of 1 is in the last bin, 0.6 in (0.4, 0.6]."""
    probs, target = _ece_edges()
    out = _as_float(ns.ece(probs, target, 5), "ece")
    expected = _ref_ece(probs, target, 5)
    conf, pred = probs.max(1)
    correct = (pred == target).to(F64)

    def binned(index):  # ECE with bin b = index[i] for example i (a bin index out of range drops it)
        total = 0.0
        for b in range(5):
            inside = index == b
            if inside.any():
                total += float(inside.to(F64).mean() * (correct[inside].mean() - conf[inside].mean()).abs())
        return total

    floor = (conf * 5).floor().long()
    assert_close(torch.tensor(out), torch.tensor(expected), atol=1e-9, hint=hint_for(out, {
        "a confidence of exactly 1 was left out of every bin: it belongs to the last bin, (1 - 1/B, 1]": binned(floor),
        "a confidence on an edge b/B belongs to the bin below it, (b/B - 1/B, b/B]: the bins are closed on the "
        "right, open on the left": binned(floor.clamp(max=4)),
    }, "bins (b/B, (b+1)/B], closed on the right; a confidence of exactly 1 is in the last one"))
