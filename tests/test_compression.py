"""dlbook.compression against its references: torch.nn.utils.prune, torch.quantize_per_tensor /
quantize_per_channel, torch.fake_quantize_per_tensor_affine, F.kl_div and hand computations."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from dlbook.compression import (Int8Linear, QuantLinear, apply_masks, compare_latency, dequantize, distillation_loss,
                                fake_quantize, latency, magnitude_prune, model_size, prune_neurons, qrange, quant_params,
                                quantize, replace_linears)
from dlbook.mlp import MLP

F64 = torch.float64


def g(seed):
    return torch.Generator().manual_seed(seed)


def mlp(seed=0, sizes=(16, 32, 24, 5)):
    torch.manual_seed(seed)
    return MLP(list(sizes))


# ----------------------------------------------------------------------------- measuring

def test_model_size_counts_serialized_bytes_params_and_nonzeros():
    model = mlp()
    size = model_size(model)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert size.bytes == len(buf.getvalue())
    assert size.params == sum(p.numel() for p in model.parameters()) == 16 * 32 + 32 + 32 * 24 + 24 + 24 * 5 + 5
    with torch.no_grad():
        model.net[0].weight[:4].zero_()
    assert model_size(model).nonzero == size.params - 4 * 16


def test_model_size_sees_sparse_index_overhead_and_int8_storage():
    """A 50%-sparse CSR matrix stores values *and* indices, so it is not half the dense size;
    an int8 model is about a quarter of float32."""
    w = torch.randn(256, 256, generator=g(0))
    w.view(-1)[w.abs().view(-1).argsort()[:256 * 128]] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)            # "sparse CSR support is in beta"
        dense, sparse = model_size({"w": w}), model_size({"w": w.to_sparse_csr()})
    assert sparse.params == dense.nonzero == sparse.nonzero == 256 * 128
    assert sparse.bytes > 1.4 * dense.bytes                      # int64 column indices cost more than they save
    assert 11.9 < sparse.bytes / sparse.nonzero < 12.5            # 4 bytes of value + 8 of index per nonzero
    big = MLP([256, 512, 512, 10])
    small = replace_linears(big, Int8Linear.from_linear)
    assert model_size(small).params == model_size(big).params
    assert 0.24 < model_size(small).bytes / model_size(big).bytes < 0.30


def test_model_size_rejects_other_things():
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        model_size([1, 2])


def test_latency_restores_mode_and_threads_and_returns_seconds():
    model = mlp().train()
    threads = torch.get_num_threads()
    lat = latency(model, torch.randn(8, 16), threads=1, min_run_time=0.01, warmup=1)
    assert model.training and torch.get_num_threads() == threads
    assert 0 < lat.median < 0.1 and lat.iqr >= 0 and lat.runs >= 1


@pytest.mark.parametrize("kwargs, match", [({"threads": 0}, "threads"), ({"min_run_time": 0}, "min_run_time"),
                                           ({"warmup": -1}, "warmup")])
def test_latency_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        latency(mlp(), torch.randn(2, 16), **kwargs)


def test_compare_latency_pairs_rounds_and_finds_a_large_speed_up():
    """A 64x larger matmul is slower by far more than noise: the small one's speed-up is well above 1,
    the reference's is exactly 1, and the medians are seconds."""
    big, small = torch.randn(512, 512), torch.randn(64, 64)
    result = compare_latency({"big": lambda v: v @ big, "small": lambda v: v[:, :64] @ small},
                             torch.randn(64, 512), rounds=3, min_run_time=0.01)
    assert list(result) == ["big", "small"] and result["big"].speedup == 1.0
    assert result["small"].speedup > 4 and 0 < result["small"].median < result["big"].median < 0.1


@pytest.mark.parametrize("models, kwargs, error", [({}, {}, TypeError), ([mlp()], {}, TypeError),
                                                   ({"a": mlp()}, {"rounds": 0}, ValueError)])
def test_compare_latency_rejects_bad_arguments(models, kwargs, error):
    with pytest.raises(error):
        compare_latency(models, torch.randn(2, 16), **kwargs)


# ----------------------------------------------------------------------------- pruning

def _torch_masks(model, amount, scope):
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for m in layers:
            prune.l1_unstructured(m, "weight", amount=amount)
    return [m.weight_mask.bool() for m in layers]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.77])
def test_magnitude_prune_masks_equal_torch_prune(scope, amount):
    """The masks are exactly those of torch.nn.utils.prune (global_unstructured / l1_unstructured)."""
    ours = magnitude_prune(mlp(), amount, scope=scope)
    theirs = _torch_masks(mlp(), amount, scope)
    assert list(ours) == ["net.0.weight", "net.2.weight", "net.4.weight"]
    for a, b in zip(ours.values(), theirs):
        assert torch.equal(a, b)


