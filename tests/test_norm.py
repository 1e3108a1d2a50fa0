"""dlbook.norm against torch.nn: forward, backward, running statistics and eval mode, in float64 to 1e-6."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dlbook import norm

TOL = dict(atol=1e-6, rtol=0)
DT = torch.float64


def rand(*shape, seed=0, scale=3.0, shift=1.5):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=DT) + shift).requires_grad_(True)


def randomize_affine(a: nn.Module, b: nn.Module, seed=1):
    """Give both layers the same random gamma/beta, so the affine part is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight", "bias"):
            pa, pb = getattr(a, name, None), getattr(b, name, None)
            assert (pa is None) == (pb is None), f"{name}: one layer has it, the other not"
            if pa is not None:
                value = torch.randn(pa.shape, generator=g, dtype=DT)
                pa.copy_(value)
                pb.copy_(value)


def assert_same_forward_backward(mine: nn.Module, ref: nn.Module, x: torch.Tensor, seed=2):
    """Outputs, input gradients and parameter gradients agree for a random upstream gradient."""
    xa = x.detach().clone().requires_grad_(True)
    xb = x.detach().clone().requires_grad_(True)
    ya, yb = mine(xa), ref(xb)
    torch.testing.assert_close(ya, yb, **TOL)
    up = torch.randn(ya.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    (ya * up).sum().backward()
    (yb * up).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    for (na, pa), (nb, pb) in zip(sorted(mine.named_parameters()), sorted(ref.named_parameters())):
        assert na == nb
        torch.testing.assert_close(pa.grad, pb.grad, **TOL, msg=f"gradient of {na}")


def assert_same_buffers(mine: nn.Module, ref: nn.Module):
    da, db = dict(mine.named_buffers()), dict(ref.named_buffers())
    assert da.keys() == db.keys()
    for k in da:
        torch.testing.assert_close(da[k], db[k], **TOL, msg=f"buffer {k}")


# ----------------------------------------------------------------------------- batch norm

BN_CASES = [
    (norm.BatchNorm1d, nn.BatchNorm1d, (7, 5)),
    (norm.BatchNorm1d, nn.BatchNorm1d, (4, 3, 6)),
    (norm.BatchNorm2d, nn.BatchNorm2d, (3, 4, 5, 6)),
    (norm.BatchNorm2d, nn.BatchNorm2d, (2, 1, 3, 3)),
]


@pytest.mark.parametrize("mine_cls,ref_cls,shape", BN_CASES)
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_train_steps_then_eval_match_torch(mine_cls, ref_cls, shape, momentum, affine):
    """Three training steps (forward, backward, running stats, incl. momentum=None) and then eval match torch."""
    C = shape[1]
    mine = mine_cls(C, momentum=momentum, affine=affine, dtype=DT)
    ref = ref_cls(C, momentum=momentum, affine=affine, dtype=DT)
    randomize_affine(mine, ref)
    for step in range(3):
        assert_same_forward_backward(mine, ref, rand(*shape, seed=10 + step), seed=step)
        assert_same_buffers(mine, ref)
    assert int(mine.num_batches_tracked) == 3
    mine.eval(), ref.eval()
    assert_same_forward_backward(mine, ref, rand(*shape, seed=99))
    assert_same_buffers(mine, ref)  # eval does not touch the running statistics


@pytest.mark.parametrize("mine_cls,ref_cls,shape", BN_CASES[:3])
def test_batchnorm_without_running_stats_uses_batch_stats_in_eval(mine_cls, ref_cls, shape):
    """track_running_stats=False: no buffers, and eval() still normalizes with the batch's own statistics."""
    mine = mine_cls(shape[1], track_running_stats=False, dtype=DT).eval()
    ref = ref_cls(shape[1], track_running_stats=False, dtype=DT).eval()
    assert mine.running_mean is None and mine.running_var is None
    assert_same_forward_backward(mine, ref, rand(*shape, seed=3))


def test_batchnorm_state_dict_is_interchangeable_with_torch():
    """A state dict saved from torch's BatchNorm2d loads into ours, and eval outputs agree."""
    ref = nn.BatchNorm2d(3, dtype=DT)
    for s in range(2):
        ref(rand(4, 3, 2, 2, seed=s))
    mine = norm.BatchNorm2d(3, dtype=DT)
    mine.load_state_dict(ref.state_dict())
    x = rand(1, 3, 2, 2, seed=7)
    torch.testing.assert_close(mine.eval()(x), ref.eval()(x), **TOL)


def test_batchnorm_single_value_per_channel_in_training_raises():
    """Batch size 1 on (N, C) leaves one value per channel: no variance, so a clear ValueError (torch raises too)."""
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm.BatchNorm1d(4)(torch.randn(1, 4))
    assert norm.BatchNorm1d(4).eval()(torch.randn(1, 4)).shape == (1, 4)  # eval mode is fine


@pytest.mark.parametrize("layer,x,match", [
    (norm.BatchNorm1d(4), torch.randn(2, 4, 3, 3), "rank 2 or 3"),
    (norm.BatchNorm2d(4), torch.randn(2, 4), "rank 4"),
    (norm.BatchNorm1d(4), torch.randn(2, 5), "built for 4 channels"),
    (norm.BatchNorm2d(3), torch.randn(2, 4, 5, 5), "built for 3 channels"),
])
def test_batchnorm_wrong_rank_or_channels_raise(layer, x, match):
    """Wrong input rank and channel-count mismatch raise ValueErrors that name the expected shape."""
    with pytest.raises(ValueError, match=match):
        layer(x)


@pytest.mark.parametrize("kwargs", [dict(num_features=0), dict(num_features=3, momentum=1.5),
                                    dict(num_features=3, eps=-1.0)])
def test_batchnorm_bad_constructor_arguments_raise(kwargs):
    """Impossible constructor arguments fail at construction, not at the first forward."""
    with pytest.raises(ValueError):
        norm.BatchNorm2d(**kwargs)


# ----------------------------------------------------------------------------- layer norm

@pytest.mark.parametrize("shape,normalized", [((6, 5), 5), ((3, 4, 7), (7,)), ((2, 3, 4, 5), (3, 4, 5))])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
def test_layernorm_matches_torch_in_train_and_eval(shape, normalized, affine, bias):
    """LayerNorm equals torch's forward and backward, and train/eval make no difference."""
    mine = norm.LayerNorm(normalized, elementwise_affine=affine, bias=bias, dtype=DT)
    ref = nn.LayerNorm(normalized, elementwise_affine=affine, bias=bias, dtype=DT)
    randomize_affine(mine, ref)
    assert_same_forward_backward(mine, ref, rand(*shape, seed=4))
    x = rand(*shape, seed=5)
    torch.testing.assert_close(mine.eval()(x), ref.train()(x), **TOL)


def test_layernorm_wrong_trailing_shape_raises():
    """An input whose last axes are not normalized_shape raises a ValueError naming both."""
    with pytest.raises(ValueError, match=r"last 1 axes to be \(5,\)"):
        norm.LayerNorm(5)(torch.randn(3, 4))


# ----------------------------------------------------------------------------- instance norm

@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (4, 5, 6)])
@pytest.mark.parametrize("affine,track", [(False, False), (True, False), (True, True), (False, True)])
def test_instancenorm_matches_torch(shape, affine, track):
    """InstanceNorm2d (batched and unbatched) equals torch: forward, backward, running stats, eval."""
    C = shape[-3]
    mine = norm.InstanceNorm2d(C, affine=affine, track_running_stats=track, dtype=DT)
    ref = nn.InstanceNorm2d(C, affine=affine, track_running_stats=track, dtype=DT)
    randomize_affine(mine, ref)
    for step in range(2):
        assert_same_forward_backward(mine, ref, rand(*shape, seed=20 + step))
        assert_same_buffers(mine, ref)
    mine.eval(), ref.eval()
    assert_same_forward_backward(mine, ref, rand(*shape, seed=30))


