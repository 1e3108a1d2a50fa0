"""Tests of exercise set 01_sgd (chapter 1: mini-batch SGD and optimizers).

Questions and the learner's names they read:

* q1 ``minibatch_indices(n, batch_size, generator, drop_last=False)`` (4 points)
* q2 ``steps_per_epoch(n, batch_size, drop_last)`` and ``total_steps`` (3 points)
* q3 ``adam_update(w, g, m, v, t, lr, beta1, beta2, eps)`` (4 points)
* q4 ``adamw_update(w, g, m, v, t, lr, beta1, beta2, eps, weight_decay)`` (4 points)

Every reference comes from torch (``torch.randperm``, ``DataLoader``,
``torch.optim.Adam``, ``torch.optim.AdamW``), bound at import before any learner code runs, in
float64. When an answer is wrong, the tests try the usual mistakes and name
the one that matches.
"""

from __future__ import annotations

import math

import torch
from torch import randperm as ref_randperm
from torch.optim import Adam as RefAdam
from torch.optim import AdamW as RefAdamW
from torch.utils.data import DataLoader as RefDataLoader

from dlbook.grading import assert_close, assert_inputs_unchanged, question
from dlbook.grading.hints import generator, hint_for

F64 = torch.float64

# The first optimizer a process builds imports torch._dynamo (seconds, more on a busy machine): build one now, at
# import (checker() imports this module), so that it never counts against a test's time limit.
RefAdam([torch.nn.Parameter(torch.zeros(1, dtype=F64))], lr=0.1)


def _epoch(ns, n, b, seed=0, drop_last=False, calls=1):
    """Call the learner's minibatch_indices `calls` times on one generator; return lists of int lists."""
    g = generator(seed)
    out = []
    for _ in range(calls):
        batches = ns.minibatch_indices(n, b, g, drop_last=drop_last)
        assert isinstance(batches, (list, tuple)), f"minibatch_indices must return a list of index tensors, got {type(batches).__name__}"
        out.append([torch.as_tensor(idx).flatten().tolist() for idx in batches])
    return out


# ---------------------------------------------------------------------------------------------- q1


@question("q1", points=1, timeout=10)
def every_index_once_per_epoch(ns):
    """One epoch of n=10, b=4 has batches of 4, 4, 2 that together hold every index exactly once."""
    (epoch,) = _epoch(ns, 10, 4)
    sizes = [len(b) for b in epoch]
    assert sizes == [4, 4, 2], (f"batch sizes {sizes}, expected [4, 4, 2]: cut the permutation into consecutive "
                                "slices of batch_size, the last one shorter")
    flat = sorted(i for b in epoch for i in b)
    assert flat == list(range(10)), f"the batches hold {flat}; every index 0..9 must appear exactly once"


@question("q1", points=1, timeout=10)
def drop_last_drops_the_short_batch(ns):
    """With drop_last=True, n=10, b=4 gives two full batches and no short one."""
    (epoch,) = _epoch(ns, 10, 4, drop_last=True)
    sizes = [len(b) for b in epoch]
    assert sizes == [4, 4], f"batch sizes {sizes}, expected [4, 4]: drop_last drops only the final, shorter batch"
    (exact,) = _epoch(ns, 12, 4, drop_last=True)
    assert [len(b) for b in exact] == [4, 4, 4], "when batch_size divides n, drop_last must drop nothing"


@question("q1", points=1, timeout=10)
def reshuffles_every_epoch(ns):
    """Two calls on the same generator (two epochs) give two different orders."""
    first, second = _epoch(ns, 50, 8, seed=3, calls=2)
    assert first != second, ("both epochs came out in the same order: draw a fresh permutation from the "
                             "generator on every call, do not re-seed it")
    assert first != [list(range(i, min(i + 8, 50))) for i in range(0, 50, 8)], "the order 0, 1, 2, ... is not shuffled"