def test_global_scope_differs_from_layer_scope_and_counts_are_right():
    model = mlp()
    with torch.no_grad():
        model.net[2].weight.mul_(0.1)                    # one layer of small weights: global pruning hits it hardest
    masks = magnitude_prune(model, 0.5, "global")
    n = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * n)
    assert (~masks["net.2.weight"]).float().mean() > 0.75
    layer = magnitude_prune(model, 0.5, "layer")
    assert all(abs((~m).float().mean().item() - 0.5) < 0.01 for m in layer.values())


def test_torch_prune_doubles_the_state_dict_until_remove():
    """prune keeps weight_orig and weight_mask; apply_masks keeps the plain weight (the same values)."""
    ours, theirs = mlp(sizes=(64, 256, 256, 10)), mlp(sizes=(64, 256, 256, 10))
    apply_masks(ours, magnitude_prune(ours, 0.6))
    _torch_masks(theirs, 0.6, "global")
    assert model_size(theirs).bytes > 1.8 * model_size(ours).bytes
    for m in theirs.modules():
        if isinstance(m, nn.Linear):
            prune.remove(m, "weight")
    assert theirs.state_dict().keys() == ours.state_dict().keys()
    for k in ours.state_dict():
        assert torch.equal(ours.state_dict()[k], theirs.state_dict()[k])


def test_iterative_pruning_keeps_earlier_zeros_and_amount_is_total():
    model = mlp()
    first = magnitude_prune(model, 0.5)
    apply_masks(model, first)
    second = magnitude_prune(model, 0.8)
    for name in first:
        assert not (second[name] & ~first[name]).any()          # nothing pruned comes back
    total = sum(m.numel() for m in second.values())
    assert sum(int((~m).sum()) for m in second.values()) == round(0.8 * total)


def test_apply_masks_after_a_momentum_step_keeps_pruned_weights_at_zero():
    """Momentum moves a pruned weight away from zero; re-applying the mask puts it back."""
    model = mlp()
    masks = magnitude_prune(model, 0.5)
    apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 16, generator=g(1)), torch.randint(0, 5, (32,), generator=g(2))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    w = model.net[0].weight
    assert (w[~masks["net.0.weight"]] != 0).any()
    apply_masks(model, masks)
    assert (w[~masks["net.0.weight"]] == 0).all()


def test_pruning_rejects_bad_arguments():
    for amount in (1.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="amount"):
            magnitude_prune(mlp(), amount)
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(mlp(), 0.5, scope="row")
    with pytest.raises(ValueError, match="no Linear or Conv"):
        magnitude_prune(nn.ReLU(), 0.5)
    with pytest.raises(KeyError, match="not a parameter"):
        apply_masks(mlp(), {"net.9.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="amount"):
        prune_neurons(mlp(), 1.0)
    with pytest.raises(ValueError, match="parameters"):
        prune_neurons(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)), 0.5)