@pytest.mark.parametrize("x,match", [(torch.randn(2, 3, 4), "built for 4"), (torch.randn(2, 4), "(N, C, H, W)"),
                                     (torch.randn(1, 3, 4, 4), "built for 4")])
def test_instancenorm_wrong_rank_or_channels_raise(x, match):
    """Rank other than 3/4 and a channel mismatch raise ValueError (even without affine, unlike torch's warning)."""
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        norm.InstanceNorm2d(4)(x)


# ----------------------------------------------------------------------------- group norm

@pytest.mark.parametrize("groups,shape", [(1, (3, 6, 4, 4)), (2, (3, 6, 4, 4)), (3, (2, 6, 5)),
                                          (6, (4, 6, 3, 2)), (4, (5, 8))])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_matches_torch(groups, shape, affine):
    """GroupNorm equals torch on ranks 2-4 for G = 1 (layer norm) to G = C (instance norm), train and eval."""
    mine = norm.GroupNorm(groups, shape[1], affine=affine, dtype=DT)
    ref = nn.GroupNorm(groups, shape[1], affine=affine, dtype=DT)
    randomize_affine(mine, ref)
    assert_same_forward_backward(mine, ref, rand(*shape, seed=6))
    x = rand(*shape, seed=8)
    torch.testing.assert_close(mine.eval()(x), ref.eval()(x), **TOL)


