"""Tests of exercise set 07_interpretability (chapter 7: explaining a classifier).

Questions and the learner's names they read:

* q1 ``saliency(params, x, target)`` (3 points)
* q2 ``integrated_gradients(params, x, target, baseline, steps)`` (3 points)
* q3 ``occlude(x, top, left, size, value)`` and ``occlusion_drop(params, x, target, top, left, size, value)``
  (3 points)
* q4 ``fgsm(params, x, y, eps)`` (3 points)
* q5 ``spearman(a, b)`` (2 points)

The classifier is given as a list of tensors ``params = [W1, b1, running_mean, running_var, W2, b2]``:
flatten (N, 4, 4) images to 16 features, Linear(16, 8), BatchNorm1d(8) without affine parameters, tanh,
Linear(8, 3). The learner's notebook builds it with a given ``make_model(params)``; the references here
compute the same logits with torch's functional operations, bound at import, in float64, in eval mode
(batch norm with the running statistics).
"""

from __future__ import annotations

import torch
from torch import autograd as _autograd
from torch.nn.functional import cross_entropy as ref_cross_entropy
from torch.nn.functional import linear as ref_linear

from dlbook.grading import assert_close, assert_inputs_unchanged, question
from dlbook.grading.hints import generator, hint_for, matches
from dlbook.grading.inputs import changed_inputs

F64 = torch.float64
BN_EPS = 1e-5
ref_grad = _autograd.grad
ref_tanh = torch.tanh
ref_sign = torch.sign


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = generator(seed)
    return [0.5 * torch.randn(8, 16, generator=g, dtype=F64), 0.1 * torch.randn(8, generator=g, dtype=F64),
            0.5 * torch.randn(8, generator=g, dtype=F64), 0.5 + torch.rand(8, generator=g, dtype=F64),
            torch.randn(3, 8, generator=g, dtype=F64), 0.1 * torch.randn(3, generator=g, dtype=F64)]


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, 4, generator=generator(seed), dtype=F64)


def _logits(params, x, train: bool = False):
    """(N, 4, 4) -> (N, 3); train=True normalizes with the batch's statistics (the forgotten-eval mistake)."""
    w1, b1, mean, var, w2, b2 = params
    h = ref_linear(x.flatten(1), w1, b1)
    if train:
        mean, var = h.mean(0), h.var(0, unbiased=False)
    h = (h - mean) / (var + BN_EPS).sqrt()
    return ref_linear(ref_tanh(h), w2, b2)


def _grad(fn, x):
    """grad_x of the scalar fn(x)."""
    x = x.detach().clone().requires_grad_(True)
    return ref_grad(fn(x), x)[0]


def _target_logit(params, target, train=False):
    return lambda v: _logits(params, v, train).gather(1, target[:, None]).sum()


def _saliency(params, x, target, train=False):
    return _grad(_target_logit(params, target, train), x)


# ---------------------------------------------------------------------------------------------- q1

@question("q1", points=2, timeout=10)
def saliency_is_the_gradient_of_the_target_logit(ns):
    """saliency(params, x, target) is d logit_target / dx, shape (N, 4, 4), in eval mode."""
    params, x, target = _params(), _images(), torch.tensor([0, 1, 2, 2, 1, 0])
    out = ns.saliency(params, x, target)
    expected = _saliency(params, x, target)
    prob = _grad(lambda v: _logits(params, v).softmax(-1).gather(1, target[:, None]).sum(), x)
    loss = _grad(lambda v: ref_cross_entropy(_logits(params, v), target, reduction="sum"), x)
    hint = hint_for(out, {
        "each image's saliency came out divided by the batch size: you backpropagated the MEAN of the target logits; "
        "backpropagate their sum (an image's logit depends on its own pixels only, so the sum's gradient is every "
        "image's own)": expected / len(x),
        "this is the gradient of the softmax probability: explain the logit (the probability saturates)": prob,
        "this is the gradient of the loss; the saliency is the gradient of the target class's logit": loss,
        "the model was in train mode (batch norm used the batch's statistics): call model.eval() first":
            _saliency(params, x, target, train=True),
        "keep the sign: return the gradient itself, not its absolute value": expected.abs(),
        "you took the gradient of the sum of all logits: select each row's target logit first":
            _grad(lambda v: _logits(params, v).sum(), x),
    }, default="build the model, call .eval(), let x require grad, backpropagate the target logits")
    assert_close(out, expected, atol=1e-9, hint=hint)