@question("q1", points=1, timeout=10)
def same_order_as_randperm(ns):
    """The order is torch.randperm(n, generator=generator), so a seed reproduces it exactly."""
    (epoch,) = _epoch(ns, 23, 5, seed=7)
    expected = ref_randperm(23, generator=generator(7)).tolist()
    got = [i for b in epoch for i in b]
    assert got == expected, ("the indices are not in the order of torch.randperm(n, generator=generator); "
                             "call it exactly once per epoch and slice its result")


# ---------------------------------------------------------------------------------------------- q2


@question("q2", points=2, timeout=10)
def steps_match_dataloader(ns):
    """steps_per_epoch(n, b, drop_last) equals len(DataLoader) for many n, b, with and without drop_last."""
    for n in (1, 7, 10, 32, 100, 1077):
        for b in (1, 3, 16, 32, 256, 2000):
            for drop_last in (False, True):
                expected = len(RefDataLoader(range(n), batch_size=b, drop_last=drop_last))
                got = ns.steps_per_epoch(n, b, drop_last)
                if got != expected:
                    if drop_last and got == math.ceil(n / b):
                        hint = "with drop_last the short batch is dropped: round down"
                    elif not drop_last and got == n // b:
                        hint = "without drop_last the last, shorter batch still counts: round up"
                    else:
                        hint = "ceil(n / b) without drop_last, floor(n / b) with it"
                    raise AssertionError(f"steps_per_epoch({n}, {b}, drop_last={drop_last}) = {got}, "
                                         f"expected {expected}: {hint}")