def test_groupnorm_group_count_must_divide_channels():
    """G that does not divide C is refused at construction, and the message lists the valid choices."""
    with pytest.raises(ValueError, match=r"does not divide num_channels=6.*\[1, 2, 3, 6\]"):
        norm.GroupNorm(4, 6)


@pytest.mark.parametrize("x,match", [(torch.randn(2, 5, 3), "built for 6"), (torch.randn(6), "(N, C, *)")])
def test_groupnorm_wrong_rank_or_channels_raise(x, match):
    """A 1-D input and a channel mismatch raise ValueError."""
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        norm.GroupNorm(3, 6)(x)


# ----------------------------------------------------------------------------- RMS norm

@pytest.mark.parametrize("shape,normalized,eps", [((4, 7), 7, 1e-6), ((2, 3, 5), (5,), None), ((2, 3, 4), (3, 4), 0.1)])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_matches_torch_or_formula(shape, normalized, eps, affine):
    """RMSNorm equals torch.nn.RMSNorm (torch >= 2.4), and always the formula x / sqrt(mean(x^2) + eps) * g."""
    mine = norm.RMSNorm(normalized, eps=eps, elementwise_affine=affine, dtype=DT)
    x = rand(*shape, seed=9)
    if hasattr(nn, "RMSNorm"):
        ref = nn.RMSNorm(normalized, eps=eps, elementwise_affine=affine, dtype=DT)
        randomize_affine(mine, ref)
        assert_same_forward_backward(mine, ref, x)
    k = len(mine.normalized_shape)
    e = torch.finfo(DT).eps if eps is None else eps
    formula = x / (x.pow(2).mean(dim=tuple(range(-k, 0)), keepdim=True) + e).sqrt()
    if affine:
        formula = formula * mine.weight
    torch.testing.assert_close(mine(x), formula, **TOL)


def test_rmsnorm_wrong_trailing_shape_raises():
    """RMSNorm refuses an input whose last axes differ from normalized_shape."""
    with pytest.raises(ValueError, match="RMSNorm expects"):
        norm.RMSNorm(8)(torch.randn(2, 7))


# ----------------------------------------------------------------------------- weight norm