def test_prune_neurons_shrinks_matrices_and_equals_zeroing_those_neurons():
    """Removing neuron j equals keeping it with W[j, :] = 0, b[j] = 0 (ReLU(0) = 0): same outputs. Neurons of a
    layer are ranked by the norm of their rows over the inputs that remain."""
    model = mlp(sizes=(16, 40, 30, 5)).double()
    small = prune_neurons(model, 0.5)
    assert [tuple(m.weight.shape) for m in small.linears] == [(20, 16), (15, 20), (5, 15)]
    assert small.sizes == [16, 20, 15, 5] and model.sizes == [16, 40, 30, 5]
    zeroed = mlp(sizes=(16, 40, 30, 5)).double()
    with torch.no_grad():
        for layer, nxt in zip(zeroed.linears[:-1], zeroed.linears[1:]):
            norms = layer.weight.norm(dim=1)
            drop = torch.topk(norms, len(norms) // 2, largest=False).indices
            layer.weight[drop] = 0
            layer.bias[drop] = 0
            nxt.weight[:, drop] = 0
    x = torch.randn(7, 16, generator=g(3), dtype=F64)
    torch.testing.assert_close(small(x), zeroed(x), atol=1e-12, rtol=0)


def test_prune_neurons_keeps_the_same_neurons_as_torch_ln_structured():
    model = mlp()
    small = prune_neurons(model, 0.25)
    layer = model.net[0]
    prune.ln_structured(layer, "weight", amount=0.25, n=2, dim=0)
    kept = layer.weight_mask[:, 0].bool()
    torch.testing.assert_close(small.net[0].weight, layer.weight_orig[kept])


# ----------------------------------------------------------------------------- distillation

def test_distillation_loss_equals_a_hand_computation():
    s = torch.randn(6, 4, generator=g(4), dtype=F64)
    t = torch.randn(6, 4, generator=g(5), dtype=F64) * 3
    y = torch.randint(0, 4, (6,), generator=g(6))
    T, alpha = 3.0, 0.7
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()              # KL(teacher || student), mean over rows
    ce = -torch.log_softmax(s, -1)[torch.arange(6), y].mean()
    torch.testing.assert_close(distillation_loss(s, t, y, T=T, alpha=alpha),
                               alpha * T * T * kl + (1 - alpha) * ce, atol=1e-12, rtol=0)


def test_distillation_soft_gradient_scales_as_one_over_T_squared_and_T2_restores_it():
    """Without the T^2 factor the soft-target gradient shrinks like 1/T^2 (for large T); with it, it stays put."""
    s = torch.randn(64, 10, generator=g(7), dtype=F64)
    t = torch.randn(64, 10, generator=g(8), dtype=F64)

    def grad_norm(T):
        z = s.clone().requires_grad_()
        distillation_loss(z, t, None, T=T, alpha=1.0).backward()
        return z.grad.norm().item()
    ratio = grad_norm(20.0) / grad_norm(40.0)
    assert abs(ratio - 1) < 0.02                    # with T^2: the same size at T = 20 and 40
    raw = [torch.autograd.grad(F.kl_div(torch.log_softmax(z / T, -1), torch.softmax(t / T, -1),
                                        reduction="batchmean"), z)[0].norm().item()
           for T in (20.0, 40.0) for z in [s.clone().requires_grad_()]]
    assert abs(raw[0] / raw[1] - 4) < 0.1          # the raw KL term alone falls 4x from T = 20 to 40: 1/T^2


def test_distillation_loss_does_not_backpropagate_into_the_teacher():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    distillation_loss(s, t, torch.tensor([0, 1, 2]), T=2.0, alpha=0.5).backward()
    assert t.grad is None and s.grad is not None


def test_distillation_loss_rejects_bad_arguments():
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="T must be"):
        distillation_loss(s, t, y, T=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="alpha must be 1"):
        distillation_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        distillation_loss(s, t[:, :4], y)


# ----------------------------------------------------------------------------- quantization

