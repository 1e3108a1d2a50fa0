"""Tests of dlbook.optim: each optimizer equals its torch.optim twin over hundreds of float64 steps,
the schedules equal torch's schedulers, and invalid hyperparameters raise clear errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, StepLR

from dlbook import optim

STEPS = 300
TOL = 1e-6


def problem():
    """Float64 softmax regression: parameters W (4, 3) and c (3,), data x (64, 4), labels y (64,)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    W = nn.Parameter(0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64))
    c = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    return [W, c], x, y


def set_gradients(params, x, y):
    """Write the cross-entropy gradient into .grad by hand (no autograd: keeps 300 steps fast)."""
    W, c = params
    p = torch.softmax(x @ W + c, dim=1)                       # (B, 3)
    d = (p - nn.functional.one_hot(y, 3)) / len(x)            # dLoss/dlogits, (B, 3)
    W.grad, c.grad = x.T @ d, d.sum(0)


def train(make_optimizer, steps=STEPS, groups=False):
    """Run `steps` mini-batch steps (a different batch of 16 each step); return the final parameters."""
    params, x, y = problem()
    if groups:  # two param groups with their own learning rates
        params = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.003}]
    opt = make_optimizer(params)
    tensors = [p for group in opt.param_groups for p in group["params"]]
    for step in range(steps):
        idx = torch.arange(16) + (step * 16) % 64
        set_gradients(tensors, x[idx], y[idx])
        opt.step()
    return torch.cat([p.detach().flatten() for p in tensors])


def assert_twins(ours, theirs, **kwargs):
    groups = kwargs.pop("groups", False)
    a = train(lambda p: ours(p, **kwargs), groups=groups)
    b = train(lambda p: theirs(p, **kwargs), groups=groups)
    assert not torch.equal(a, train(lambda p: theirs(p, **kwargs), steps=0, groups=groups)), "parameters never moved"
    torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.5, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=False),
    dict(lr=0.05, momentum=0.9, groups=True),
])
def test_sgd_equals_torch(kwargs):
    """dlbook.optim.SGD == torch.optim.SGD within 1e-6 after 300 float64 steps (momentum, Nesterov, decay)."""
    assert_twins(optim.SGD, torch.optim.SGD, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01),
    dict(lr=0.01, alpha=0.9, eps=1e-6),
    dict(lr=0.005, momentum=0.9),
    dict(lr=0.005, centered=True),
    dict(lr=0.003, centered=True, momentum=0.5, weight_decay=0.01),
    dict(lr=0.01, groups=True),
])
def test_rmsprop_equals_torch(kwargs):
    """dlbook.optim.RMSprop == torch.optim.RMSprop within 1e-6 after 300 float64 steps."""
    assert_twins(optim.RMSprop, torch.optim.RMSprop, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.05),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.01, betas=(0.0, 0.9)),
    dict(lr=0.01, groups=True),
])
def test_adam_equals_torch(kwargs):
    """dlbook.optim.Adam == torch.optim.Adam within 1e-6 after 300 float64 steps (L2 decay, amsgrad)."""
    assert_twins(optim.Adam, torch.optim.Adam, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, amsgrad=True),
    dict(lr=0.01, weight_decay=0.1, groups=True),
])
def test_adamw_equals_torch(kwargs):
    """dlbook.optim.AdamW == torch.optim.AdamW within 1e-6 after 300 float64 steps (decoupled decay)."""
    assert_twins(optim.AdamW, torch.optim.AdamW, **kwargs)


def test_adam_and_adamw_differ_when_decaying():
    """Coupled (Adam) and decoupled (AdamW) weight decay are different algorithms."""
    a = train(lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1))
    b = train(lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1))
    assert (a - b).abs().max() > 1e-3


def test_maximize_ascends():
    """maximize=True is gradient ascent: it equals torch's maximize for every optimizer."""
    for ours, theirs in [(optim.SGD, torch.optim.SGD), (optim.Adam, torch.optim.Adam),
                         (optim.RMSprop, torch.optim.RMSprop), (optim.AdamW, torch.optim.AdamW)]:
        a = train(lambda p: ours(p, lr=1e-3, maximize=True), steps=50)
        b = train(lambda p: theirs(p, lr=1e-3, maximize=True), steps=50)
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_defaults_match_torch():
    """Every constructor default equals torch.optim's (lr, betas, eps, weight_decay, ...)."""
    p = [nn.Parameter(torch.zeros(2))]
    for ours, theirs in [(optim.SGD, torch.optim.SGD), (optim.RMSprop, torch.optim.RMSprop),
                         (optim.Adam, torch.optim.Adam), (optim.AdamW, torch.optim.AdamW)]:
        mine, ref = ours(p).defaults, theirs(p).defaults
        for key, value in mine.items():
            assert ref[key] == (tuple(value) if isinstance(ref[key], tuple) else value), (ours.__name__, key)
    assert optim.RMSProp is optim.RMSprop