@pytest.mark.parametrize("make,dim,shape", [
    (lambda: nn.Linear(5, 3, dtype=DT), 0, (4, 5)),
    (lambda: nn.Linear(5, 3, dtype=DT), 1, (4, 5)),
    (lambda: nn.Linear(5, 3, dtype=DT), None, (4, 5)),
    (lambda: nn.Conv2d(2, 4, 3, dtype=DT), 0, (2, 2, 6, 6)),
    (lambda: nn.Conv2d(2, 4, 3, dtype=DT), -1, (2, 2, 6, 6)),  # torch: -1 means the whole tensor
    (lambda: nn.Conv2d(2, 4, 3, dtype=DT), -3, (2, 2, 6, 6)),  # other negatives count from the end
])
def test_weight_norm_matches_torch_parametrization(make, dim, shape):
    """weight_norm gives torch's g and v, the same outputs, and the same gradients of g, v, bias and input."""
    torch.manual_seed(0)
    base = make()
    mine = norm.weight_norm(copy.deepcopy(base), dim=dim)
    ref = nn.utils.parametrizations.weight_norm(copy.deepcopy(base), dim=dim)
    torch.testing.assert_close(mine.weight, base.weight, **TOL)  # reparametrizing leaves w unchanged
    pm, pr = mine.parametrizations.weight, ref.parametrizations.weight
    torch.testing.assert_close(pm.original0, pr.original0, **TOL)   # g
    torch.testing.assert_close(pm.original1, pr.original1, **TOL)   # v
    with torch.no_grad():  # move g away from ||v|| so that g really matters
        for p in (pm.original0, pr.original0):
            p.mul_(torch.linspace(0.5, 2.0, p.numel(), dtype=DT).reshape(p.shape))
    assert_same_forward_backward(mine, ref, rand(*shape, seed=11))


def test_weight_norm_direction_and_length_are_separate():
    """After weight_norm, each row of w has norm g: scaling v changes nothing, scaling g scales w."""
    layer = norm.weight_norm(nn.Linear(4, 3, dtype=DT))
    g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    torch.testing.assert_close(layer.weight.norm(dim=1, keepdim=True), g, **TOL)
    w = layer.weight.detach().clone()
    with torch.no_grad():
        v.mul_(5.0)
    torch.testing.assert_close(layer.weight, w, **TOL)


def test_weight_norm_bad_arguments_raise():
    """A missing parameter name and an out-of-range dim raise ValueError."""
    with pytest.raises(ValueError, match="no tensor parameter named 'kernel'"):
        norm.weight_norm(nn.Linear(2, 2), name="kernel")
    with pytest.raises(ValueError, match="out of range"):
        norm.weight_norm(nn.Linear(2, 2), dim=2)


# ----------------------------------------------------------------------------- helpers

def test_normalize_gives_zero_mean_unit_variance_over_dims():
    """normalize() centres and scales each set S separately (population variance)."""
    x = rand(4, 3, 5, seed=12).detach()
    y = norm.normalize(x, dims=(0, 2), eps=0.0)
    torch.testing.assert_close(y.mean(dim=(0, 2)), torch.zeros(3, dtype=DT), **TOL)
    torch.testing.assert_close(y.var(dim=(0, 2), unbiased=False), torch.ones(3, dtype=DT), **TOL)


@pytest.mark.parametrize("kind,expected", [("batch", (0, 2, 3)), ("layer", (1, 2, 3)), ("instance", (2, 3)),
                                           ("group", (2, 3, 4))])
def test_reduction_dims(kind, expected):
    """The reduction axes of each method on (N, C, H, W)."""
    assert norm.reduction_dims(kind, 4) == expected


def test_reduction_dims_agree_with_layers():
    """Normalizing over reduction_dims reproduces BatchNorm2d (train) and InstanceNorm2d."""
    x = rand(3, 4, 5, 5, seed=13).detach()
    torch.testing.assert_close(norm.normalize(x, norm.reduction_dims("batch")), nn.BatchNorm2d(4, dtype=DT)(x), **TOL)
    torch.testing.assert_close(norm.normalize(x, norm.reduction_dims("instance")), nn.InstanceNorm2d(4)(x), **TOL)
    torch.testing.assert_close(norm.normalize(x, norm.reduction_dims("layer")),
                               nn.LayerNorm((4, 5, 5), elementwise_affine=False, dtype=DT)(x), **TOL)


