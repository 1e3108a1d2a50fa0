"""dlbook.activations equal torch's functions, and their derivatives equal autograd's (float64, 1e-12)."""

import pytest
import torch

from dlbook import activations as act

TORCH = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


@pytest.mark.parametrize("name", sorted(act.ACTIVATIONS))
def test_function_and_derivative_match_torch_autograd(name):
    f, df = act.ACTIVATIONS[name]
    a = (torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 6).requires_grad_()
    torch.testing.assert_close(f(a), TORCH[name](a), atol=1e-12, rtol=0)
    (grad,) = torch.autograd.grad(TORCH[name](a).sum(), a)
    torch.testing.assert_close(df(a.detach()), grad, atol=1e-12, rtol=0)


def test_sigmoid_does_not_overflow_for_large_inputs():
    a = torch.tensor([-1000.0, 1000.0])
    assert torch.equal(act.sigmoid(a), torch.tensor([0.0, 1.0]))


def test_derivative_bounds():
    a = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    assert act.sigmoid_grad(a).max().item() == pytest.approx(0.25)
    assert act.tanh_grad(a).max().item() == pytest.approx(1.0)


def test_bad_input_is_rejected():
    with pytest.raises(TypeError, match="torch.Tensor"):
        act.relu([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        act.sigmoid(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="unknown activation"):
        act.get("swish")


def test_autograd_through_the_stable_sigmoid_is_its_derivative_everywhere():
    """Also at 0 (where an abs() inside would give 0) and at +-1000 (where the naive form gives NaN)."""
    from dlbook.activations import sigmoid, sigmoid_grad

    a = torch.tensor([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sigmoid(a).sum(), a)
    assert torch.allclose(grad, sigmoid_grad(a.detach()), atol=1e-15, rtol=0)
    assert grad[3].item() == 0.25
