"""Tests of dlbook.regularization: each technique against its torch (or scikit-learn) counterpart,
in float64 where that sharpens the comparison, and a clear error for each kind of bad argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbook import norm, optim
from dlbook import regularization as R
from dlbook.data import tensor_loader
from dlbook.models import NormMLP

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- dropout

def test_dropout_keeps_the_mean_and_drops_the_stated_fraction():
    """E[dropout(x)] = x and the dropped fraction is p (2e5 samples: 4-sigma margins), like torch's."""
    x = torch.full((200_000,), 2.0, dtype=F64)
    for p in (0.1, 0.5, 0.8):
        y = R.dropout(x, p, training=True, generator=gen(0))
        ref = F.dropout(x, p, training=True)
        sd = math.sqrt(p * (1 - p) / len(x))
        assert abs((y == 0).double().mean().item() - p) < 4 * sd
        assert abs((ref == 0).double().mean().item() - p) < 4 * sd
        assert abs(y.mean().item() - 2.0) < 4 * 2.0 * sd / (1 - p)
        survivors = y[y != 0]
        assert torch.allclose(survivors, torch.full_like(survivors, 2.0 / (1 - p)))      # scaled by 1/(1-p), like torch
        assert torch.allclose(ref[ref != 0], torch.full_like(ref[ref != 0], 2.0 / (1 - p)))


def test_dropout_is_the_identity_in_eval_and_at_p0():
    """training=False and p=0 return x unchanged; the module follows train()/eval() like nn.Dropout."""
    x = torch.randn(5, 7, generator=gen(1), dtype=F64)
    assert torch.equal(R.dropout(x, 0.5, training=False), x)
    assert torch.equal(R.dropout(x, 0.0, training=True), x)
    layer, ref = R.Dropout(0.3), nn.Dropout(0.3)
    layer.eval(), ref.eval()
    assert torch.equal(layer(x), ref(x))
    layer.train()
    assert not torch.equal(layer(x), x)


def test_dropout_mask_is_reproducible_with_a_generator_and_gradients_flow_through_kept_units():
    """The same generator seed gives the same mask; the gradient is mask / (1 - p), as for torch's dropout."""
    x = torch.randn(4, 6, dtype=F64, requires_grad=True)
    y1 = R.dropout(x, 0.4, generator=gen(3))
    y2 = R.dropout(x, 0.4, generator=gen(3))
    assert torch.equal(y1, y2)
    y1.sum().backward()
    assert torch.allclose(x.grad, (y1 != 0).double() / 0.6)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_p_outside_0_1(p):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        R.dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        R.Dropout(p)


def test_dropout_rejects_integer_inputs():
    with pytest.raises(TypeError, match="floating"):
        R.dropout(torch.ones(3, dtype=torch.long), 0.5)


# ----------------------------------------------------------------------------- penalties and weight decay