@pytest.mark.parametrize("kind,groups,size", [("batch", 1, 5 * 4), ("layer", 1, 6 * 4), ("instance", 1, 4),
                                              ("group", 3, 2 * 4), ("group", 1, 6 * 4), ("group", 6, 4)])
def test_stat_set_mask_sizes(kind, groups, size):
    """The set S has N*H*W values for BN, C*H*W for LN, H*W for IN and (C/G)*H*W for GN."""
    mask = norm.stat_set_mask(kind, (5, 6, 2, 2), n=1, c=3, groups=groups)
    assert mask.sum() == size and mask.shape == (5, 6, 2, 2)


def test_stat_set_mask_group_contains_own_channel_and_rejects_bad_groups():
    """The group of channel 3 with 3 groups of 2 is channels 2-3 of the same example; G=4 of 6 is refused."""
    mask = norm.stat_set_mask("group", (2, 6, 1, 1), n=0, c=3, groups=3)
    assert np.flatnonzero(mask.reshape(2, 6)[0]).tolist() == [2, 3] and not mask[1].any()
    with pytest.raises(ValueError, match="divisor"):
        norm.stat_set_mask("group", (2, 6, 1, 1), groups=4)


def test_stat_set_mask_matches_groupnorm_statistics():
    """Normalizing each value with the mean/std of its mask's set equals GroupNorm: the mask is the real S."""
    x = rand(2, 6, 3, 3, seed=14).detach()
    ref = nn.GroupNorm(3, 6, affine=False, dtype=DT)(x)
    n, c = 1, 4
    s = x.numpy()[norm.stat_set_mask("group", x.shape, n=n, c=c, groups=3)]
    value = (x[n, c, 0, 0].item() - s.mean()) / np.sqrt(s.var() + 1e-5)
    assert abs(value - ref[n, c, 0, 0].item()) < 1e-6


@pytest.mark.parametrize("kind,cls", [("batch", norm.BatchNorm2d), ("layer", norm.GroupNorm),
                                      ("instance", norm.GroupNorm), ("group", norm.GroupNorm), ("none", nn.Identity)])
