"""dlbook.interpret against Captum (float64), and the properties each method promises."""

import pytest
import torch
from torch import nn

from dlbook import interpret

captum_attr = pytest.importorskip("captum.attr")
captum_robust = pytest.importorskip("captum.robust")

DT = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mlp(d_in=6, d_hidden=8, n_classes=4, seed=0, dropout=0.0):
    """A small smooth (tanh) classifier in float64: its gradients are nowhere exactly zero."""
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, d_hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(d_hidden, n_classes)]
    return nn.Sequential(*layers).to(DT).eval()


def data(n=5, d=6, n_classes=4, seed=1):
    x = torch.randn(n, d, generator=gen(seed), dtype=DT)
    y = torch.randint(0, n_classes, (n,), generator=gen(seed + 1))
    return x, y


# ----------------------------------------------------------------------------- FGSM and PGD

def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_fgsm_equals_captum_fgsm_with_bounds():
    """fgsm = captum.robust.FGSM on the cross-entropy of the true label, clamped to [lo, hi], to 1e-12."""
    model, (x, y) = mlp(), data()
    assert _input_grad(model, x, y).abs().min() > 1e-6   # Captum leaves |grad| <= 1e-6 unmoved; we would not
    ref = captum_robust.FGSM(model, nn.CrossEntropyLoss(reduction="none"), lower_bound=-1.0, upper_bound=1.0)
    expected = ref.perturb(x, 0.3, y)
    got = interpret.fgsm(model, x, y, 0.3, lo=-1.0, hi=1.0)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert ((got - x).abs() > 0.29).any() and (got.abs() <= 1.0).all()


def test_fgsm_moves_every_coordinate_by_eps_along_the_gradient_sign():
    """Without bounds, x' - x = eps * sign(grad_x CE): the loss of the true label rises."""
    model, (x, y) = mlp(), data()
    got = interpret.fgsm(model, x, y, 0.05)
    torch.testing.assert_close(got - x, 0.05 * _input_grad(model, x, y).sign(), atol=1e-12, rtol=0)
    ce = nn.functional.cross_entropy
    assert ce(model(got), y) > ce(model(x), y)


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_pgd_without_random_start_equals_captum_pgd():
    """pgd(random_start=False) = captum.robust.PGD (Linf, same radius, step and bounds) after 7 steps."""
    model, (x, y) = mlp(), data()
    ref = captum_robust.PGD(model, nn.CrossEntropyLoss(reduction="none"), lower_bound=-1.5, upper_bound=1.5)
    expected = ref.perturb(x, radius=0.2, step_size=0.05, step_num=7, target=y, random_start=False, norm="Linf")
    got = interpret.pgd(model, x, y, 0.2, alpha=0.05, steps=7, random_start=False, lo=-1.5, hi=1.5)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_pgd_with_one_step_of_size_eps_equals_fgsm():
    """steps=1, alpha=eps, no random start: PGD is FGSM (with and without a valid range)."""
    model, (x, y) = mlp(), data()
    for box in ({}, {"lo": -0.5, "hi": 0.5}):
        torch.testing.assert_close(interpret.pgd(model, x, y, 0.1, alpha=0.1, steps=1, random_start=False, **box),
                                   interpret.fgsm(model, x, y, 0.1, **box), atol=0, rtol=0)


def test_pgd_stays_in_ball_and_range_and_its_random_start_follows_the_generator():
    """||x' - x||_inf <= eps and lo <= x' <= hi; the same generator seed gives the same result, another does not."""
    model, (x, y) = mlp(), data()
    x = x.clamp(-1, 1)
    lo = torch.full((6,), -1.0, dtype=DT)                       # a per-feature bound (broadcasts)
    kw = dict(alpha=0.05, steps=2, lo=lo, hi=1.0)              # small steps: the random start still shows
    a, b, c = (interpret.pgd(model, x, y, 0.3, generator=gen(s), **kw) for s in (5, 5, 6))
    assert (a - x).abs().max() <= 0.3 + 1e-12 and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_raises_the_loss_at_least_as_much_as_fgsm_on_a_linear_model():
    """For a linear binary model FGSM is the exact maximizer in the ball; PGD reaches the same loss."""
    torch.manual_seed(0)
    model = nn.Linear(6, 2).to(DT)
    x, _ = data()
    y = torch.zeros(5, dtype=torch.long)
    ce = nn.functional.cross_entropy
    loss_f = ce(model(interpret.fgsm(model, x, y, 0.2)), y, reduction="none")
    loss_p = ce(model(interpret.pgd(model, x, y, 0.2, steps=20, generator=gen(0))), y, reduction="none")
    torch.testing.assert_close(loss_p, loss_f, atol=1e-9, rtol=0)


def test_attacks_use_eval_mode_restore_the_mode_and_leave_parameter_grads_alone():
    """With dropout, the attack equals the attack on the eval-mode model; train mode comes back; no .grad."""
    model, (x, y) = mlp(dropout=0.5), data()
    expected = interpret.fgsm(model.eval(), x, y, 0.1)
    model.train()
    torch.manual_seed(123)
    assert torch.equal(interpret.fgsm(model, x, y, 0.1), expected)
    p = interpret.pgd(model, x, y, 0.1, steps=3, generator=gen(0))
    assert model.training and all(m.training for m in model.modules())
    assert all(q.grad is None for q in model.parameters())
    with torch.no_grad():                                       # works inside no_grad too
        assert torch.equal(interpret.pgd(model, x, y, 0.1, steps=3, generator=gen(0)), p)


def test_attack_arguments_are_checked():
    """eps < 0, alpha <= 0, steps < 1, labels out of range or of the wrong shape, lo > hi, integer x: clear errors."""
    model, (x, y) = mlp(), data()
    with pytest.raises(ValueError, match="eps"):
        interpret.fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="eps"):
        interpret.pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="steps"):
        interpret.pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="alpha"):
        interpret.pgd(model, x, y, 0.1, alpha=0.0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        interpret.fgsm(model, x, torch.full((5,), 4), 0.1)
    with pytest.raises(ValueError, match="shape"):
        interpret.fgsm(model, x, y[:3], 0.1)
    with pytest.raises(ValueError, match="lo"):
        interpret.fgsm(model, x, y, 0.1, lo=1.0, hi=0.0)
    with pytest.raises(TypeError, match="floating"):
        interpret.fgsm(model, x.long(), y, 0.1)
    with pytest.raises(TypeError, match="integer"):
        interpret.fgsm(model, x, y.double(), 0.1)
    with pytest.raises(TypeError, match="generator"):
        interpret.pgd(model, x, y, 0.1, generator=0)