def test_one_sgd_step_on_the_l2_penalty_equals_torch_weight_decay():
    """loss + lam * l2_penalty stepped by plain SGD equals torch.optim.SGD(weight_decay=lam), float64, 1e-12."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    twin = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 5, generator=gen(0), dtype=F64), torch.randint(0, 3, (8,), generator=gen(1))
    lam, lr = 0.05, 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    (F.cross_entropy(model(x), y) + lam * R.l2_penalty(model.parameters())).backward()
    opt.step()
    ref = torch.optim.SGD(twin.parameters(), lr=lr, weight_decay=lam)
    F.cross_entropy(twin(x), y).backward()
    ref.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_penalties_values_and_gradients():
    """l2 = (1/2) sum w^2 with gradient w; l1 = sum |w| with gradient sign(w); modules and tensors accepted."""
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=F64, requires_grad=True)
    b = torch.tensor([3.0], dtype=F64, requires_grad=True)
    assert R.l2_penalty([w, b]).item() == pytest.approx(0.5 * (1 + 4 + 0.25 + 9))
    assert R.l1_penalty([w, b]).item() == pytest.approx(1 + 2 + 0.5 + 3)
    R.l2_penalty([w]).backward()
    assert torch.equal(w.grad, w.detach())
    w.grad = None
    R.l1_penalty(w).backward()
    assert torch.equal(w.grad, w.detach().sign())
    lin = nn.Linear(3, 2)
    assert torch.allclose(R.l2_penalty(lin), 0.5 * (lin.weight.square().sum() + lin.bias.square().sum()))


def test_penalties_reject_empty_and_non_tensors():
    with pytest.raises(ValueError, match="empty"):
        R.l2_penalty([])
    with pytest.raises(TypeError, match="Tensor"):
        R.l1_penalty([1.0, 2.0])


def test_soft_threshold_equals_softshrink_and_gives_exact_zeros():
    """soft_threshold(w, t) equals F.softshrink(w, t) in float64; entries with |w| <= t become exactly 0."""
    w = torch.randn(1000, generator=gen(2), dtype=F64)
    out = R.soft_threshold(w, 0.3)
    assert torch.allclose(out, F.softshrink(w, 0.3), atol=1e-15, rtol=0)
    assert torch.equal(out == 0, w.abs() <= 0.3)
    with pytest.raises(ValueError, match=">= 0"):
        R.soft_threshold(w, -1.0)


def test_decay_groups_exclude_biases_and_norm_parameters():
    """Only Linear/Conv weights are decayed: biases and the book's and torch's norm gains/shifts are not."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), norm.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4, 3), nn.LayerNorm(3), norm.LayerNorm(3), nn.Linear(3, 2, bias=False))
    groups = R.decay_groups(model, 0.1)
    decayed, plain = groups[0]["params"], groups[1]["params"]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in decayed} == {id(model[0].weight), id(model[4].weight), id(model[7].weight)}
    assert len(decayed) + len(plain) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-3)                     # torch accepts the groups as they are
    assert len(opt.param_groups) == 2


def test_decay_groups_leave_out_empty_groups_and_frozen_parameters():
    lin = nn.Linear(3, 2, bias=False)
    assert len(R.decay_groups(lin, 0.1)) == 1
    lin.weight.requires_grad_(False)
    assert R.decay_groups(nn.Sequential(lin, nn.Linear(2, 2)), 0.1)[0]["params"][0] is not lin.weight
    with pytest.raises(ValueError, match=">= 0"):
        R.decay_groups(lin, -0.1)
    with pytest.raises(TypeError, match="nn.Module"):
        R.decay_groups([lin.weight], 0.1)


