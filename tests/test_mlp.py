"""dlbook.mlp: the manual recursion equals the nn.Module, and gradient norms are measured per layer."""

import pytest
import torch
import torch.nn.functional as F

from dlbook import activations as act
from dlbook.mlp import MLP, forward_manual, layer_gradient_norms


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_manual_forward_equals_module(activation):
    torch.manual_seed(0)
    model = MLP([5, 8, 8, 3], activation=activation).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    Ws = [l.weight for l in model.linears]
    bs = [l.bias for l in model.linears]
    torch.testing.assert_close(forward_manual(x, Ws, bs, act.get(activation)), model(x), atol=1e-12, rtol=0)


def test_structure_and_init_variances():
    model = MLP([100, 400, 10], activation="tanh", init="xavier")
    assert len(model.linears) == 2 and isinstance(model.net[1], torch.nn.Tanh)
    std = model.linears[0].weight.std().item()
    assert std == pytest.approx((2 / 500) ** 0.5, rel=0.05)
    kaiming = MLP([100, 400], init="kaiming").linears[0].weight.std().item()
    assert kaiming == pytest.approx((2 / 100) ** 0.5, rel=0.05)


def test_layer_gradient_norms_has_one_entry_per_layer_and_clears_grads():
    torch.manual_seed(0)
    model = MLP([4, 6, 6, 2])
    norms = layer_gradient_norms(model, torch.randn(8, 4), torch.randint(2, (8,)), F.cross_entropy)
    assert len(norms) == 3 and all(n > 0 for n in norms)
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="sizes"):
        MLP([5])
    with pytest.raises(ValueError, match="activation"):
        MLP([5, 2], activation="gelu")
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        MLP([5, 2])(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="one bias per weight"):
        forward_manual(torch.zeros(1, 2), [torch.zeros(2, 2)], [], torch.relu)
    with pytest.raises(ValueError, match="features"):
        forward_manual(torch.zeros(1, 3), [torch.zeros(2, 2)], [torch.zeros(2)], torch.relu)
