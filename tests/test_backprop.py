"""dlbook.backprop: the hand-written backward pass equals autograd; finite differences agree in float64."""

import pytest
import torch

from dlbook.backprop import mlp_backward, numerical_gradient, relative_error


def _params(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=g, dtype=torch.float64) / i ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [torch.randn(o, generator=g, dtype=torch.float64) * 0.1 for o in sizes[1:]]
    return ws, bs


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("sizes", [[5, 3], [6, 8, 4], [7, 9, 5, 3]])
def test_manual_backward_equals_autograd_to_1e_12(activation, sizes):
    ws, bs = _params(sizes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(11, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (11,), generator=g)
    loss, gw, gb = mlp_backward(x, y, ws, bs, activation)
    leaves = [p.clone().requires_grad_() for p in ws + bs]
    h = x
    act = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation]
    for i, (W, b) in enumerate(zip(leaves[:len(ws)], leaves[len(ws):])):
        h = h @ W.T + b
        h = act(h) if i < len(ws) - 1 else h
    ref_loss = torch.nn.functional.cross_entropy(h, y)
    ref = torch.autograd.grad(ref_loss, leaves)
    assert abs(loss.item() - ref_loss.item()) < 1e-12
    for mine, theirs in zip(gw + gb, ref):
        assert (mine - theirs).abs().max().item() < 1e-12


def test_finite_differences_agree_with_the_manual_gradient_in_float64():
    ws, bs = _params([4, 6, 3], seed=2)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    _, gw, _ = mlp_backward(x, y, ws, bs, "tanh")
    numeric = numerical_gradient(lambda W: mlp_backward(x, y, [W, ws[1]], bs, "tanh")[0], ws[0].clone())
    assert relative_error(gw[0], numeric) < 1e-8


def test_a_wrong_gradient_is_caught():
    """A classic bug (forgetting the 1/N of the mean) gives a relative error near 1, far above 1e-8."""
    f = lambda v: (v ** 2).mean()  # noqa: E731
    v = torch.arange(1.0, 9.0, dtype=torch.float64)
    wrong = 2 * v  # the gradient of the sum, not of the mean
    assert relative_error(wrong, numerical_gradient(f, v.clone())) > 0.5
    assert relative_error(2 * v / 8, numerical_gradient(f, v.clone())) < 1e-9


def test_bad_arguments_raise_clear_errors():
    ws, bs = _params([3, 2])
    x, y = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp_backward(x, y, ws, bs, "gelu")
    with pytest.raises(ValueError, match="one bias per weight"):
        mlp_backward(x, y, ws, [], "relu")
    with pytest.raises(ValueError, match="layer 0: input has 5 features"):
        mlp_backward(torch.zeros(4, 5, dtype=torch.float64), y, ws, bs, "relu")
    with pytest.raises(ValueError, match="one class id per row"):
        mlp_backward(x, y[:2], ws, bs, "relu")
    with pytest.raises(ValueError, match="eps must be > 0"):
        numerical_gradient(lambda t: t.sum(), x, eps=0)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(torch.zeros(2), torch.zeros(3))
