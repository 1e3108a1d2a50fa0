"""Tests of exercise set 00_preliminaries (chapter 0: networks, activations, losses).

Questions and the learner's names they read:

* q1 ``sigmoid(x)`` and ``sigmoid_grad(x)`` (3 points)
* q2 ``bce_with_logits(logits, targets)``, numerically stable (4 points)
* q3 ``log_softmax(logits)`` and ``cross_entropy(logits, targets)`` (4 points)
* q4 ``mlp_forward(x, weights, biases)`` and ``n_params`` (3 points)
* q5 ``backward_two_layer(x, y, W1, b1, W2, b2)`` and ``relative_error(a, b)`` (4 points)

Every reference result comes from torch, bound at import (before any learner
code runs), in float64. When an answer is wrong, the tests try the usual
mistakes and name the one that matches.
"""

from __future__ import annotations

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as ref_bce_with_logits
from torch.nn.functional import cross_entropy as ref_cross_entropy
from torch.nn.functional import log_softmax as ref_log_softmax

from dlbook.grading import assert_close, question
from dlbook.grading.hints import generator
from dlbook.grading.hints import hint_for

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- q1


@question("q1", points=1, timeout=10)
def sigmoid_matches_torch(ns):
    """sigmoid(x) equals torch.sigmoid on float64 inputs in [-8, 8]."""
    x = torch.linspace(-8, 8, 41, dtype=F64)
    out = ns.sigmoid(x)
    assert_close(out, torch.sigmoid(x), atol=1e-10, hint=hint_for(out, {
        "you computed 1 / (1 + exp(x)): the sign in the exponent should be minus": torch.sigmoid(-x),
        "that is tanh, not the sigmoid": torch.tanh(x),
    }, "sigmoid(x) = 1 / (1 + exp(-x))"))


@question("q1", points=2, timeout=10)
def sigmoid_grad_matches_autograd(ns):
    """sigmoid_grad(x) equals the derivative of torch.sigmoid that autograd computes."""
    x = torch.linspace(-6, 6, 25, dtype=F64, requires_grad=True)
    (expected,) = torch.autograd.grad(torch.sigmoid(x).sum(), x)
    x = x.detach()
    out = ns.sigmoid_grad(x)
    s = torch.sigmoid(x)
    assert_close(out, expected, atol=1e-10, hint=hint_for(out, {
        "that is sigmoid itself: the derivative is sigmoid(x) * (1 - sigmoid(x))": s,
        "1 - sigmoid(x)^2 mimics tanh's derivative (1 - tanh^2); for the sigmoid it is s * (1 - s)": 1 - s**2,
        "s * (1 + s) has the wrong sign: the derivative is s * (1 - s)": s * (1 + s),
        "did you apply the formula to x instead of s = sigmoid(x)? The derivative is s * (1 - s)": x * (1 - x),
    }, "the derivative is sigmoid(x) * (1 - sigmoid(x)); its largest value is 0.25, at x = 0"))


# ---------------------------------------------------------------------------------------------- q2


def _bce_data():
    logits = torch.randn(64, generator=generator(1), dtype=F64) * 3
    targets = (torch.rand(64, generator=generator(2), dtype=F64) < 0.5).to(F64)
    return logits, targets


@question("q2", points=2, timeout=10)
def bce_matches_torch(ns):
    """bce_with_logits equals F.binary_cross_entropy_with_logits (mean over the batch) for moderate logits."""
    logits, targets = _bce_data()
    out = ns.bce_with_logits(logits, targets)
    per_example = ref_bce_with_logits(logits, targets, reduction="none")
    assert_close(out, ref_bce_with_logits(logits, targets), atol=1e-10, hint=hint_for(out, {
        "you summed over the batch: return the mean": per_example.sum(),
        "you returned one loss per example: return their mean": per_example,
        "the sign is flipped: the loss is -[y log p + (1 - y) log(1 - p)]": -per_example.mean(),
        "targets and logits are swapped somewhere: y multiplies log sigmoid(z)":
            ref_bce_with_logits(logits, 1 - targets),
    }, "the loss is the mean over the batch of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]"))