@question("q1", points=1, timeout=10)
def saliency_of_one_image_does_not_depend_on_the_batch(ns):
    """The saliency of image 0 alone equals its row in a batch of six (eval mode: no batch statistics)."""
    params, x, target = _params(2), _images(seed=3), torch.tensor([1, 0, 2, 1, 1, 2])
    alone, batch = ns.saliency(params, x[:1], target[:1]), ns.saliency(params, x, target)
    assert_close(alone, _saliency(params, x[:1], target[:1]), atol=1e-9,
                 hint="the saliency of a single image is wrong; the first test of q1 names the likely mistake")
    assert_close(batch[:1], alone, atol=1e-9, hint="an image's saliency changed with the batch around it: "
                 "batch norm in train mode mixes the batch; call model.eval()")


# ---------------------------------------------------------------------------------------------- q2

def _ig(params, x, target, baseline, steps, alphas=None, times_delta=True, train=False):
    alphas = [k / steps for k in range(1, steps + 1)] if alphas is None else alphas
    total = sum(_saliency(params, baseline + a * (x - baseline), target, train) for a in alphas) / steps
    return (x - baseline) * total if times_delta else total


@question("q2", points=2, timeout=10)
def integrated_gradients_is_the_right_riemann_sum(ns):
    """integrated_gradients(params, x, target, baseline, steps) = (x - x') * mean_k grad(x' + k/m (x - x'))."""
    params, x, target = _params(4), _images(seed=5), torch.tensor([2, 0, 1, 1, 0, 2])
    baseline = 0.3 * torch.ones(4, 4, dtype=F64)
    out = ns.integrated_gradients(params, x, target, baseline, 16)
    expected = _ig(params, x, target, baseline, 16)
    hint = hint_for(out, {
        "the baseline is not subtracted: multiply by (x - baseline), not by x":
            x * _ig(params, x, target, baseline, 16, times_delta=False),
        "the path average of the gradient is not multiplied by (x - baseline)":
            _ig(params, x, target, baseline, 16, times_delta=False),
        "that is the left Riemann sum (k = 0..m-1); use the right one, alpha_k = k/m for k = 1..m":
            _ig(params, x, target, baseline, 16, alphas=[k / 16 for k in range(16)]),
        "you summed the m gradients: average them (divide by m)": 16 * expected,
        "the path starts at 0, not at the baseline: x' + alpha (x - x')":
            (x - baseline) * _ig(params, x, target, 0 * baseline, 16, times_delta=False),
        "the model was in train mode (batch norm used the batch's statistics): call model.eval() first":
            _ig(params, x, target, baseline, 16, train=True),
    }, default="(x - x') times the average of the gradients at x' + (k/m)(x - x'), k = 1..m")
    assert_close(out, expected, atol=1e-9, hint=hint)


@question("q2", points=1, timeout=10)
def integrated_gradients_is_complete(ns):
    """With 300 steps the attributions of each image sum to logit(x) - logit(baseline) within 0.02."""
    params, x, target = _params(6), _images(n=3, seed=7), torch.tensor([0, 1, 2])
    baseline = torch.zeros(4, 4, dtype=F64)
    out = ns.integrated_gradients(params, x, target, baseline, 300)
    gap = (_logits(params, x) - _logits(params, baseline.expand_as(x))).gather(1, target[:, None])[:, 0]
    assert_close(torch.as_tensor(out).flatten(1).sum(1), gap, atol=0.02,
                 hint="completeness fails: check the baseline, the (x - x') factor and the average over steps")


# ---------------------------------------------------------------------------------------------- q3

def _occlude(x, top, left, size, value):
    out = x.clone()
    out[:, top:top + size, left:left + size] = value
    return out


@question("q3", points=1, timeout=10)
def occlude_hides_one_patch(ns):
    """occlude(x, top, left, size, value) returns a copy with rows top.. and columns left.. of the patch set."""
    x = _images(n=2, seed=8)
    for top, left, size in ((0, 0, 2), (1, 2, 2), (3, 1, 1)):
        out = ns.occlude(x, top, left, size, -1.0)
        hint = hint_for(out, {"rows and columns are swapped: the patch starts at row top, column left":
                              _occlude(x, left, top, size, -1.0)},
                        default="set the size x size patch whose top-left corner is (top, left) to value, in "
                                "every image, on a copy")
        assert_close(out, _occlude(x, top, left, size, -1.0), atol=0, hint=hint)
        assert_inputs_unchanged(ns, "return a copy with the patch hidden (x.clone(), then set the patch); "
                                    "occlusion_drop needs the intact x after occluding it")


