"""dlbook.init: the initialization scales equal torch.nn.init's, and signal_profile measures a network."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbook.init import init_linear_, init_std, signal_profile
from dlbook.mlp import MLP, layer_gradient_norms


def _empirical_std(draw, shape=(512, 384)):
    w = torch.empty(shape, dtype=torch.float64)
    torch.manual_seed(0)
    draw(w)
    return w.std().item()


def test_xavier_and_he_equal_torch_nn_init_to_1_percent():
    """Same fans, same variance: 2/(fan_in+fan_out) is xavier_normal_, 2/fan_in is kaiming_normal_(relu)."""
    fan_out, fan_in = 512, 384
    assert _empirical_std(nn.init.xavier_normal_) == pytest.approx(init_std("xavier", fan_in, fan_out), rel=0.01)
    he = _empirical_std(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))
    assert he == pytest.approx(init_std("he", fan_in), rel=0.01)


def test_torch_default_linear_init_has_variance_one_third_over_fan_in():
    """nn.Linear's default (kaiming_uniform_ with a = sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    layer = nn.Linear(400, 600)
    assert layer.weight.var().item() * 400 == pytest.approx(1 / 3, rel=0.02)
    assert layer.weight.abs().max().item() <= 1 / math.sqrt(400)
    assert init_std("torch_default", 400) == pytest.approx(math.sqrt(1 / 1200))


def test_init_linear_draws_every_layer_at_its_own_scale_with_zero_biases():
    model = MLP([300, 500, 200, 10])
    init_linear_(model, "he", generator=torch.Generator().manual_seed(0))
    for layer in model.linears:
        fan_in = layer.weight.shape[1]
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
        assert torch.all(layer.bias == 0)
    init_linear_(model, "torch_default", generator=torch.Generator().manual_seed(0))
    assert model.linears[0].weight.abs().max().item() <= 1 / math.sqrt(300)


def test_he_keeps_the_second_moment_of_relu_activations_through_depth():
    """The derivation's prediction: E[h^2] stays about 1 at every layer with He and ReLU (width 256)."""
    torch.manual_seed(0)
    model = init_linear_(MLP([64] + [256] * 12 + [10]), "he", generator=torch.Generator().manual_seed(1))
    x, y = torch.randn(1024, 64), torch.randint(0, 10, (1024,))
    rms = signal_profile(model, x, y, F.cross_entropy)["activation_rms"][:-1]
    assert all(0.7 < r < 1.4 for r in rms), rms


def test_signal_profile_gradients_equal_layer_gradient_norms():
    torch.manual_seed(0)
    model = MLP([64, 32, 32, 10], activation="tanh")
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    profile = signal_profile(model, x, y, F.cross_entropy)
    assert profile["grad_norm"] == pytest.approx(layer_gradient_norms(model, x, y, F.cross_entropy), rel=1e-6)
    assert len(profile["activation_std"]) == len(profile["activation_rms"]) == 3
    assert all(p.grad is None for p in model.parameters()), "gradients are cleared afterwards"
    hidden = torch.tanh(model.linears[0](x))
    assert profile["activation_std"][0] == pytest.approx(hidden.std().item(), rel=1e-6)


@pytest.mark.parametrize("args, match", [
    (("glorot", 10), "scheme must be one of"),
    (("he", 0), "fan_in must be a positive int"),
    (("xavier", 10, -1), "fan_out must be a positive int"),
    (("he", 10, 1, 0.0), "gain must be > 0"),
])
def test_bad_arguments_raise_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        init_std(*args)


def test_a_model_without_linear_layers_is_rejected():
    with pytest.raises(ValueError, match="no nn.Linear"):
        init_linear_(nn.ReLU(), "he")