@contextlib.contextmanager
def _quiet():
    """torch.quantize_per_* warn that they are deprecated: fine as references in a test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_qrange_symmetric_is_restricted_and_asymmetric_is_unsigned():
    assert qrange(8, symmetric=True) == (-127, 127)
    assert qrange(8, symmetric=False) == (0, 255)
    assert qrange(4, True) == (-7, 7) and qrange(3, False) == (0, 7)


def test_quant_params_make_zero_exact_and_cover_the_range():
    for lo, hi in [(-1.3, 2.9), (0.5, 2.0), (-3.0, -0.2), (-0.01, 7.0)]:
        s, z = quant_params(lo, hi, bits=8)
        assert z.dtype == torch.int64 and 0 <= z <= 255
        assert dequantize(quantize(torch.tensor([0.0]), s, z, 0, 255), s, z).item() == 0.0
        lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
        assert abs(s.item() - (hi0 - lo0) / 255) < 1e-7
    s, z = quant_params(-0.5, 2.0, bits=8, symmetric=True)
    assert z.item() == 0 and abs(s.item() - 2.0 / 127) < 1e-8


def test_quant_params_per_channel_gives_one_pair_per_range():
    w = torch.randn(5, 9, generator=g(9))
    s, z = quant_params(w.amin(1), w.amax(1), bits=4)
    assert s.shape == z.shape == (5,)
    for i in range(5):
        si, zi = quant_params(w[i].min(), w[i].max(), bits=4)
        assert s[i] == si and z[i] == zi


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_per_tensor_equals_torch_within_one_lsb_at_near_ties(symmetric):
    """Integers equal torch.quantize_per_tensor's with the same S and Z; they may differ by one only where
    x / S is within float rounding of a half (torch multiplies by 1 / S)."""
    x = torch.randn(2000, generator=g(10)) * 2
    s, z = quant_params(x.min(), x.max(), bits=8, symmetric=symmetric)
    qmin, qmax = qrange(8, symmetric)
    q = quantize(x, s, z, qmin, qmax)
    assert q.dtype == (torch.int8 if symmetric else torch.uint8)
    with _quiet():
        ref = torch.quantize_per_tensor(x, s.item(), int(z), torch.qint8 if symmetric else torch.quint8).int_repr()
    diff = (q.int() - ref.int()).abs()
    assert diff.max() <= 1
    frac = (x / s) - torch.floor(x / s)
    assert ((frac[diff > 0] - 0.5).abs() < 1e-4).all()
    assert (diff > 0).float().mean() < 0.005


def test_quantize_per_channel_equals_torch_quantize_per_channel():
    """Per output row of a Linear weight (axis 0): the same integers as torch.quantize_per_channel."""
    w = torch.randn(12, 40, generator=g(11)) * torch.linspace(0.1, 3, 12)[:, None]
    s, z = quant_params(w.amin(1), w.amax(1), bits=8)
    q = quantize(w, s, z, 0, 255, axis=0)
    with _quiet():
        ref = torch.quantize_per_channel(w, s, z, 0, torch.quint8).int_repr()
    assert (q.int() - ref.int()).abs().max() <= 1
    assert (q.int() != ref.int()).float().mean() < 0.01
    with _quiet():
        back = torch.quantize_per_channel(w, s, z, 0, torch.quint8).dequantize()
    torch.testing.assert_close(dequantize(q, s, z, axis=0), back, atol=float(s.max()) + 1e-6, rtol=0)


def test_round_trip_error_is_at_most_half_a_step_and_per_channel_beats_per_tensor():
    w = torch.randn(16, 64, generator=g(12), dtype=F64) * torch.logspace(-2, 0, 16, dtype=F64)[:, None]
    s, z = quant_params(w.min(), w.max(), bits=4)
    err_tensor = (dequantize(quantize(w, s, z, 0, 15), s, z) - w).abs()
    assert (err_tensor <= s / 2 + 1e-12).all()
    sc, zc = quant_params(w.amin(1), w.amax(1), bits=4)
    err_channel = (dequantize(quantize(w, sc, zc, 0, 15, axis=0), sc, zc, axis=0) - w).abs()
    assert (err_channel <= sc[:, None] / 2 + 1e-12).all()
    assert err_channel.mean() < 0.5 * err_tensor.mean()


def test_fake_quantize_equals_torch_forward_and_gradient():
    """Forward and STE gradient equal torch.fake_quantize_per_tensor_affine / _per_channel_affine."""
    x = (torch.randn(300, generator=g(13)) * 3).requires_grad_()
    s, z = quant_params(-2.0, 4.0, bits=8)                  # values outside [-2, 4] are clamped
    ours = fake_quantize(x, s, z, 0, 255)
    ours.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ref = torch.fake_quantize_per_tensor_affine(x2, s.item(), int(z), 0, 255)
    ref.sum().backward()
    assert (ours - ref).abs().max() <= s.item() + 1e-6
    assert (ours != ref).float().mean() < 0.01
    assert torch.equal(x.grad, x2.grad)
    w = torch.randn(6, 10, generator=g(14), requires_grad=True)
    sc, zc = quant_params(w.detach().amin(1) * 0.5, w.detach().amax(1) * 0.5, bits=4)
    fake_quantize(w, sc, zc, 0, 15, axis=0).sum().backward()
    w2 = w.detach().clone().requires_grad_()
    torch.fake_quantize_per_channel_affine(w2, sc.float(), zc.int(), 0, 0, 15).sum().backward()
    assert torch.equal(w.grad, w2.grad)


def test_ste_gradient_is_one_inside_and_zero_outside_the_range():
    s, z = quant_params(-1.0, 1.0, bits=8, symmetric=True)
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.7, 1.0, 1.2, 5.0], requires_grad=True)
    fake_quantize(x, s, z, -127, 127).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_quantization_rejects_bad_arguments():
    for bits in (1, 17, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            quant_params(-1.0, 1.0, bits=bits)
    with pytest.raises(ValueError, match="zero-width"):
        quant_params(0.0, 0.0)
    with pytest.raises(ValueError, match="x_min must be <= x_max"):
        quant_params(1.0, -1.0)
    s, z = quant_params(0.0, 0.0, eps=1e-6)
    assert s > 0
    x = torch.randn(4)
    with pytest.raises(ValueError, match="qmin must be < qmax"):
        quantize(x, 0.1, 0, 5, 5)
    with pytest.raises(TypeError, match="float tensor"):
        quantize(torch.arange(4), 0.1, 0, 0, 255)
    with pytest.raises(ValueError, match="per-channel"):
        quantize(torch.randn(3, 4), torch.ones(3), torch.zeros(3), 0, 255)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        quantize(torch.randn(3, 4), torch.ones(4), torch.zeros(4), 0, 255, axis=0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        dequantize(torch.zeros(3, dtype=torch.uint8), 0.0, 0)


# ----------------------------------------------------------------------------- layers

def test_quantlinear_forward_equals_fake_quantized_weights_and_learns_through_the_ste():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    ql = QuantLinear.from_linear(lin, bits=4)
    x = torch.randn(5, 12)
    w = lin.weight.detach()
    s, z = quant_params(w.amin(1), w.amax(1), bits=4, symmetric=True)
    expected = F.linear(x, dequantize(quantize(w, s, z, -7, 7, axis=0), s, z, axis=0), lin.bias)
    torch.testing.assert_close(ql(x), expected, atol=1e-6, rtol=0)
    ql(x).sum().backward()
    assert ql.weight.grad is not None and ql.weight.grad.abs().sum() > 0
    assert QuantLinear.from_linear(lin, bits=8)(x).sub(lin(x)).abs().max() < 0.05


def test_quantlinear_binary_uses_mean_abs_scale_and_sign():
    torch.manual_seed(1)
    ql = QuantLinear(10, 4, bits=1)
    w = ql.weight.detach()
    wb = ql.quantized_weight()
    torch.testing.assert_close(wb, w.abs().mean(1, keepdim=True) * torch.sign(w))
    wb.sum().backward()
    torch.testing.assert_close(ql.weight.grad, (w.abs() <= 1).float() * w.abs().mean(1, keepdim=True))


def test_quantlinear_activation_range_tracks_training_batches_then_stays_fixed_in_eval():
    ql = QuantLinear(3, 2, act_bits=8, momentum=0.5)
    with pytest.raises(RuntimeError, match="activation range"):
        ql.eval()(torch.randn(2, 3))
    ql.train()
    ql(torch.tensor([[-1.0, 0.0, 2.0]]))
    ql(torch.tensor([[-3.0, 0.0, 4.0]]))
    assert ql.act_min.item() == -2.0 and ql.act_max.item() == 3.0
    ql.eval()(torch.tensor([[-10.0, 0.0, 10.0]]))
    assert ql.act_min.item() == -2.0


def test_int8linear_equals_its_integer_formula_and_is_close_to_float():
    """The _int_mm path equals the same integers multiplied in float64, rescaled; and the int8 model is within
    ~1% of float32 on a wide layer."""
    torch.manual_seed(2)
    lin = nn.Linear(64, 48)
    il = Int8Linear.from_linear(lin)
    assert il.weight.dtype == torch.int8 and not il.weight.requires_grad
    x = torch.randn(20, 64, generator=g(15))
    t = x.abs().amax(1, keepdim=True) / 127
    p = torch.round(x / t).clamp(-127, 127)
    w = lin.weight.detach()
    s = w.abs().amax(1) / 127
    q = torch.round(w / s[:, None]).clamp(-127, 127)
    expected = (p.double() @ q.double().t()) * (t.double() * s.double()) + lin.bias.double()
    torch.testing.assert_close(il(x).double(), expected, atol=1e-5, rtol=1e-6)
    y = lin(x)
    assert (il(x) - y).abs().max() < 0.02 * y.abs().max()
    assert il(x[:1]).shape == (1, 48) and il(x.reshape(4, 5, 64)).shape == (4, 5, 48)


def test_replace_linears_swaps_every_linear_in_a_copy():
    model = mlp()
    q = replace_linears(model, lambda l: QuantLinear.from_linear(l, bits=8))
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 3
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    x = torch.randn(4, 16)
    assert (q(x) - model(x)).abs().max() < 0.05
    i8 = replace_linears(model, Int8Linear.from_linear)
    assert (i8(x) - model(x)).abs().max() < 0.05
    with pytest.raises(TypeError, match="make"):
        replace_linears(model, 3)


def test_int8linear_is_exact_whichever_int8_kernel_the_cpu_has():
    """Without VNNI, oneDNN's int8 kernel saturates 16-bit pair sums; Int8Linear must still compute exact sums.

    The integers are the largest int8 values, where a saturating kernel is off by thousands. Run under
    ONEDNN_MAX_CPU_ISA=AVX2 this takes the floating-point path; natively (VNNI) it takes torch._int_mm."""
    from dlbook.compression import Int8Linear, int_mm_is_exact

    layer = Int8Linear(1100, 8, bias=False)   # 1100 * 128^2 > 2^24: the float fallback must be float64
    with torch.no_grad():
        layer.weight.fill_(127)
    p = torch.full((32, 1100), 127, dtype=torch.int8)
    assert torch.equal(layer._int_matmul(p).double(), torch.full((32, 8), 1100.0 * 127 * 127, dtype=torch.float64))
    assert isinstance(int_mm_is_exact(), bool)
