"""Tests of exercise set 02_normalization (chapter 2: normalization).

Questions and the learner's names they read:

* q1 ``batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)`` (4 points)
* q2 ``reduction_axes`` (a dict) and ``set_size(method, N, C, H, W, groups)`` (3 points)
* q3 ``group_norm(x, num_groups, gamma, beta, eps)`` (3 points)
* q4 ``batch_norm_of_one(x, gamma, beta, eps)`` and ``bn2d_batch_of_one_is`` (2 points)
* q5 ``batch_renorm(x, gamma, beta, running_mean, running_var, r_max, d_max, eps)`` (4 points)

Every reference result comes from torch (q5's from ``dlbook.norm.BatchRenorm1d``),
bound at import (before any learner code runs), in float64. When an answer is wrong, the tests try the usual
mistakes and name the one that matches.
"""

from __future__ import annotations

import torch
from torch.nn.functional import batch_norm as ref_batch_norm
from torch.nn.functional import group_norm as ref_group_norm
from torch.nn.functional import instance_norm as ref_instance_norm
from torch.nn.functional import layer_norm as ref_layer_norm

from dlbook.grading import NotAttempted, assert_close, assert_inputs_unchanged, probes, question
from dlbook.grading.hints import generator
from dlbook.grading.hints import hint_for
from dlbook.norm import BatchRenorm1d as RefBatchRenorm1d

F64 = torch.float64


def _standardize(x, dims, eps, unbiased=False):
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=unbiased, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _bn_inputs(seed: int, shape=(6, 4)):
    g = generator(seed)
    C = shape[1]
    x = 2.0 * torch.randn(*shape, generator=g, dtype=F64) + 1.0
    gamma = torch.rand(C, generator=g, dtype=F64) + 0.5
    beta = torch.randn(C, generator=g, dtype=F64)
    running_mean = torch.randn(C, generator=g, dtype=F64)
    running_var = torch.rand(C, generator=g, dtype=F64) + 0.5
    return x, gamma, beta, running_mean, running_var


