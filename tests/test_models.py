"""dlbook.models: the small norm-pluggable networks have the layers and shapes they promise."""

import pytest
import torch
from torch import nn

from dlbook import norm
from dlbook.models import ContrastNet, NormCNN, NormMLP, scale_init_


@pytest.mark.parametrize("kind,cls", [("batch", norm.BatchNorm1d), ("layer", norm.LayerNorm),
                                      ("group", norm.GroupNorm), ("rms", norm.RMSNorm)])
def test_norm_mlp_puts_the_named_norm_before_or_after_relu(kind, cls):
    """Linear -> norm -> ReLU for position='before', Linear -> ReLU -> norm for 'after'; logits (N, 10)."""
    for position, order in (("before", (nn.Linear, cls, nn.ReLU)), ("after", (nn.Linear, nn.ReLU, cls))):
        model = NormMLP(64, 10, hidden=(32, 16), norm=kind, position=position)
        layers = list(model.net)
        assert tuple(type(m) for m in layers[:3]) == order
        assert sum(isinstance(m, cls) for m in layers) == 2
        assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)  # images are flattened


def test_norm_mlp_weight_norm_reparametrizes_every_linear():
    """norm='weight' has no activation-norm layers, and every Linear's weight is g * v / ||v||."""
    model = NormMLP(norm="weight")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(hasattr(m, "parametrizations") for m in linears)
    assert model(torch.randn(4, 64)).shape == (4, 10)


def test_norm_mlp_rejects_bad_arguments():
    """Unknown position, norm or non-positive width raise ValueError."""
    with pytest.raises(ValueError, match="position"):
        NormMLP(position="middle")
    with pytest.raises(ValueError, match="kind must be one of"):
        NormMLP(norm="batchnorm")
    with pytest.raises(ValueError, match="positive ints"):
        NormMLP(hidden=(0,))


@pytest.mark.parametrize("kind", ["none", "batch", "layer", "instance", "group"])
def test_norm_cnn_shapes_and_norm_layers(kind):
    """NormCNN maps (N, 1, 8, 8) to (N, 10) with one norm layer per conv."""
    model = NormCNN(norm=kind, channels=(8, 16), groups=4)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (2, 2)]
    if kind != "none":
        assert sum(isinstance(m, (norm.BatchNorm2d, norm.GroupNorm)) for m in model.modules()) == 2
    assert model.head.in_features == 16 * 4 * 4          # flatten head: 16 channels of 4x4
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(3, 64))


def test_norm_cnn_mean_pool_and_other_sizes():
    """pool='mean' gives one feature per channel; image_size sets the flatten size (9 -> 9 -> 5 -> 3); bad pool raises."""
    assert NormCNN(channels=(8, 16), pool="mean").head.in_features == 16
    model = NormCNN(channels=(4, 8, 8), image_size=9)
    assert model.head.in_features == 8 * 3 * 3 and model(torch.randn(2, 1, 9, 9)).shape == (2, 10)
    with pytest.raises(ValueError, match="pool"):
        NormCNN(pool="max")


def test_contrast_net_instance_norm_ignores_per_image_contrast():
    """With instance norm the output is unchanged when each input image is scaled and shifted by its own constants."""
    torch.manual_seed(0)
    model = ContrastNet(norm="instance").double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    scale = torch.tensor([0.3, 1.0, 2.0, 5.0], dtype=torch.float64).view(4, 1, 1, 1)
    shift = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64).view(4, 1, 1, 1)
    # equal up to the eps in the variance (it matters a little for the small 0.3 scale)
    torch.testing.assert_close(model(scale * x + shift), model(x), atol=2e-3, rtol=0)
    assert model(x).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="one-channel"):
        model(torch.rand(4, 3, 8, 8))


def test_contrast_net_without_norm_does_not_ignore_contrast():
    """The same check fails without normalization: the invariance comes from the norm layer."""
    torch.manual_seed(0)
    model = ContrastNet(norm="none").double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert (model(3.0 * x + 1.0) - model(x)).abs().max() > 1e-2


def test_scale_init_multiplies_linear_and_conv_weights():
    """scale_init_ scales every Linear/Conv weight by the factor and refuses factor <= 0."""
    torch.manual_seed(0)
    model = NormCNN(norm="none")
    before = [m.weight.clone() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    scale_init_(model, 0.1)
    after = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for b, a in zip(before, after):
        torch.testing.assert_close(a, 0.1 * b)
    with pytest.raises(ValueError):
        scale_init_(model, 0.0)