@question("q2", points=2, timeout=10)
def bce_is_stable_for_large_logits(ns):
    """bce_with_logits stays finite and exact for logits of +-100 and +-30 (where the naive form gives inf)."""
    logits = torch.tensor([100.0, -100.0, 30.0, -30.0, 100.0, -100.0], dtype=F64)
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)
    out = ns.bce_with_logits(logits, targets)
    assert_close(out, ref_bce_with_logits(logits, targets), atol=1e-8, rtol=1e-10, hint=(
        "sigmoid(z) rounds to exactly 0 or 1 for large |z|, and its log is then -inf: rewrite the loss with "
        "log sigmoid(z) = -log(1 + exp(-z)) so that exp is only ever taken of -|z|"))


# ---------------------------------------------------------------------------------------------- q3


def _class_data(scale: float = 2.0):
    logits = torch.randn(16, 5, generator=generator(3), dtype=F64) * scale
    targets = torch.randint(0, 5, (16,), generator=generator(4))
    return logits, targets


@question("q3", points=1, timeout=10)
def log_softmax_matches_torch(ns):
    """log_softmax(logits) equals F.log_softmax over the last dimension."""
    logits, _ = _class_data()
    out = ns.log_softmax(logits)
    assert_close(out, ref_log_softmax(logits, dim=-1), atol=1e-10, hint=hint_for(out, {
        "you normalized over dim 0 (the batch): normalize each row, dim=-1": ref_log_softmax(logits, dim=0),
        "that is softmax, not its log": torch.softmax(logits, dim=-1),
    }, "log_softmax(z)_i = z_i - log(sum_j exp(z_j)), per row"))


@question("q3", points=1, timeout=10)
def log_softmax_is_stable(ns):
    """log_softmax stays finite and exact for logits near 1000 (exp overflows there)."""
    logits, _ = _class_data()
    logits = logits + 1000.0
    out = ns.log_softmax(logits)
    assert_close(out, ref_log_softmax(logits, dim=-1), atol=1e-8, hint=(
        "exp(1000) overflows: subtract each row's max before exponentiating (the log-sum-exp trick)"))


@question("q3", points=2, timeout=10)
def cross_entropy_matches_torch(ns):
    """cross_entropy(logits, targets) equals F.cross_entropy (mean over the batch)."""
    logits, targets = _class_data()
    out = ns.cross_entropy(logits, targets)
    per_example = ref_cross_entropy(logits, targets, reduction="none")
    assert_close(out, ref_cross_entropy(logits, targets), atol=1e-10, hint=hint_for(out, {
        "the sign is flipped: the loss is minus the log-probability of the true class": -per_example.mean(),
        "you summed over the batch: return the mean": per_example.sum(),
        "you returned one loss per example: return their mean": per_example,
    }, "pick each row's log-probability of its target class (log_softmax(z)[i, y_i]) and average minus that"))


# ---------------------------------------------------------------------------------------------- q4

SIZES = (8, 16, 16, 3)


def _mlp_reference():
    torch.manual_seed(5)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(n_in, n_out, dtype=F64))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach().clone() for m in linears]
    biases = [m.bias.detach().clone() for m in linears]
    return model, weights, biases


@question("q4", points=2, timeout=10)
def mlp_forward_matches_sequential(ns):
    """mlp_forward(x, weights, biases) equals nn.Sequential(Linear, ReLU, Linear, ReLU, Linear) with those weights."""
    model, weights, biases = _mlp_reference()
    x = torch.randn(10, SIZES[0], generator=generator(6), dtype=F64)
    with torch.no_grad():
        expected = model(x)
    out = ns.mlp_forward(x, [w.clone() for w in weights], [b.clone() for b in biases])
    assert_close(out, expected, atol=1e-10, hint=hint_for(out, {
        "no ReLU after the last layer: the output layer gives raw scores (logits)": torch.relu(expected),
    }, "each layer computes h @ W.T + b (W has shape (out, in)); ReLU between layers, none after the last"))


@question("q4", points=1, timeout=10)
def n_params_counts_weights_and_biases(ns):
    """n_params equals the number of parameters of an MLP with layer sizes 64 -> 32 -> 10."""
    expected = 64 * 32 + 32 + 32 * 10 + 10
    got = ns.n_params
    assert isinstance(got, int) and not isinstance(got, bool), f"n_params should be an int, got {type(got).__name__}"
    if got == 64 * 32 + 32 * 10:
        raise AssertionError(f"n_params = {got}: you counted the weights; add one bias per output unit")
    assert got == expected, f"n_params = {got}: each layer has n_in * n_out weights and n_out biases"