@question("q3", points=2, timeout=10)
def occlusion_drop_is_the_fall_of_the_target_logit(ns):
    """occlusion_drop(...) = logit_t(x) - logit_t(x with the patch hidden), shape (N,), in eval mode."""
    params, x, target = _params(9), _images(seed=10), torch.tensor([0, 2, 1, 0, 2, 1])
    out = ns.occlusion_drop(params, x, target, 1, 1, 2, 0.0)
    pick = lambda logits: logits.gather(1, target[:, None])[:, 0]
    full, hidden = pick(_logits(params, x)), pick(_logits(params, _occlude(x, 1, 1, 2, 0.0)))
    train = pick(_logits(params, x, True)) - pick(_logits(params, _occlude(x, 1, 1, 2, 0.0), True))
    hint = hint_for(out, {
        "the sign is reversed: a patch the model needs should give a positive drop, logit(x) - logit(occluded)":
            hidden - full,
        "the model was in train mode (batch norm used the batch's statistics): call model.eval() first": train,
    }, default="the target logit of the intact images minus that of the occluded ones")
    if matches(out, torch.zeros_like(full)):
        hint = "the drop is 0 for every image: the intact and the occluded images gave the same logits"
        try:
            ns.occlude(x, 1, 1, 2, 0.0)
        except Exception:  # noqa: BLE001  (occlude unwritten or broken: the hint stays general)
            pass
        if changed_inputs(ns):
            hint += "; your occlude changes x in place, so both passes saw the occluded images: occlude a copy"
    assert_close(out, full - hidden, atol=1e-9, hint=hint)


# ---------------------------------------------------------------------------------------------- q4

@question("q4", points=2, timeout=10)
def fgsm_steps_up_the_loss_by_eps_times_the_gradient_sign(ns):
    """fgsm(params, x, y, eps) = x + eps * sign(d CE(logits, y) / dx), in eval mode."""
    params, x, y = _params(11), _images(seed=12), torch.tensor([1, 1, 0, 2, 0, 2])
    out = ns.fgsm(params, x, y, 0.1)
    loss_grad = _grad(lambda v: ref_cross_entropy(_logits(params, v), y, reduction="sum"), x)
    train_grad = _grad(lambda v: ref_cross_entropy(_logits(params, v, True), y, reduction="sum"), x)
    expected = x + 0.1 * ref_sign(loss_grad)
    hint = hint_for(out, {
        "wrong sign: x - eps * sign(grad) lowers the loss and makes the prediction more confident":
            x - 0.1 * ref_sign(loss_grad),
        "take the sign of the gradient: every pixel moves by exactly eps": x + 0.1 * loss_grad,
        "use the gradient of the loss of the true label, not of its logit":
            x + 0.1 * ref_sign(_saliency(params, x, y)),
        "the model was in train mode (batch norm used the batch's statistics): call model.eval() first":
            x + 0.1 * ref_sign(train_grad),
    }, default="x + eps * sign of the gradient of cross_entropy(model(x), y) with respect to x")
    assert_close(out, expected, atol=1e-9, hint=hint)


@question("q4", points=1, timeout=10)
def fgsm_stays_in_the_ball_and_raises_the_loss(ns):
    """Every pixel moves by eps = 0.05 exactly, and the loss of every image rises."""
    params, x, y = _params(13), _images(seed=14), torch.tensor([0, 1, 2, 0, 1, 2])
    out = torch.as_tensor(ns.fgsm(params, x, y, 0.05))
    assert_close((out - x).abs(), torch.full_like(x, 0.05), atol=1e-12,
                 hint="each pixel should move by eps exactly: eps * sign(gradient)")
    before = ref_cross_entropy(_logits(params, x), y, reduction="none")
    after = ref_cross_entropy(_logits(params, out), y, reduction="none")
    assert bool((after > before).all()), "the loss fell for some image: step along +sign(gradient of the loss)"


# ---------------------------------------------------------------------------------------------- q5

def _ranks(v):
    r = torch.empty_like(v)
    r[v.argsort()] = torch.arange(1, len(v) + 1, dtype=v.dtype)
    return r


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm())


@question("q5", points=2, timeout=10)
def spearman_is_the_correlation_of_ranks(ns):
    """spearman(a, b) = Pearson correlation of the ranks, for three pairs of 1-D tensors without ties."""
    g = generator(15)
    for _ in range(3):
        a = torch.randn(12, generator=g, dtype=F64)
        b = a.exp() + 0.5 * torch.randn(12, generator=g, dtype=F64)
        out = ns.spearman(a, b)
        expected = _pearson(_ranks(a), _ranks(b))
        hint = hint_for(out, {
            "that is Pearson's correlation of the values; Spearman's correlates their ranks": _pearson(a, b),
            "argsort gives the order (which index comes first), not the ranks: argsort of the argsort, or "
            "scatter the positions": _pearson(a.argsort().to(F64), b.argsort().to(F64)),
        }, default="rank each tensor (1 = smallest), then take the Pearson correlation of the ranks")
        assert_close(out, expected, atol=1e-6, hint=hint)  # float32 ranks reach ~1e-7