def test_adam_l2_and_adamw_differ_while_sgd_weight_decay_is_l2():
    """Adam with weight_decay != AdamW at the same lambda (dlbook.optim, equal to torch): the L2 gradient is rescaled."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 5, dtype=F64), torch.randint(0, 3, (32,))
    norms = {}
    for name, cls in (("adam", optim.Adam), ("adamw", optim.AdamW)):
        torch.manual_seed(1)
        model = nn.Linear(5, 3).double()
        opt = cls(model.parameters(), lr=0.05, weight_decay=0.1)
        for _ in range(50):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        norms[name] = model.weight.norm().item()
    assert abs(norms["adam"] - norms["adamw"]) > 1e-3


# ----------------------------------------------------------------------------- label smoothing and mixup

@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_equals_torch_label_smoothing(eps):
    """smoothed_cross_entropy equals F.cross_entropy(label_smoothing=eps) for ids and soft targets, 1e-12."""
    z = torch.randn(16, 7, generator=gen(4), dtype=F64)
    y = torch.randint(0, 7, (16,), generator=gen(5))
    assert torch.allclose(R.smoothed_cross_entropy(z, y, eps), F.cross_entropy(z, y, label_smoothing=eps), atol=1e-12, rtol=0)
    q = torch.softmax(torch.randn(16, 7, generator=gen(6), dtype=F64), 1)
    assert torch.allclose(R.smoothed_cross_entropy(z, q, eps), F.cross_entropy(z, q, label_smoothing=eps), atol=1e-12, rtol=0)
    assert R.smoothed_targets(y, 7, eps, dtype=F64).dtype == F64 and R.smoothed_targets(y, 7, eps).dtype == torch.float32


def test_smoothed_targets_put_eps_over_k_on_every_class():
    """The true class gets 1 - eps + eps/K, the others eps/K (not eps/(K-1)); rows sum to 1."""
    q = R.smoothed_targets(torch.tensor([2, 0]), 4, 0.2)
    assert torch.allclose(q[0], torch.tensor([0.05, 0.05, 0.85, 0.05]))
    assert torch.allclose(q.sum(1), torch.ones(2))


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_smoothing_rejects_eps_outside_0_1(eps):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        R.smoothed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), eps)


def test_smoothed_cross_entropy_rejects_mismatched_shapes_and_bad_ids():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        R.smoothed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1, 2]), 0.1)
    with pytest.raises(ValueError, match="class ids"):
        R.smoothed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]), 0.1)
    with pytest.raises(ValueError, match="shape"):
        R.smoothed_cross_entropy(torch.zeros(2, 3), torch.full((2, 4), 0.25), 0.1)


def test_mixup_mixes_inputs_and_targets_with_one_lambda():
    """With labels 0..N-1, y_mix = lam I + (1 - lam) P for one lam and permutation P, and x_mix = y_mix @ x."""
    x = torch.randn(10, 3, generator=gen(7), dtype=F64)
    y = torch.arange(10)
    xm, ym = R.mixup(x, y, 0.4, 10, generator=gen(8))
    assert xm.shape == x.shape and ym.shape == (10, 10)
    assert torch.allclose(xm, ym @ x, atol=1e-12, rtol=0)                 # inputs mixed with the targets' weights
    assert torch.allclose(ym.sum(0), torch.ones(10, dtype=F64)) and torch.allclose(ym.sum(1), torch.ones(10, dtype=F64))
    assert (ym > 1e-12).sum(1).max() <= 2                         # each row mixes at most two examples
    assert len({round(v, 12) for v in ym.diagonal().tolist() if v < 1 - 1e-12}) <= 1   # one lam for the batch
    again = R.mixup(x, y, 0.4, 10, generator=gen(8))
    assert torch.equal(again[0], xm) and torch.equal(again[1], ym)


def test_mixup_lambda_follows_beta():
    """Over 4000 draws, E[lam] = 1/2 and Var[lam] = 1/(4(2 alpha + 1)), the moments of Beta(alpha, alpha)."""
    g = gen(9)
    lams = np.array([R._beta_sample(0.5, g) for _ in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.02
    assert abs(lams.var() - 1 / (4 * 2)) < 0.01


def test_mixup_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        R.mixup(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 0.0, 3)
    with pytest.raises(ValueError, match="rows"):
        R.mixup(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 0.2, 3)


def test_map_batches_transforms_every_pass_and_keeps_length():
    X, y = torch.arange(10.0)[:, None], torch.arange(10)
    loader = R.map_batches(tensor_loader(X, y, 4, shuffle=False), lambda a, b: (2 * a, b))
    assert len(loader) == 3
    for _ in range(2):
        assert torch.equal(torch.cat([a for a, _ in loader]), 2 * X)
    with pytest.raises(TypeError, match="re-iterable"):
        R.map_batches(iter([(X, y)]), lambda a, b: (a, b))


# ----------------------------------------------------------------------------- early stopping

def test_early_stopping_counts_patience_and_restores_the_best_weights():
    """Scores 1, 3, 2, 2.5, 2 with patience 3: stops at epoch 5 and restores the weights of epoch 2."""
    model = nn.Linear(2, 1)
    stopper = R.EarlyStopping(patience=3)
    stops = []
    for epoch, score in enumerate([1.0, 3.0, 2.0, 2.5, 2.0], 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(stopper.step(score, model))
    assert stops == [False, False, False, False, True]
    assert stopper.best == 3.0 and stopper.best_epoch == 2
    stopper.restore(model)
    assert torch.all(model.weight == 2.0)


def test_early_stopping_min_mode_and_min_delta():
    stopper = R.EarlyStopping(patience=1, mode="min", min_delta=0.1)
    m = nn.Linear(1, 1)
    assert not stopper.step(1.0, m)
    assert stopper.step(0.95, m)                                  # not better by more than 0.1
    assert stopper.best == 1.0


def test_early_stopping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        R.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match=">= 1"):
        R.EarlyStopping(patience=0)
    with pytest.raises(RuntimeError, match="step"):
        R.EarlyStopping().restore(nn.Linear(1, 1))
    with pytest.raises(ValueError, match="NaN"):
        R.EarlyStopping().step(float("nan"), nn.Linear(1, 1))


def test_fit_early_stopping_with_dlbook_fit():
    """fit_early_stopping runs fit one epoch at a time, numbers epochs 1..E, and leaves the best weights loaded."""
    from dlbook.train import evaluate
    torch.manual_seed(0)
    X = torch.randn(64, 4)
    y = (X[:, 0] > 0).long()
    y_noisy = torch.where(torch.rand(64) < 0.3, 1 - y, y)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    train, val = tensor_loader(X, y_noisy, 16), tensor_loader(X[:32], y[:32], 32, shuffle=False)
    stopper = R.EarlyStopping(patience=2)
    h = R.fit_early_stopping(model, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), 0.05), train, val,
                             max_epochs=30, stopper=stopper)
    assert [e["epoch"] for e in h.epochs] == list(range(1, len(h.epochs) + 1))
    assert len(h.epochs) == stopper.epoch and (stopper.should_stop or len(h.epochs) == 30)
    assert evaluate(model, val, nn.CrossEntropyLoss())["accuracy"] == pytest.approx(stopper.best)
    assert stopper.best == max(h.series("val_accuracy"))


# ----------------------------------------------------------------------------- calibration

def _ece_loop(probs, target, n_bins):
    """A slow, plain-Python ECE with bins (lo, hi] (the first also holding 0)."""
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if inside:
            acc = sum(float(pred[i] == target[i]) for i in inside) / len(inside)
            c = sum(float(conf[i]) for i in inside) / len(inside)
            total += len(inside) / len(conf) * abs(acc - c)
    return total


def test_ece_matches_a_plain_loop_and_a_hand_computed_case():
    """ECE equals a plain-Python loop over bins (1e-12), and 0.25 in a case worked by hand."""
    probs = torch.softmax(3 * torch.randn(200, 5, generator=gen(10), dtype=F64), 1)
    target = torch.randint(0, 5, (200,), generator=gen(11))
    for n_bins in (1, 10, 15):
        assert R.expected_calibration_error(probs, target, n_bins) == pytest.approx(_ece_loop(probs, target, n_bins), abs=1e-12)
    # Two predictions at confidence 0.75, one right and one wrong: |0.5 - 0.75| = 0.25.
    p = torch.tensor([[0.75, 0.25], [0.75, 0.25]], dtype=F64)
    assert R.expected_calibration_error(p, torch.tensor([0, 1]), 10) == pytest.approx(0.25)
    assert R.expected_calibration_error(p, torch.tensor([0, 0]), 10) == pytest.approx(0.25)   # overconfident the other way


def test_reliability_curve_bins_and_empty_bins():
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.58, 0.42]], dtype=F64)
    conf, acc, count = R.reliability_curve(probs, torch.tensor([0, 1, 0]), n_bins=5)
    assert count.tolist() == [0, 0, 2, 0, 1]                     # 0.55 and 0.58 in (0.4, 0.6]; 0.95 in (0.8, 1]
    assert torch.isnan(conf[0]) and conf[2].item() == pytest.approx(0.565) and acc[2].item() == pytest.approx(0.5)


def test_calibration_rejects_bad_arguments():
    probs, target = torch.full((3, 2), 0.5), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=">= 1"):
        R.expected_calibration_error(probs, target, 0)
    with pytest.raises(ValueError, match="softmax"):
        R.expected_calibration_error(torch.randn(3, 2), target)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        R.expected_calibration_error(probs, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        R.reliability_curve(probs, target.double())


def test_auroc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    g = gen(12)
    scores = torch.randint(0, 6, (300,), generator=g).double()      # many ties
    labels = torch.rand(300, generator=g) < 0.3 + 0.1 * scores
    assert R.auroc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    with pytest.raises(ValueError, match="positive and one negative"):
        R.auroc(scores, torch.ones(300, dtype=torch.bool))


def test_predictive_entropy_and_mc_dropout_keep_batch_norm_in_eval():
    """H(uniform) = log K; MC dropout varies across passes, leaves BN's running stats untouched and restores modes."""
    assert R.predictive_entropy(torch.full((2, 4), 0.25)).tolist() == pytest.approx([math.log(4)] * 2)
    assert R.predictive_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), R.Dropout(0.5), nn.Linear(16, 3))
    model.train()
    x = torch.randn(8, 4)
    before = model[1].running_mean.clone()
    probs = R.mc_dropout_predict(model, x, passes=20)
    assert probs.shape == (20, 8, 3)
    assert probs.std(0).max() > 0.01                              # the passes differ
    assert torch.equal(model[1].running_mean, before)           # BN was in eval mode
    assert model.training and model[3].training                 # modes restored
    with pytest.raises(ValueError, match="no dropout"):
        R.mc_dropout_predict(nn.Linear(4, 3), x)