def test_closure_and_state_dict_round_trip():
    """step(closure) returns the closure's loss; a saved state_dict continues identically in a fresh optimizer."""
    params, x, y = problem()
    opt = optim.Adam(params, lr=0.01)

    def closure():
        set_gradients(params, x, y)
        return torch.tensor(1.5)

    for _ in range(5):
        loss = opt.step(closure)
    assert loss.item() == 1.5
    clone = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = optim.Adam(clone, lr=0.01)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))   # as after torch.save / torch.load
    opt.step(closure)
    set_gradients(clone, x, y)
    opt2.step()
    for a, b in zip(params, clone):
        assert torch.equal(a, b)


def test_parameters_without_gradient_are_left_alone():
    """A parameter whose .grad is None is skipped, as in torch."""
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    for cls in (optim.SGD, optim.RMSprop, optim.Adam, optim.AdamW):
        opt = cls([used, unused], lr=0.1, weight_decay=0.1)
        (used ** 2).sum().backward()
        opt.step()
        assert torch.equal(unused, torch.ones(2))
        used.grad = None


@pytest.mark.parametrize("make, match", [
    (lambda p: optim.SGD(p, lr=-0.1), "lr must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), r"momentum must be in \[0, 1\)"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening = 0"),
    (lambda p: optim.SGD(p, lr=0.1, dampening=1.5), r"dampening must be in \[0, 1\]"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), "weight_decay must be >= 0"),
    (lambda p: optim.RMSprop(p, alpha=1.0), r"alpha must be in \[0, 1\)"),
    (lambda p: optim.RMSprop(p, eps=-1e-8), "eps must be >= 0"),
    (lambda p: optim.RMSprop(p, momentum=1.2), "momentum"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=0.9), "betas must be a pair"),
    (lambda p: optim.Adam(p, eps=-1.0), "eps must be >= 0"),
    (lambda p: optim.AdamW(p, lr=-1e-3), "lr must be >= 0"),
    (lambda p: optim.AdamW(p, weight_decay=-0.01), "weight_decay must be >= 0"),
])
def test_invalid_hyperparameters_raise_value_error(make, match):
    """Out-of-range hyperparameters fail at construction with a message naming the valid range."""
    with pytest.raises(ValueError, match=match):
        make([nn.Parameter(torch.zeros(1))])


def test_non_numbers_raise_type_error():
    """A hyperparameter that is not a number (or is NaN) is a TypeError."""
    for bad in ("0.1", None, float("nan"), True):
        with pytest.raises(TypeError, match="lr must be a number"):
            optim.SGD([nn.Parameter(torch.zeros(1))], lr=bad)


def run_scheduler(make_scheduler, steps=30, lr=0.5):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_schedule_equals_steplr():
    """LambdaLR(StepSchedule(7, 0.5)) gives the learning rates of StepLR(7, 0.5)."""
    ours = run_scheduler(lambda o: LambdaLR(o, optim.StepSchedule(7, gamma=0.5)))
    ref = run_scheduler(lambda o: StepLR(o, step_size=7, gamma=0.5))
    assert ours == pytest.approx(ref, abs=1e-12)
    assert ours == pytest.approx(optim.schedule_values(optim.StepSchedule(7, 0.5), 30, lr=0.5))


def test_cosine_schedule_equals_cosine_annealing():
    """LambdaLR(CosineSchedule(T, eta_min/lr)) gives CosineAnnealingLR(T, eta_min)'s rates up to step T."""
    ours = run_scheduler(lambda o: LambdaLR(o, optim.CosineSchedule(25, min_factor=0.1)), steps=26)
    ref = run_scheduler(lambda o: CosineAnnealingLR(o, T_max=25, eta_min=0.05), steps=26)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert ours[-1] == pytest.approx(0.05)


def test_warmup_cosine_shape():
    """Warmup rises linearly to the base rate, then the cosine falls to min_factor and stays."""
    s = optim.WarmupCosine(warmup_steps=10, total_steps=110, min_factor=0.0)
    values = optim.schedule_values(s, 130)
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0) and values[10] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values[:10], values[1:10]))
    assert all(b <= a for a, b in zip(values[10:], values[11:]))
    assert values[60] == pytest.approx(0.5) and values[110] == pytest.approx(0.0) and values[-1] == 0.0
    assert "WarmupCosine(warmup_steps=10" in repr(s)


def test_schedules_survive_a_scheduler_state_dict():
    """A LambdaLR over a schedule object saves and restores (the object's fields are plain numbers)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LambdaLR(opt, optim.WarmupCosine(5, 50))
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = LambdaLR(opt2, optim.WarmupCosine(5, 50))
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7
    assert math.isclose(sched2.get_last_lr()[0], sched.get_last_lr()[0])


@pytest.mark.parametrize("make", [
    lambda: optim.StepSchedule(0), lambda: optim.StepSchedule(3, gamma=-1), lambda: optim.CosineSchedule(0),
    lambda: optim.CosineSchedule(10, min_factor=1.5), lambda: optim.WarmupCosine(10, 10),
    lambda: optim.WarmupCosine(-1, 10), lambda: optim.schedule_values(optim.CosineSchedule(3), 0),
])
def test_invalid_schedules_raise(make):
    """Schedules refuse non-positive lengths, warmup >= total and factors outside their range."""
    with pytest.raises(ValueError):
        make()
