"""dlbook.losses equal torch.nn.functional's losses (float64, 1e-10) and stay finite where naive forms fail."""

import pytest
import torch
import torch.nn.functional as F

from dlbook import losses

g = torch.Generator().manual_seed(0)


def test_mse_matches_torch():
    a, b = torch.randn(7, 3, dtype=torch.float64, generator=g), torch.randn(7, 3, dtype=torch.float64, generator=g)
    torch.testing.assert_close(losses.mse(a, b), F.mse_loss(a, b), atol=1e-12, rtol=0)


def test_bce_with_logits_matches_torch_including_extreme_logits():
    z = torch.cat([torch.randn(100, dtype=torch.float64, generator=g) * 5, torch.tensor([-500.0, 500.0], dtype=torch.float64)])
    y = (torch.rand(102, generator=g) > 0.5).double()
    torch.testing.assert_close(losses.bce_with_logits(z, y), F.binary_cross_entropy_with_logits(z, y), atol=1e-10, rtol=0)


def test_cross_entropy_and_log_softmax_match_torch():
    z = torch.randn(32, 10, dtype=torch.float64, generator=g) * 20
    y = torch.randint(10, (32,), generator=g)
    torch.testing.assert_close(losses.cross_entropy(z, y), F.cross_entropy(z, y), atol=1e-10, rtol=0)
    torch.testing.assert_close(losses.log_softmax(z), F.log_softmax(z, dim=-1), atol=1e-10, rtol=0)
    torch.testing.assert_close(losses.softmax(z).sum(-1), torch.ones(32, dtype=torch.float64))


def test_logit_forms_stay_finite_where_naive_forms_overflow():
    z = torch.tensor([40.0, -40.0])
    y = torch.tensor([0.0, 1.0])
    assert torch.isinf(losses.naive_bce(z, y))
    assert torch.isfinite(losses.bce_with_logits(z, y))
    Z = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    t = torch.tensor([1, 0])
    assert not torch.isfinite(losses.naive_cross_entropy(Z, t))
    torch.testing.assert_close(losses.cross_entropy(Z, t), F.cross_entropy(Z, t))


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
    z = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 3, 1, 2, 1])
    losses.cross_entropy(z, y).backward()
    expected = (F.softmax(z.detach(), -1) - F.one_hot(y, 4).double()) / 5
    torch.testing.assert_close(z.grad, expected, atol=1e-12, rtol=0)


def test_bad_shapes_and_types_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        losses.mse(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        losses.cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class ids"):
        losses.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="class ids"):
        losses.cross_entropy(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="floating-point"):
        losses.bce_with_logits(torch.tensor([1, 2]), torch.tensor([1, 0]))