def test_make_norm2d_builds_the_named_layer(kind, cls):
    """make_norm2d returns the right layer; layer norm is GroupNorm(1, C), instance norm GroupNorm(C, C)."""
    layer = norm.make_norm2d(kind, 8, groups=4)
    assert isinstance(layer, cls)
    if kind == "layer":
        assert layer.num_groups == 1
    if kind == "instance":
        assert layer.num_groups == 8
    assert layer(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_make_norm_factories_reject_unknown_kinds():
    """Unknown names raise ValueError listing the known ones."""
    with pytest.raises(ValueError, match="kind must be one of"):
        norm.make_norm2d("batchnorm", 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        norm.make_norm1d("instance", 4)
    for kind, cls in (("batch", norm.BatchNorm1d), ("layer", norm.LayerNorm), ("rms", norm.RMSNorm),
                      ("group", norm.GroupNorm)):
        assert isinstance(norm.make_norm1d(kind, 4), cls)


# ----------------------------------------------------------------------------- random shapes

@pytest.mark.parametrize("seed", range(6))
def test_every_layer_matches_torch_on_a_random_shape(seed):
    """On a shape drawn at random (N 2-6, C 1-8, H and W 2-6), each layer equals its torch twin in train and eval."""
    g = torch.Generator().manual_seed(100 + seed)
    N, C, H, W = (int(torch.randint(lo, hi + 1, (1,), generator=g)) for lo, hi in ((2, 6), (1, 8), (2, 6), (2, 6)))
    divisors = [d for d in range(1, C + 1) if C % d == 0]
    G = divisors[int(torch.randint(len(divisors), (1,), generator=g))]
    x = rand(N, C, H, W, seed=200 + seed)
    pairs = [
        (norm.BatchNorm2d(C, dtype=DT), nn.BatchNorm2d(C, dtype=DT)),
        (norm.BatchNorm1d(C * H, dtype=DT), nn.BatchNorm1d(C * H, dtype=DT)),
        (norm.LayerNorm((H, W), dtype=DT), nn.LayerNorm((H, W), dtype=DT)),
        (norm.InstanceNorm2d(C, affine=True, track_running_stats=True, dtype=DT),
         nn.InstanceNorm2d(C, affine=True, track_running_stats=True, dtype=DT)),
        (norm.GroupNorm(G, C, dtype=DT), nn.GroupNorm(G, C, dtype=DT)),
    ]
    if hasattr(nn, "RMSNorm"):
        pairs.append((norm.RMSNorm((C, H, W), dtype=DT), nn.RMSNorm((C, H, W), dtype=DT)))
    for mine, ref in pairs:
        inp = x.reshape(N, C * H, W) if isinstance(mine, norm.BatchNorm1d) else x
        randomize_affine(mine, ref, seed=seed)
        assert_same_forward_backward(mine, ref, inp)           # training mode
        assert_same_buffers(mine, ref)
        mine.eval(), ref.eval()
        assert_same_forward_backward(mine, ref, inp * 0.5 + 1)  # eval mode, other data


# ----------------------------------------------------------------------------- batch renormalization

def test_batch_renorm_with_r_max_1_and_d_max_0_is_batch_norm():
    """Clipped to r = 1, d = 0, batch renorm is plain batch norm: outputs, running stats, eval."""
    torch.manual_seed(0)
    renorm, batch = norm.BatchRenorm1d(5, r_max=1.0, d_max=0.0, dtype=torch.float64), torch.nn.BatchNorm1d(5, dtype=torch.float64)
    for _ in range(3):
        x = 2 * torch.randn(8, 5, dtype=torch.float64) + 1
        assert torch.allclose(renorm(x), batch(x), atol=1e-12)
    assert torch.allclose(renorm.running_var, batch.running_var) and torch.allclose(renorm.running_mean, batch.running_mean)
    renorm.eval(), batch.eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(renorm(x), batch(x), atol=1e-12)


def test_batch_renorm_unclipped_trains_with_the_running_statistics_view():
    """With r and d inside their limits, x_hat = (x - mu_running) / sigma_running: what eval() computes."""
    torch.manual_seed(1)
    layer = norm.BatchRenorm1d(3, r_max=100.0, d_max=100.0, affine=False, dtype=torch.float64)
    layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64))
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(6, 3, dtype=torch.float64)
    expected = (x - mean) / torch.sqrt(var + layer.eps)
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_batch_renorm_passes_no_gradient_through_r_and_d():
    """r and d are constants: the gradient equals batch norm's times r (per channel)."""
    torch.manual_seed(2)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    renorm = norm.BatchRenorm1d(3, r_max=2.0, d_max=1.0, affine=False, dtype=torch.float64)
    renorm.running_var.fill_(9.0)
    g = torch.randn(6, 3, dtype=torch.float64)
    (grad_renorm,) = torch.autograd.grad((renorm(x) * g).sum(), x)
    (grad_batch,) = torch.autograd.grad((torch.nn.functional.batch_norm(x, None, None, training=True) * g).sum(), x)
    std = torch.sqrt(x.detach().var(0, unbiased=False) + 1e-5)
    r = (std / torch.sqrt(torch.tensor(9.0 + 1e-5, dtype=torch.float64))).clamp(0.5, 2.0)
    assert torch.allclose(grad_renorm, grad_batch * r, atol=1e-10)


def test_batch_renorm_rejects_bad_limits_and_tiny_batches():
    with pytest.raises(ValueError, match="r_max >= 1 and d_max >= 0"):
        norm.BatchRenorm1d(4, r_max=0.5)
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm.BatchRenorm1d(4)(torch.randn(1, 4))
    assert isinstance(norm.make_norm1d("renorm", 4), norm.BatchRenorm1d)