def _call_bn(ns, x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    result = ns.batch_norm(x.clone(), gamma.clone(), beta.clone(), rm.clone(), rv.clone(), training, momentum, eps)
    assert isinstance(result, tuple) and len(result) == 3, (
        "batch_norm must return a tuple (y, new_running_mean, new_running_var)")
    return result


# ---------------------------------------------------------------------------------------------- q1


@question("q1", points=2, timeout=10)
def batch_norm_training_output_matches_torch(ns):
    """In training mode, y equals F.batch_norm on (N, C) and (N, C, L) inputs."""
    for seed, shape in ((0, (6, 4)), (1, (5, 3, 7))):
        x, gamma, beta, rm, rv = _bn_inputs(seed, shape)
        y, _, _ = _call_bn(ns, x, gamma, beta, rm, rv, True)
        expected = ref_batch_norm(x, rm.clone(), rv.clone(), gamma, beta, training=True, momentum=0.1, eps=1e-5)
        dims = (0,) + tuple(range(2, x.dim()))
        shape_c = (1, -1) + (1,) * (x.dim() - 2)
        assert_close(y, expected, atol=1e-6, hint=hint_for(y, {
            "you normalized with the unbiased variance (divide by |S| - 1); normalization uses the population one":
                _standardize(x, dims, 1e-5, unbiased=True) * gamma.view(shape_c) + beta.view(shape_c),
            "you used the running statistics: in training mode batch norm uses the batch's own mean and variance":
                (x - rm.view(shape_c)) / torch.sqrt(rv.view(shape_c) + 1e-5) * gamma.view(shape_c) + beta.view(shape_c),
            "the statistics must be per channel, over the batch (and length) axes, not over the features of each example":
                _standardize(x, tuple(range(1, x.dim())), 1e-5) * gamma.view(shape_c) + beta.view(shape_c),
            "did you forget gamma and beta?": _standardize(x, dims, 1e-5),
        }, "y = gamma * (x - mean) / sqrt(var + eps) + beta, mean and population variance per channel over axes "
           "(0, 2, ...)"))


@question("q1", points=1, timeout=10)
def batch_norm_updates_running_statistics_like_torch(ns):
    """In training mode, the returned running mean and variance equal torch's updated buffers."""
    for seed, shape, momentum in ((2, (6, 4), 0.1), (3, (5, 3, 7), 0.3)):
        x, gamma, beta, rm, rv = _bn_inputs(seed, shape)
        _, new_rm, new_rv = _call_bn(ns, x, gamma, beta, rm, rv, True, momentum)
        ref_rm, ref_rv = rm.clone(), rv.clone()
        ref_batch_norm(x, ref_rm, ref_rv, gamma, beta, training=True, momentum=momentum, eps=1e-5)
        dims = (0,) + tuple(range(2, x.dim()))
        mean = x.mean(dim=dims)
        assert_close(new_rm, ref_rm, atol=1e-6, hint=hint_for(new_rm, {
            "momentum is the weight of the NEW batch: (1 - m) * running + m * batch_mean":
                momentum * rm + (1 - momentum) * mean,
        }, "running_mean <- (1 - momentum) * running_mean + momentum * batch_mean"))
        assert_close(new_rv, ref_rv, atol=1e-6, hint=hint_for(new_rv, {
            "the running variance stores the UNBIASED batch variance (divide by |S| - 1), as torch does":
                (1 - momentum) * rv + momentum * x.var(dim=dims, unbiased=False),
            "momentum is the weight of the NEW batch: (1 - m) * running + m * batch_var":
                momentum * rv + (1 - momentum) * x.var(dim=dims, unbiased=True),
        }, "running_var <- (1 - momentum) * running_var + momentum * unbiased batch variance"))
        assert_inputs_unchanged(ns, "return the new running statistics as new tensors (running_mean * (1 - m) + ...), "
                                    "as the question asks, instead of updating them with mul_ / add_")


@question("q1", points=1, timeout=10)
def batch_norm_eval_mode_uses_running_statistics(ns):
    """In eval mode, y uses the running statistics (F.batch_norm with training=False), which come back unchanged."""
    x, gamma, beta, rm, rv = _bn_inputs(4, (3, 5))
    y, new_rm, new_rv = _call_bn(ns, x, gamma, beta, rm, rv, False)
    expected = ref_batch_norm(x, rm.clone(), rv.clone(), gamma, beta, training=False, eps=1e-5)
    assert_close(y, expected, atol=1e-6, hint=hint_for(y, {
        "in eval mode, normalize with running_mean and running_var, not with the batch's statistics":
            _standardize(x, (0,), 1e-5) * gamma + beta,
    }, "eval mode: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta"))
    assert_close(new_rm, rm, atol=0, hint="eval mode must not change the running mean")
    assert_close(new_rv, rv, atol=0, hint="eval mode must not change the running variance")


# ---------------------------------------------------------------------------------------------- q2


@question("q2", points=2, timeout=10)
def reduction_axes_reproduce_the_layers(ns):
    """Normalizing an (N, C, H, W) tensor over reduction_axes[m] gives batch, layer and instance norm."""
    axes = ns.reduction_axes
    assert isinstance(axes, dict), "reduction_axes must be a dict like {'batch': (...), 'layer': (...), 'instance': (...)}"
    x = 3.0 * torch.randn(4, 3, 5, 5, generator=generator(5), dtype=F64) + 2.0
    references = {
        "batch": ref_batch_norm(x, None, None, training=True, eps=1e-5),
        "layer": ref_layer_norm(x, x.shape[1:], eps=1e-5),
        "instance": ref_instance_norm(x, eps=1e-5),
    }
    if not axes or any(v is Ellipsis for v in axes.values()):
        raise NotAttempted("reduction_axes still has ... in it")
    for method, expected in references.items():
        assert method in axes, f"reduction_axes has no entry for {method!r}"
        dims = tuple(int(d) for d in axes[method])
        assert_close(_standardize(x, dims, 1e-5), expected, atol=1e-6,
                     hint=f"{method} norm: which axes does one statistic average over? (0 = N, 1 = C, 2 = H, 3 = W)")


@question("q2", points=1, timeout=10)
def set_size_counts_the_values_in_s(ns):
    """set_size(method, N, C, H, W, groups) is |S|: N*H*W, C*H*W, H*W and (C/groups)*H*W."""
    N, C, H, W = 8, 12, 5, 3
    expected = {("batch", 1): N * H * W, ("layer", 1): C * H * W, ("instance", 1): H * W,
                ("group", 4): (C // 4) * H * W, ("group", 1): C * H * W, ("group", 12): H * W}
    for (method, groups), size in expected.items():
        got = ns.set_size(method, N, C, H, W, groups)
        assert int(got) == size, (f"set_size({method!r}, N={N}, C={C}, H={H}, W={W}, groups={groups}) returned {got}, "
                                  f"expected {size}")


# ---------------------------------------------------------------------------------------------- q3


@question("q3", points=3, timeout=10)
def group_norm_matches_torch(ns):
    """group_norm(x, G, gamma, beta) equals F.group_norm for (N, C, H, W) and (N, C, L) inputs."""
    for seed, shape, groups in ((6, (3, 6, 4, 4), 3), (7, (2, 8, 5), 2), (8, (2, 4, 3, 3), 4)):
        g = generator(seed)
        x = 2.0 * torch.randn(*shape, generator=g, dtype=F64) - 1.0
        C = shape[1]
        gamma = torch.rand(C, generator=g, dtype=F64) + 0.5
        beta = torch.randn(C, generator=g, dtype=F64)
        out = ns.group_norm(x.clone(), groups, gamma.clone(), beta.clone(), 1e-5)
        expected = ref_group_norm(x, groups, gamma, beta, eps=1e-5)
        shape_c = (1, -1) + (1,) * (x.dim() - 2)
        spatial = tuple(range(2, x.dim()))
        assert_close(out, expected, atol=1e-6, hint=hint_for(out, {
            "that is instance norm (one channel per statistic): reshape to (N, G, C/G, ...) first":
                _standardize(x, spatial, 1e-5) * gamma.view(shape_c) + beta.view(shape_c),
            "that is layer norm (all channels at once): each of the G groups needs its own statistics":
                _standardize(x, tuple(range(1, x.dim())), 1e-5) * gamma.view(shape_c) + beta.view(shape_c),
            "did you forget gamma and beta? They are per channel, shape (C,)":
                ref_group_norm(x, groups, eps=1e-5),
        }, "reshape to (N, G, C/G * rest), normalize over the last axis, reshape back, then gamma and beta per channel"))


# ---------------------------------------------------------------------------------------------- q4


@question("q4", points=1, timeout=10)
def batch_norm_of_one_example_returns_beta(ns):
    """The batch-norm formula on a batch of one example (N=1, C) gives beta: every value equals its batch mean."""
    g = generator(9)
    x = torch.randn(1, 5, generator=g, dtype=F64)
    gamma = torch.rand(5, generator=g, dtype=F64) + 0.5
    beta = torch.randn(5, generator=g, dtype=F64)
    out = ns.batch_norm_of_one(x.clone(), gamma.clone(), beta.clone(), 1e-5)
    assert_close(out, beta.expand(1, 5), atol=1e-6, hint=hint_for(out, {
        "x - mean is 0 for a batch of one, whatever gamma: the output is beta": torch.zeros(1, 5, dtype=F64),
        "that is x itself: the mean over a batch of one IS x, so x - mean = 0": x,
    }, "with one example the batch mean equals x and the variance is 0: the normalized value is 0, the output beta"))


@question("q4", points=1, timeout=10)
def batchnorm2d_on_one_image_is_instance_norm(ns):
    """BatchNorm2d in training mode on one image (N=1) normalizes each channel over H x W: instance norm."""
    answer = ns.bn2d_batch_of_one_is
    assert isinstance(answer, str), "bn2d_batch_of_one_is must be one of the strings 'layer', 'instance', 'group', 'identity'"
    assert answer.strip().lower() == "instance", (
        f"{answer!r} is not it: with N = 1, the set S of channel c is the H x W values of that one image's channel c")


# ---------------------------------------------------------------------------------------------- q5


def _renorm_inputs(seed: int, shape, mean_shift, std_ratio):
    """x of `shape` and running statistics chosen so that r = sigma_B / sigma and d = (mu_B - mu) / sigma
    land near `std_ratio` and `mean_shift` per channel (sigma = sqrt(running_var + eps))."""
    g = generator(seed)
    C = shape[1]
    x = 2.0 * torch.randn(*shape, generator=g, dtype=F64) + 1.0
    gamma = torch.rand(C, generator=g, dtype=F64) + 0.5
    beta = torch.randn(C, generator=g, dtype=F64)
    dims = (0,) + tuple(range(2, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    running_std = (var + 1e-5).sqrt() / torch.as_tensor(std_ratio, dtype=F64)
    running_var = running_std ** 2 - 1e-5
    running_mean = mean - torch.as_tensor(mean_shift, dtype=F64) * running_std
    return x, gamma, beta, running_mean, running_var


def _ref_renorm(x, gamma, beta, rm, rv, r_max, d_max, eps=1e-5):
    """dlbook.norm.BatchRenorm1d in training mode on these statistics: (its output, the module)."""
    layer = RefBatchRenorm1d(x.shape[1], eps=eps, r_max=r_max, d_max=d_max, dtype=F64).train()
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
        layer.running_mean.copy_(rm)
        layer.running_var.copy_(rv)
    return layer(x), layer


def _renorm_by_formula(x, gamma, beta, rm, rv, r_max, d_max, eps=1e-5, clip_r=(True, True), clip_d=(True, True),
                       detach_r=True, detach_d=True, unbiased=False, invert_r=False, eps_in_std=True):
    """Batch renormalization written out, with the usual mistakes as switches (float64)."""
    dims = (0,) + tuple(range(2, x.dim()))
    shape_c = (1, -1) + (1,) * (x.dim() - 2)
    var, mean = torch.var_mean(x, dim=dims, unbiased=unbiased)
    std, running_std = (var + eps).sqrt() if eps_in_std else var.sqrt(), (rv + eps).sqrt()
    r, d = (running_std / std if invert_r else std / running_std), (mean - rm) / running_std
    r = torch.maximum(r, torch.full_like(r, 1 / r_max)) if clip_r[0] else r
    r = torch.minimum(r, torch.full_like(r, r_max)) if clip_r[1] else r
    d = torch.maximum(d, torch.full_like(d, -d_max)) if clip_d[0] else d
    d = torch.minimum(d, torch.full_like(d, d_max)) if clip_d[1] else d
    r, d = (r.detach() if detach_r else r), (d.detach() if detach_d else d)
    x_hat = (x - mean.view(shape_c)) / std.view(shape_c) * r.view(shape_c) + d.view(shape_c)
    return x_hat * gamma.view(shape_c) + beta.view(shape_c)


def _call_renorm(ns, x, gamma, beta, rm, rv, r_max, d_max):
    return ns.batch_renorm(x.clone(), gamma.clone(), beta.clone(), rm.clone(), rv.clone(), r_max, d_max, 1e-5)


@question("q5", points=1, timeout=10)
def batch_renorm_unclipped_normalizes_with_the_running_statistics(ns):
    """With limits that never bind, y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta, as in eval()."""
    x, gamma, beta, rm, rv = _renorm_inputs(10, (8, 4), [0.3, -1.2, 2.0, 0.0], [0.5, 1.0, 1.8, 3.0])
    y = _call_renorm(ns, x, gamma, beta, rm, rv, 1e6, 1e6)
    expected, _ = _ref_renorm(x, gamma, beta, rm, rv, 1e6, 1e6)
    assert_close(y, expected, atol=1e-10, hint=hint_for(y, {
        "that is plain batch norm: multiply x_hat by r = sigma_B / sigma and add d = (mu_B - mu) / sigma":
            _standardize(x, (0,), 1e-5) * gamma + beta,
        "r is sigma_B / sigma (batch over running), not its inverse":
            _renorm_by_formula(x, gamma, beta, rm, rv, 1e6, 1e6, invert_r=True),
        "normalize with the population variance (divide by |S|), as batch norm does":
            _renorm_by_formula(x, gamma, beta, rm, rv, 1e6, 1e6, unbiased=True),
    }, "unclipped, (x - mu_B) / sigma_B * r + d is exactly (x - mu) / sigma, with sigma = sqrt(running_var + eps)"))


@question("q5", points=2, timeout=10)
def batch_renorm_clips_r_and_d_like_the_library(ns):
    """r is clipped to [1/r_max, r_max], d to [-d_max, d_max]: y equals BatchRenorm1d's, on (N, C) and (N, C, L)."""
    for seed, shape in ((11, (8, 6)), (12, (4, 6, 5))):
        # per channel: r above r_max, r below 1/r_max, d above d_max, d below -d_max, both inside, both clipped
        x, gamma, beta, rm, rv = _renorm_inputs(seed, shape, [0.1, -0.2, 2.0, -3.0, 0.3, 1.5],
                                                [2.5, 0.2, 1.1, 0.9, 1.2, 0.3])
        y = _call_renorm(ns, x, gamma, beta, rm, rv, 1.5, 0.5)
        expected, _ = _ref_renorm(x, gamma, beta, rm, rv, 1.5, 0.5)
        mistake = lambda **kw: _renorm_by_formula(x, gamma, beta, rm, rv, 1.5, 0.5, **kw)  # noqa: E731
        assert_close(y, expected, atol=1e-10, hint=hint_for(y, {
            "r and d are not clipped: clip r to [1/r_max, r_max] and d to [-d_max, d_max]":
                mistake(clip_r=(False, False), clip_d=(False, False)),
            "r is clipped from above only: its lower limit is 1/r_max": mistake(clip_r=(False, True)),
            "d is clipped from above only: its lower limit is -d_max": mistake(clip_d=(False, True)),
            "r is not clipped: r = clip(sigma_B / sigma, 1/r_max, r_max)": mistake(clip_r=(False, False)),
            "d is not clipped: d = clip((mu_B - mu) / sigma, -d_max, d_max)": mistake(clip_d=(False, False)),
            "sigma_B is the population standard deviation (divide by |S|), sqrt(var + eps), as in batch norm":
                mistake(unbiased=True),
            "sigma_B includes eps: sigma_B = sqrt(var_B + eps), as sigma = sqrt(running_var + eps) does":
                mistake(eps_in_std=False),
        }, "r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max, d_max), "
           "y = gamma * ((x - mu_B) / sigma_B * r + d) + beta, statistics per channel over axes (0, 2, ...)"))


@question("q5", points=1, timeout=10)
def batch_renorm_has_no_gradient_through_r_and_d(ns):
    """The gradient with respect to x equals BatchRenorm1d's: r and d are constants for autograd."""
    x, gamma, beta, rm, rv = _renorm_inputs(13, (6, 4), [0.4, -0.8, 1.0, 0.0], [0.7, 1.3, 1.0, 2.0])
    weights = torch.randn(6, 4, generator=generator(14), dtype=F64)
    _, (dx,) = probes.grad(ns.batch_renorm, x.clone(), gamma.clone(), beta.clone(), rm.clone(), rv.clone(), 3.0, 5.0,
                           1e-5, wrt=(0,), grad_output=weights)
    assert dx is not None, "no gradient reached x: compute y from x with differentiable tensor operations"
    leaf = x.clone().requires_grad_()
    out, _ = _ref_renorm(leaf, gamma, beta, rm, rv, 3.0, 5.0)
    (expected,) = torch.autograd.grad(out, leaf, weights)

    def mistake(**kw):
        leaf = x.clone().requires_grad_()
        return torch.autograd.grad(_renorm_by_formula(leaf, gamma, beta, rm, rv, 3.0, 5.0, **kw), leaf, weights)[0]

    assert_close(dx, expected, atol=1e-10, hint=hint_for(dx, {
        "the gradient flows through r and d: compute them from detached statistics (under torch.no_grad() or with "
        ".detach()); with them differentiable the layer's gradient is that of (x - mu) / sigma, and the batch "
        "statistics no longer shape it": mistake(detach_r=False, detach_d=False),
        "the gradient flows through r: compute it from detached statistics (torch.no_grad() or .detach())":
            mistake(detach_r=False),
        "the gradient flows through d: compute it from detached statistics (torch.no_grad() or .detach())":
            mistake(detach_d=False),
    }, "the gradient must flow through mu_B and sigma_B in (x - mu_B) / sigma_B, but not through r and d"))