@question("q2", points=1, timeout=10)
def total_steps_of_the_digits_run(ns):
    """total_steps: 8 epochs of 1,077 samples with batch 16, keeping the short batch."""
    expected = 8 * len(RefDataLoader(range(1077), batch_size=16))
    got = ns.total_steps
    assert got is not Ellipsis, "set total_steps to a number"
    assert int(got) == expected, (f"total_steps = {got}, expected {expected}"
                                  + (": 1077 / 16 is not whole, so each epoch has one more, shorter batch"
                                     if int(got) == 8 * (1077 // 16) else ""))


# ---------------------------------------------------------------------------------------------- q3


def _torch_adam(w0, grads, lr, betas, eps, optimizer=RefAdam, **options):
    """Weights after applying torch.optim.Adam (or ``optimizer``, with ``options``) to the given gradient sequence."""
    w = w0.clone().requires_grad_()
    opt = optimizer([w], lr=lr, betas=betas, eps=eps, **options)
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out


def _grads(steps=40, seed=0):
    g = generator(seed)
    return [torch.randn(3, 4, generator=g, dtype=F64) * (1 + k % 3) for k in range(steps)]


def _run_learner(ns, w0, grads, lr, betas, eps):
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    out = []
    for t, g in enumerate(grads, start=1):
        result = ns.adam_update(w, g, m, v, t, lr, betas[0], betas[1], eps)
        assert isinstance(result, tuple) and len(result) == 3, "adam_update must return a tuple (w, m, v)"
        w, m, v = result
        out.append(torch.as_tensor(w).detach().to(F64))
    return out


@question("q3", points=1, timeout=10)
def first_step_is_lr_times_sign(ns):
    """At t=1 the bias-corrected step is lr * sign(g) (up to eps): each weight moves by lr."""
    w0 = torch.zeros(3, 4, dtype=F64)
    g = _grads(1)[0]
    (w1,) = _run_learner(ns, w0, [g], 0.1, (0.9, 0.999), 1e-8)
    no_correction = -0.1 * (0.1 * g) / ((0.001 * g * g).sqrt() + 1e-8)
    if torch.allclose(w1, no_correction, atol=1e-9):
        hint = "you skipped the bias correction: divide m by 1 - beta1**t and v by 1 - beta2**t"
    else:
        hint = "at t = 1, m_hat = g and v_hat = g**2, so the step is -lr * g / (|g| + eps)"
    assert_close(w1, -0.1 * g / (g.abs() + 1e-8), atol=1e-9, hint=hint)


@question("q3", points=2, timeout=10)
def forty_steps_match_torch_adam(ns):
    """40 steps of adam_update follow torch.optim.Adam's weights to 1e-10 (float64)."""
    w0 = torch.randn(3, 4, generator=generator(1), dtype=F64)
    grads = _grads(40)
    for betas in ((0.9, 0.999), (0.8, 0.99)):
        ours = _run_learner(ns, w0, grads, 0.01, betas, 1e-8)
        expected = _torch_adam(w0, grads, 0.01, betas, 1e-8)
        assert_close(ours[-1], expected[-1], atol=1e-10,
                     hint=f"with betas={betas}: m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g**2, "
                          "w - lr * m_hat / (sqrt(v_hat) + eps)")


@question("q3", points=1, timeout=10)
def inputs_are_not_modified(ns):
    """adam_update returns the new (w, m, v) from a mid-run state and leaves the caller's w, m and v unchanged."""
    w, g = torch.ones(3, dtype=F64), torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    m, v = torch.full((3,), 0.5, dtype=F64), torch.full((3,), 0.25, dtype=F64)
    result = ns.adam_update(w, g, m, v, 3, 0.1, 0.9, 0.999, 1e-8)
    assert isinstance(result, tuple) and len(result) == 3, "adam_update must return a tuple (w, m, v)"
    m_new, v_new = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    w_new = w - 0.1 * (m_new / (1 - 0.9 ** 3)) / ((v_new / (1 - 0.999 ** 3)).sqrt() + 1e-8)
    for name, mine, expected in zip("wmv", result, (w_new, m_new, v_new)):
        assert_close(mine, expected, atol=1e-10, hint=f"the new {name} at step t = 3, from m = 0.5 and v = 0.25")
    assert_inputs_unchanged(ns, "compute new tensors (m = beta1 * m + ...) instead of m.mul_(...)")


# ---------------------------------------------------------------------------------------------- q4


def _adamw_by_formula(w0, grads, lr, betas, eps, wd, correct=(True, True), decay="decoupled", decay_lr=True):
    """Weights after each step of Adam(W) written out, with the usual mistakes as switches (float64).

    correct: bias-correct (m, v); decay: "decoupled" (AdamW), "l2" (added to the gradient: Adam's weight_decay)
    or None; decay_lr: the decoupled decay is multiplied by lr (as in torch.optim.AdamW).
    """
    (b1, b2), w = betas, w0.clone()
    m, v, out = torch.zeros_like(w0), torch.zeros_like(w0), []
    for t, g in enumerate(grads, start=1):
        if decay == "l2":
            g = g + wd * w
        elif decay == "decoupled":
            w = w * (1 - (lr if decay_lr else 1.0) * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t) if correct[0] else m
        v_hat = v / (1 - b2 ** t) if correct[1] else v
        w = w - lr * m_hat / (v_hat.sqrt() + eps)
        out.append(w.clone())
    return out


def _run_adamw(ns, w0, grads, lr, betas, eps, wd):
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    out = []
    for t, g in enumerate(grads, start=1):
        result = ns.adamw_update(w, g, m, v, t, lr, betas[0], betas[1], eps, wd)
        assert isinstance(result, tuple) and len(result) == 3, "adamw_update must return a tuple (w, m, v)"
        w, m, v = (torch.as_tensor(r).detach().to(F64) for r in result)
        out.append(w)
    return out


def _adamw_hint(mine, w0, grads, lr, betas, eps, wd, default):
    """Name the AdamW mistake whose trajectory the learner's weights follow (compared step by step)."""
    mistake = lambda **kw: torch.stack(_adamw_by_formula(w0, grads, lr, betas, eps, wd, **kw))  # noqa: E731
    first = (1 - betas[0]) / math.sqrt(1 - betas[1])
    return hint_for(torch.stack(mine), {
        f"you skipped the bias correction: m and v start at 0, so the first step comes out (1 - beta1) / "
        f"sqrt(1 - beta2) = {first:.3g} times Adam's; divide m by 1 - beta1**t and v by 1 - beta2**t":
            mistake(correct=(False, False)),
        f"you corrected m but not v: the first step comes out 1 / sqrt(1 - beta2) = {1 / math.sqrt(1 - betas[1]):.3g} "
        "times too large; divide v by 1 - beta2**t too": mistake(correct=(True, False)),
        "that is Adam with an L2 term (g + weight_decay * w, what torch.optim.Adam's weight_decay does): AdamW "
        "decouples the decay, w <- w - lr * weight_decay * w, outside the division by sqrt(v_hat)": mistake(decay="l2"),
        "the decay step is lr * weight_decay * w: you left out the learning rate": mistake(decay_lr=False),
        "the weights are not decayed: shrink w by the factor (1 - lr * weight_decay) at every step":
            mistake(decay=None),
    }, default)


@question("q4", points=1, timeout=10)
def adamw_first_step_is_decay_plus_lr_times_sign(ns):
    """At t=1, AdamW gives w * (1 - lr * weight_decay) - lr * g / (|g| + eps): decay, then a step of lr per weight."""
    w0 = torch.randn(3, 4, generator=generator(20), dtype=F64)
    grads = [_grads(1, seed=21)[0]]
    (w1,) = _run_adamw(ns, w0, grads, 0.1, (0.9, 0.999), 1e-8, 0.1)
    expected = w0 * (1 - 0.1 * 0.1) - 0.1 * grads[0] / (grads[0].abs() + 1e-8)
    assert_close(w1, expected, atol=1e-10, hint=_adamw_hint([w1], w0, grads, 0.1, (0.9, 0.999), 1e-8, 0.1,
                 "at t = 1, m_hat = g and v_hat = g**2: w * (1 - lr * weight_decay) - lr * g / (|g| + eps)"))


@question("q4", points=2, timeout=10)
def adamw_matches_torch_adamw(ns):
    """12 steps of adamw_update follow torch.optim.AdamW's weights at every step to 1e-10 (float64)."""
    w0 = torch.randn(3, 4, generator=generator(22), dtype=F64)
    grads = _grads(12, seed=23)
    for lr, betas, wd in ((0.01, (0.9, 0.999), 0.1), (0.05, (0.8, 0.99), 0.5)):
        ours = _run_adamw(ns, w0, grads, lr, betas, 1e-8, wd)
        expected = _torch_adam(w0, grads, lr, betas, 1e-8, RefAdamW, weight_decay=wd)
        assert_close(torch.stack(ours), torch.stack(expected), atol=1e-10, hint=_adamw_hint(
            ours, w0, grads, lr, betas, 1e-8, wd,
            f"with lr={lr}, betas={betas}, weight_decay={wd}: w <- w * (1 - lr * wd), then Adam's bias-corrected step"))


@question("q4", points=1, timeout=10)
def adamw_decays_weights_without_a_gradient(ns):
    """With zero gradients AdamW only shrinks w, by (1 - lr * weight_decay) per step; Adam's L2 term would not."""
    w0 = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.25, 1.0]], dtype=F64)
    grads = [torch.zeros_like(w0)] * 5
    ours = _run_adamw(ns, w0, grads, 0.1, (0.9, 0.999), 1e-8, 0.2)
    expected = torch.stack([w0 * (1 - 0.1 * 0.2) ** k for k in range(1, 6)])
    assert_close(torch.stack(ours), expected, atol=1e-12, hint=_adamw_hint(
        ours, w0, grads, 0.1, (0.9, 0.999), 1e-8, 0.2,
        "the gradient is 0, so m = v = 0 and Adam's step is 0: only the decay w <- w * (1 - lr * wd) is left"))
