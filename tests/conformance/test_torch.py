"""dlbook's from-scratch layers, optimizers and compression on cases from PyTorch's own tests.

Each case names its source as ``pytorch/pytorch <file>::<test>`` (test/nn/test_pruning.py,
test/quantization/core/test_workflow_ops.py, test/nn/test_dropout.py, test/test_nn.py and
test/test_optim.py), and is checked against torch itself, which is always installed.

Deliberately different: ``magnitude_prune`` refuses a fraction of 1.0 (torch prunes
everything) and counts an iterative amount of the whole tensor, not of what remains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from dlbook import norm, optim
from dlbook.compression import fake_quantize, magnitude_prune, quantize
from dlbook.regularization import Dropout, dropout, smoothed_cross_entropy


# ----------------------------------------------------------------------------- pruning

@pytest.mark.parametrize("amount", [0, 3, 7, 24], ids=lambda a: f"amount={a}")
def test_integer_amount_is_a_count_like_l1_unstructured(amount):
    """pytorch/pytorch test/nn/test_pruning.py::test_l1_unstructured_pruning (and its int-amount
    validation cases): an int amount prunes exactly that many weights, the smallest |w|, the
    same ones torch.nn.utils.prune.l1_unstructured picks."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    masks = magnitude_prune(nn.Sequential(lin), amount, scope="layer")
    ref = nn.Linear(6, 4)
    ref.load_state_dict(lin.state_dict())
    prune.l1_unstructured(ref, "weight", amount=amount)
    assert int((~masks["0.weight"]).sum()) == amount
    assert torch.equal(masks["0.weight"], ref.weight_mask.bool())


def test_integer_amount_global_like_global_unstructured():
    """pytorch/pytorch test/nn/test_pruning.py::test_global_pruning: an int amount counts weights
    over all layers together, as prune.global_unstructured(..., amount=k)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    masks = magnitude_prune(model, 9)
    prune.global_unstructured([(model[0], "weight"), (model[2], "weight")], prune.L1Unstructured, amount=9)
    assert torch.equal(masks["0.weight"], model[0].weight_mask.bool())
    assert torch.equal(masks["2.weight"], model[2].weight_mask.bool())


def test_integer_amount_larger_than_the_tensor_is_refused():
    """pytorch/pytorch test/nn/test_pruning.py::test_validate_pruning_amount: an int amount above the
    number of weights is an error in both."""
    with pytest.raises(ValueError, match="amount"):
        magnitude_prune(nn.Sequential(nn.Linear(2, 2)), 5)


# ----------------------------------------------------------------------------- quantization

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fake_quantize_half_precision_numerics(dtype):
    """pytorch/pytorch test/quantization/core/test_workflow_ops.py::test_forward_per_tensor_half_precision_numerics:
    half inputs are fake-quantized in float32 and cast back, equal to torch's kernel."""
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)).to(dtype) * 3
    for scale, zp in [(0.1, 0), (0.05, 10), (1 / 3, -4)]:
        ours = fake_quantize(x, scale, zp, -128, 127)
        theirs = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, -128, 127).to(dtype)
        assert ours.dtype == dtype and torch.equal(ours, theirs)


@pytest.mark.parametrize("scale, zero_point", [(0.1, 3), (1 / 3, -2), (0.0123, 10), (0.05, 0)])
def test_quantize_ties_and_random_values_code_for_code(scale, zero_point):
    """pytorch/pytorch test/quantization/core/test_workflow_ops.py (quantize_per_tensor numerics):
    1,400 rounding-tie points (k + 1/2) S and 100,000 random values get torch's codes exactly."""
    ties = (torch.arange(-700, 700) + 0.5) * torch.tensor(scale)
    rand = torch.randn(100_000, generator=torch.Generator().manual_seed(1)) * 4
    for x in (ties, rand):
        ours = quantize(x, scale, zero_point, -128, 127)
        theirs = torch.quantize_per_tensor(x, scale, zero_point, torch.qint8).int_repr()
        assert torch.equal(ours, theirs)


# ----------------------------------------------------------------------------- dropout

def test_dropout_p_one_returns_zeros():
    """pytorch/pytorch test/nn/test_dropout.py::_test_dropout (p = 1 case): every entry is dropped."""
    x = torch.randn(4, 5)
    for layer in (Dropout(1.0), nn.Dropout(1.0)):
        assert torch.equal(layer(x), torch.zeros_like(x))
    assert torch.equal(dropout(x, 1.0), F.dropout(x, 1.0))


def test_dropout_inplace_writes_into_the_input():
    """pytorch/pytorch test/nn/test_dropout.py::_test_dropout (inplace=True): the output is the
    input tensor, zeros where dropped and x / (1 - p) elsewhere; eval() leaves it alone."""
    x = torch.ones(1000)
    y = Dropout(0.4, inplace=True)(x)
    assert y is x and ((x == 0) | torch.isclose(x, torch.tensor(1 / 0.6))).all()
    z = torch.ones(10)
    layer = Dropout(0.4, inplace=True).eval()
    assert torch.equal(layer(z), torch.ones(10))


# ----------------------------------------------------------------------------- losses and norms

@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 5, 3, 2)], ids=["N,C,d1", "N,C,d1,d2"])
def test_smoothed_cross_entropy_on_spatial_logits(shape):
    """pytorch/pytorch test/test_nn.py::test_cross_entropy_label_smoothing_consistent_index_target_and_probs
    (its (N, C, d1, ...) shapes): class ids and probability targets, eps 0.1, equal F.cross_entropy."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(shape, dtype=torch.double, generator=g)
    ids = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    probs = torch.softmax(torch.randn(shape, dtype=torch.double, generator=g), 1)
    for t in (ids, probs):
        torch.testing.assert_close(smoothed_cross_entropy(z, t, 0.1), F.cross_entropy(z, t, label_smoothing=0.1),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rmsnorm_default_eps_in_half_precision(dtype):
    """pytorch/pytorch test/test_nn.py (RMSNorm with eps=None in reduced precision): computed in
    float32 with float32's eps, so small activations are normalized to ~1, as torch does."""
    x = (torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 1e-2).to(dtype)
    ours, theirs = norm.RMSNorm(16, dtype=dtype), nn.RMSNorm(16, dtype=dtype)
    assert ours(x).dtype == dtype
    assert torch.equal(ours(x), theirs(x))


# ----------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("name, kw", [
    ("Adam", {"lr": 0.1}), ("Adam", {"lr": 0.1, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.1}), ("RMSprop", {"lr": 0.01}), ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
], ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={w}" for k, w in v.items()))
def test_complex_parameters_are_real_and_imaginary_pairs(name, kw):
    """pytorch/pytorch test/test_optim.py::test_complex (via view_as_real): on complex parameters
    the update equals torch's, which treats real and imaginary parts as separate reals, to 1e-12."""
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.complex128, requires_grad=True)
    v = w.detach().clone().requires_grad_(True)
    target = torch.randn(6, dtype=torch.complex128)
    ours, theirs = getattr(optim, name)([w], **kw), getattr(torch.optim, name)([v], **kw)
    for _ in range(20):
        for opt, p in ((ours, w), (theirs, v)):
            opt.zero_grad()
            ((p - target).abs().pow(2).sum() + (p ** 3).real.sum()).backward()
            opt.step()
    torch.testing.assert_close(w, v, rtol=1e-12, atol=1e-12)