# ----------------------------------------------------------------------------- augmentation

def test_shift_images_equals_roll_with_the_border_filled():
    """shift by (dy, dx) = torch.roll with the wrapped-around rows/columns set to fill."""
    x = torch.randn(3, 1, 8, 8, generator=gen(13))
    out = R.shift_images(x, torch.tensor([1, -2, 0]), torch.tensor([0, 1, -1]))
    ref = torch.roll(x[0], 1, dims=1); ref[:, :1] = 0
    assert torch.equal(out[0], ref)
    ref = torch.roll(x[1], (-2, 1), dims=(1, 2)); ref[:, -2:] = 0; ref[:, :, :1] = 0
    assert torch.equal(out[1], ref)
    assert torch.equal(R.shift_images(x.reshape(3, 64), 0, 0), x.reshape(3, 64))   # flat digits round-trip


def test_rotate_by_90_degrees_equals_rot90_and_0_is_identity():
    x = torch.randn(2, 3, 8, 8, generator=gen(14), dtype=F64)
    assert torch.allclose(R.rotate_images(x, 0.0), x, atol=1e-12, rtol=0)
    assert torch.allclose(R.rotate_images(x, 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-12, rtol=0)


def test_random_augmentation_keeps_shape_and_is_seeded():
    x = torch.rand(16, 64, generator=gen(15))
    a, b = R.augment_digits(x, generator=gen(1)), R.augment_digits(x, generator=gen(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(R.random_shift(x, 0), x)
    with pytest.raises(ValueError, match="flattened 8x8"):
        R.random_shift(torch.zeros(4, 10))
    with pytest.raises(ValueError, match="max_shift"):
        R.random_shift(x, -1)
    with pytest.raises(ValueError, match="one per image"):
        R.shift_images(x, torch.tensor([1, 2]), 0)


# ----------------------------------------------------------------------------- double descent

def test_ridge_regression_equals_lstsq_and_sklearn_ridge():
    """ridge 0 = numpy's minimum-norm lstsq (p > n and p < n); ridge > 0 = sklearn Ridge without intercept, 1e-8."""
    from sklearn.linear_model import Ridge
    g = gen(16)
    for n, p in ((20, 50), (50, 20)):
        Phi = torch.randn(n, p, generator=g, dtype=F64)
        Y = torch.randn(n, 3, generator=g, dtype=F64)
        ref = np.linalg.lstsq(Phi.numpy(), Y.numpy(), rcond=None)[0]
        assert np.allclose(R.ridge_regression(Phi, Y).numpy(), ref, atol=1e-8, rtol=0)
        ref = Ridge(alpha=0.3, fit_intercept=False, solver="cholesky").fit(Phi.numpy(), Y.numpy()).coef_.T
        assert np.allclose(R.ridge_regression(Phi, Y, 0.3).numpy(), ref, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="same n"):
        R.ridge_regression(torch.zeros(3, 2), torch.zeros(4))


def test_random_relu_features_are_fixed_by_the_seed():
    x = torch.randn(5, 4, generator=gen(17))
    a = R.random_relu_features(x, 30, seed=1)
    assert a.shape == (5, 30) and (a >= 0).all()
    assert torch.equal(a, R.random_relu_features(x, 30, seed=1))
    assert torch.allclose(a[:2], R.random_relu_features(x[:2], 30, seed=1))  # rows share W
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        R.random_relu_features(torch.zeros(3), 5)


def test_works_with_the_books_models():
    """decay_groups on NormMLP (book BN): hidden weights decayed, BN and biases not."""
    model = NormMLP(64, 10, hidden=(16,), norm="batch")
    groups = R.decay_groups(model, 0.01)
    assert sum(p.numel() for p in groups[0]["params"]) == 64 * 16 + 16 * 10