# ---------------------------------------------------------------------------------------------- q5


def _two_layer_problem():
    g = generator(7)
    x = torch.randn(12, 6, generator=g, dtype=F64)
    y = torch.randint(0, 4, (12,), generator=g)
    W1 = torch.randn(8, 6, generator=g, dtype=F64) * 0.6
    b1 = torch.randn(8, generator=g, dtype=F64) * 0.1
    W2 = torch.randn(4, 8, generator=g, dtype=F64) * 0.6
    b2 = torch.randn(4, generator=g, dtype=F64) * 0.1
    return x, y, W1, b1, W2, b2


def _two_layer_reference(x, y, W1, b1, W2, b2, relu_grad=True):
    """Autograd's (dW1, db1, dW2, db2); relu_grad=False lets the gradient through the ReLU unchanged (a mistake)."""
    params = [p.clone().requires_grad_() for p in (W1, b1, W2, b2)]
    a = x @ params[0].T + params[1]
    h = torch.relu(a) if relu_grad else a + (torch.relu(a) - a).detach()
    loss = ref_cross_entropy(h @ params[2].T + params[3], y)
    return torch.autograd.grad(loss, params), a.detach()


@question("q5", points=3, timeout=10)
def backprop_by_hand_matches_autograd(ns):
    """backward_two_layer returns dW1, db1, dW2, db2 of the mean cross-entropy, equal to autograd (float64)."""
    x, y, W1, b1, W2, b2 = _two_layer_problem()
    (gW1, gb1, gW2, gb2), a = _two_layer_reference(x, y, W1, b1, W2, b2)
    out = ns.backward_two_layer(x, y, W1.clone(), b1.clone(), W2.clone(), b2.clone())
    assert isinstance(out, (tuple, list)) and len(out) == 4, (
        f"return the four gradients (dW1, db1, dW2, db2), got {type(out).__name__}")
    n = x.shape[0]
    no_relu = _two_layer_reference(x, y, W1, b1, W2, b2, relu_grad=False)[0]
    for name, mine, expected, linear in zip(("dW1", "db1", "dW2", "db2"), out, (gW1, gb1, gW2, gb2), no_relu):
        mistakes = {"the gradient of the mean has a 1/N: you computed the gradient of the sum": expected * n}
        if expected.dim() == 2:
            mistakes["a gradient has the shape of its parameter: dW is (out, in), you returned its transpose"] = \
                expected.mT
        if name in ("dW1", "db1"):
            mistakes["the gradient reached the first layer without passing the ReLU: multiply by its derivative, "
                     "1 where the pre-activation is positive and 0 elsewhere"] = linear
        assert_close(mine, expected, atol=1e-10, hint=hint_for(mine, mistakes,
                     f"{name}: apply the chain rule one step at a time, from the loss back to the parameter: the "
                     "mean cross-entropy's gradient with respect to the logits first, then through the second "
                     "layer, the ReLU and the first layer"))


@question("q5", points=1, timeout=10)
def gradient_check_relative_error(ns):
    """relative_error(a, b) = ||a - b|| / (||a|| + ||b||), the scale-free number a gradient check reports."""
    g = generator(8)
    a = torch.randn(5, 3, generator=g, dtype=F64)
    b = a + 1e-3 * torch.randn(5, 3, generator=g, dtype=F64)
    expected = ((a - b).norm() / (a.norm() + b.norm())).item()
    got = float(ns.relative_error(a, b))
    wrong = {"that is the absolute error ||a - b||: divide by ||a|| + ||b||": (a - b).norm().item(),
             "divide by ||a|| + ||b||, not by ||a||": ((a - b).norm() / a.norm()).item()}
    hint = next((h for h, v in wrong.items() if abs(got - v) < 1e-12), "||a - b|| / (||a|| + ||b||), with the L2 norm")
    assert abs(got - expected) < 1e-12, f"relative_error = {got:.6g}, expected {expected:.6g}: {hint}"
