"""dlbook.interpret against Captum (float64), and the properties each method promises."""

import pytest
import torch
from torch import nn

from dlbook import interpret

captum_attr = pytest.importorskip("captum.attr")
captum_robust = pytest.importorskip("captum.robust")

DT = torch.float64
# Captum warns when it switches on requires_grad for an input; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mlp(d_in=6, d_hidden=8, n_classes=4, seed=0, dropout=0.0):
    """A small smooth (tanh) classifier in float64: its gradients are nowhere exactly zero."""
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, d_hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(d_hidden, n_classes)]
    return nn.Sequential(*layers).to(DT).eval()


def data(n=5, d=6, n_classes=4, seed=1):
    x = torch.randn(n, d, generator=gen(seed), dtype=DT)
    y = torch.randint(0, n_classes, (n,), generator=gen(seed + 1))
    return x, y


# ----------------------------------------------------------------------------- FGSM and PGD

def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


def test_fgsm_equals_captum_fgsm_with_bounds():
    """fgsm = captum.robust.FGSM on the cross-entropy of the true label, clamped to [lo, hi], to 1e-12."""
    model, (x, y) = mlp(), data()
    assert _input_grad(model, x, y).abs().min() > 1e-6   # Captum leaves |grad| <= 1e-6 unmoved; we would not
    ref = captum_robust.FGSM(model, nn.CrossEntropyLoss(reduction="none"), lower_bound=-1.0, upper_bound=1.0)
    expected = ref.perturb(x, 0.3, y)
    got = interpret.fgsm(model, x, y, 0.3, lo=-1.0, hi=1.0)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert ((got - x).abs() > 0.29).any() and (got.abs() <= 1.0).all()


def test_fgsm_moves_every_coordinate_by_eps_along_the_gradient_sign():
    """Without bounds, x' - x = eps * sign(grad_x CE): the loss of the true label rises."""
    model, (x, y) = mlp(), data()
    got = interpret.fgsm(model, x, y, 0.05)
    torch.testing.assert_close(got - x, 0.05 * _input_grad(model, x, y).sign(), atol=1e-12, rtol=0)
    ce = nn.functional.cross_entropy
    assert ce(model(got), y) > ce(model(x), y)


def test_pgd_without_random_start_equals_captum_pgd():
    """pgd(random_start=False) = captum.robust.PGD (Linf, same radius, step and bounds) after 7 steps."""
    model, (x, y) = mlp(), data()
    ref = captum_robust.PGD(model, nn.CrossEntropyLoss(reduction="none"), lower_bound=-1.5, upper_bound=1.5)
    expected = ref.perturb(x, radius=0.2, step_size=0.05, step_num=7, target=y, random_start=False, norm="Linf")
    got = interpret.pgd(model, x, y, 0.2, alpha=0.05, steps=7, random_start=False, lo=-1.5, hi=1.5)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_pgd_with_one_step_of_size_eps_equals_fgsm():
    """steps=1, alpha=eps, no random start: PGD is FGSM (with and without a valid range)."""
    model, (x, y) = mlp(), data()
    for box in ({}, {"lo": -0.5, "hi": 0.5}):
        torch.testing.assert_close(interpret.pgd(model, x, y, 0.1, alpha=0.1, steps=1, random_start=False, **box),
                                   interpret.fgsm(model, x, y, 0.1, **box), atol=0, rtol=0)


def test_pgd_stays_in_ball_and_range_and_its_random_start_follows_the_generator():
    """||x' - x||_inf <= eps and lo <= x' <= hi; the same generator seed gives the same result, another does not."""
    model, (x, y) = mlp(), data()
    x = x.clamp(-1, 1)
    lo = torch.full((6,), -1.0, dtype=DT)                       # a per-feature bound (broadcasts)
    kw = dict(alpha=0.05, steps=2, lo=lo, hi=1.0)              # small steps: the random start still shows
    a, b, c = (interpret.pgd(model, x, y, 0.3, generator=gen(s), **kw) for s in (5, 5, 6))
    assert (a - x).abs().max() <= 0.3 + 1e-12 and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_raises_the_loss_at_least_as_much_as_fgsm_on_a_linear_model():
    """For a linear binary model FGSM is the exact maximizer in the ball; PGD reaches the same loss."""
    torch.manual_seed(0)
    model = nn.Linear(6, 2).to(DT)
    x, _ = data()
    y = torch.zeros(5, dtype=torch.long)
    ce = nn.functional.cross_entropy
    loss_f = ce(model(interpret.fgsm(model, x, y, 0.2)), y, reduction="none")
    loss_p = ce(model(interpret.pgd(model, x, y, 0.2, steps=20, generator=gen(0))), y, reduction="none")
    torch.testing.assert_close(loss_p, loss_f, atol=1e-9, rtol=0)


def test_attacks_use_eval_mode_restore_the_mode_and_leave_parameter_grads_alone():
    """With dropout, the attack equals the attack on the eval-mode model; train mode comes back; no .grad."""
    model, (x, y) = mlp(dropout=0.5), data()
    expected = interpret.fgsm(model.eval(), x, y, 0.1)
    model.train()
    torch.manual_seed(123)
    assert torch.equal(interpret.fgsm(model, x, y, 0.1), expected)
    p = interpret.pgd(model, x, y, 0.1, steps=3, generator=gen(0))
    assert model.training and all(m.training for m in model.modules())
    assert all(q.grad is None for q in model.parameters())
    with torch.no_grad():                                       # works inside no_grad too
        assert torch.equal(interpret.pgd(model, x, y, 0.1, steps=3, generator=gen(0)), p)


def test_attack_arguments_are_checked():
    """eps < 0, alpha <= 0, steps < 1, labels out of range or of the wrong shape, lo > hi, integer x: clear errors."""
    model, (x, y) = mlp(), data()
    with pytest.raises(ValueError, match="eps"):
        interpret.fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="eps"):
        interpret.pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="steps"):
        interpret.pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="alpha"):
        interpret.pgd(model, x, y, 0.1, alpha=0.0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        interpret.fgsm(model, x, torch.full((5,), 4), 0.1)
    with pytest.raises(ValueError, match="shape"):
        interpret.fgsm(model, x, y[:3], 0.1)
    with pytest.raises(ValueError, match="lo"):
        interpret.fgsm(model, x, y, 0.1, lo=1.0, hi=0.0)
    with pytest.raises(TypeError, match="floating"):
        interpret.fgsm(model, x.long(), y, 0.1)
    with pytest.raises(TypeError, match="integer"):
        interpret.fgsm(model, x, y.double(), 0.1)
    with pytest.raises(TypeError, match="generator"):
        interpret.pgd(model, x, y, 0.1, generator=0)


# ----------------------------------------------------------------------------- gradient attributions

def cnn(seed=0):
    """A small CNN on (N, 1, 8, 8) in float64, with ReLU and max-pooling: a piecewise-linear model."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 5)).to(DT).eval()


def images(n=3, seed=2):
    return torch.randn(n, 1, 8, 8, generator=gen(seed), dtype=DT)


TARGET = torch.tensor([0, 3, 1])


@pytest.mark.parametrize("absolute", [False, True])
def test_saliency_equals_captum_saliency(absolute):
    """saliency = captum Saliency (signed with abs=False, absolute with abs=True) to 1e-12."""
    model, x = cnn(), images()
    expected = captum_attr.Saliency(model).attribute(x, target=TARGET, abs=absolute)
    torch.testing.assert_close(interpret.saliency(model, x, TARGET, absolute=absolute), expected, atol=1e-12, rtol=0)


def test_input_x_gradient_equals_captum_and_is_the_exact_share_for_a_linear_model():
    """input_x_gradient = captum InputXGradient; for a linear logit it is w_t * x exactly."""
    model, x = cnn(), images()
    expected = captum_attr.InputXGradient(model).attribute(x, target=TARGET)
    torch.testing.assert_close(interpret.input_x_gradient(model, x, TARGET), expected, atol=1e-12, rtol=0)
    lin, (xf, _) = nn.Linear(6, 4).to(DT), data()
    torch.testing.assert_close(interpret.input_x_gradient(lin, xf, 2), lin.weight[2].detach() * xf, atol=1e-12, rtol=0)


def test_attributions_explain_the_logit_in_eval_mode():
    """With dropout in the model, attributions equal those of the eval-mode model; the mode is restored."""
    model, (x, y) = mlp(dropout=0.5), data()
    expected = interpret.saliency(model.eval(), x, y)
    model.train()
    assert torch.equal(interpret.saliency(model, x, y), expected) and model.training
    logit = lambda v: model.eval()(v).gather(1, y[:, None]).sum()      # the logit, not the softmax output
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(expected, torch.autograd.grad(logit(xg), xg)[0], atol=1e-12, rtol=0)


def test_smoothgrad_equals_captum_noise_tunnel_given_the_same_noise(monkeypatch):
    """smoothgrad = NoiseTunnel(Saliency(abs=False), 'smoothgrad') when Captum is fed our noise; the noise is
    randn((N, n_samples, *F), generator) * sigma, interleaved per example."""
    model, x, n_samples, sigma = cnn(), images(), 6, 0.3
    ours = interpret.smoothgrad(model, x, TARGET, n_samples=n_samples, sigma=sigma, generator=gen(9))
    noise = sigma * torch.randn((3, n_samples, 1, 8, 8), generator=gen(9), dtype=DT).reshape(3 * n_samples, 1, 8, 8)
    monkeypatch.setattr(torch, "normal", lambda mean, std: noise)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    expected = nt.attribute(x, nt_type="smoothgrad", nt_samples=n_samples, stdevs=sigma, target=TARGET, abs=False)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    assert not torch.allclose(ours, interpret.saliency(model, x, TARGET))          # the noise did something
    torch.testing.assert_close(interpret.smoothgrad(model, x, TARGET, 3, 0.0), interpret.saliency(model, x, TARGET))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_integrated_gradients_equals_captum(method):
    """IG and its completeness error = captum IntegratedGradients with the same method and steps, to 1e-6 (not
    1e-12: Captum's quadrature points and weights pass through float32, a relative difference of about 3e-8)."""
    tol = 1e-6
    model, x = cnn(), images()
    base = 0.1 * images(seed=7)
    expected, delta = captum_attr.IntegratedGradients(model).attribute(
        x, base, target=TARGET, n_steps=20, method=method, return_convergence_delta=True)
    got, err = interpret.integrated_gradients(model, x, TARGET, base, steps=20, method=method, return_error=True)
    torch.testing.assert_close(got, expected, atol=tol, rtol=0)
    torch.testing.assert_close(err, delta, atol=tol * 10, rtol=0)


def test_trapezoid_is_the_textbook_rule_and_captums_is_n_minus_1_over_n_of_it():
    """Our riemann_trapezoid weights sum to 1; Captum's (1/n, ends halved) give exactly (n-1)/n of our attributions."""
    model, x, n = cnn(), images(), 10
    alphas, weights = interpret.ig_weights(n)
    assert abs(weights.sum().item() - 1) < 1e-15 and alphas[0] == 0 and alphas[-1] == 1
    expected = captum_attr.IntegratedGradients(model).attribute(x, target=TARGET, n_steps=n, method="riemann_trapezoid")
    torch.testing.assert_close(interpret.integrated_gradients(model, x, TARGET, steps=n) * (n - 1) / n, expected,
                               atol=1e-6, rtol=0)


def test_integrated_gradients_completeness_error_shrinks_with_steps():
    """On a smooth model the trapezoid's completeness error falls about 1/n^2: 16x more steps, < 1/50 of the error;
    batching the path points changes nothing."""
    model, (x, y) = mlp(), data()
    errors = [interpret.integrated_gradients(model, x, y, steps=n, return_error=True)[1].abs().max().item()
              for n in (4, 64)]
    assert errors[1] < errors[0] / 50 and errors[1] < 1e-4, errors
    attr = interpret.integrated_gradients(model, x, y, steps=64)
    torch.testing.assert_close(attr.sum(1), (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None])[:, 0],
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(interpret.integrated_gradients(model, x, y, steps=64, batch_size=7), attr,
                               atol=1e-12, rtol=0)


def test_integrated_gradients_of_a_linear_model_is_exact_with_any_rule():
    """f linear: IG = w_t * (x - x') for every method and any number of steps, with zero completeness error."""
    lin, (x, _) = nn.Linear(6, 4).to(DT), data()
    base = torch.full((6,), 0.5, dtype=DT)
    for method in interpret.IG_METHODS:
        attr, err = interpret.integrated_gradients(lin, x, 1, base, steps=3, method=method, return_error=True)
        torch.testing.assert_close(attr, lin.weight[1].detach() * (x - base), atol=1e-12, rtol=0)
        assert err.abs().max() < 1e-12


def test_gradient_attribution_arguments_are_checked():
    """steps < 1 (or < 2 for the trapezoid), unknown method, target out of range, baseline of the wrong shape."""
    model, x = cnn(), images()
    with pytest.raises(ValueError, match="steps"):
        interpret.integrated_gradients(model, x, TARGET, steps=0, method="riemann_left")
    with pytest.raises(ValueError, match="steps"):
        interpret.integrated_gradients(model, x, TARGET, steps=1)
    with pytest.raises(ValueError, match="method"):
        interpret.integrated_gradients(model, x, TARGET, method="simpson")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        interpret.saliency(model, x, 5)
    with pytest.raises(ValueError, match="target"):
        interpret.input_x_gradient(model, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="baseline"):
        interpret.integrated_gradients(model, x, TARGET, baseline=torch.zeros(1, 8, 7, dtype=DT))
    with pytest.raises(ValueError, match="n_samples"):
        interpret.smoothgrad(model, x, TARGET, n_samples=0)
    with pytest.raises(ValueError, match="sigma"):
        interpret.smoothgrad(model, x, TARGET, sigma=-1.0)


# ----------------------------------------------------------------------------- perturbation attributions

@pytest.mark.parametrize("window,stride", [((2, 2), 1), ((3, 3), 2), ((1, 4, 2), (1, 2, 2))])
def test_occlusion_equals_captum_occlusion(window, stride):
    """occlusion = captum Occlusion (same patches, cropped at the border; mean drop of the logit per feature),
    to 1e-6 because Captum returns float32 here."""
    model, x = cnn(), images()
    base = 0.5 * images(n=1, seed=4)[0]
    full_window = window if len(window) == 3 else (1, *window)
    full_stride = stride if isinstance(stride, tuple) else (1, stride, stride)
    expected = captum_attr.Occlusion(model).attribute(x, full_window, full_stride, baselines=base, target=TARGET)
    got = interpret.occlusion(model, x, TARGET, window, stride, baseline=base, batch_size=17)
    # Captum averages with a float32 count of patches, so its result is float32: compare at float32 precision
    torch.testing.assert_close(got, expected.double(), atol=1e-6, rtol=0)


def test_occlusion_of_a_linear_model_with_one_feature_patches_is_the_exact_share():
    """A 1-feature window on a linear logit: each attribution is w_i (x_i - b_i), the drop when x_i is hidden."""
    lin, (x, _) = nn.Linear(6, 4).to(DT), data()
    torch.testing.assert_close(interpret.occlusion(lin, x, 3, 1, baseline=0.25),
                               lin.weight[3].detach() * (x - 0.25), atol=1e-12, rtol=0)
    masks = interpret.occlusion_masks((1, 8, 8), 3, 2)
    assert masks.shape == (16, 1, 8, 8) and (masks.sum(0) >= 1).all()   # 4 x 4 patches, every pixel covered
    with pytest.raises(ValueError, match="larger"):
        interpret.occlusion_masks((1, 8, 8), 9)
    with pytest.raises(ValueError, match="stride"):
        interpret.occlusion_masks((1, 8, 8), 2, 3)


class _Unused(nn.Module):
    """Logits that depend on features 0 and 1 only: features 2.. have importance exactly zero."""

    def forward(self, X):
        return torch.stack([X[:, 0] + X[:, 1], -X[:, 0] + 0.2 * X[:, 1]], dim=1)


def test_permutation_importance_agrees_with_scikit_learn():
    """Same model, data and metric: mean importances agree with sklearn.inspection.permutation_importance within
    four standard errors of the difference (200 repeats each); unused features get exactly 0 in both."""
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    X = torch.randn(150, 4, generator=gen(0), dtype=DT)
    model = _Unused()
    y = (model(X + 0.7 * torch.randn(150, 4, generator=gen(1), dtype=DT)).argmax(1))

    class Wrapped:                                                # scikit-learn's view of the same model
        def fit(self, *args):
            return self

    scorer = lambda est, Xn, yn: float((model(torch.from_numpy(Xn)).argmax(1).numpy() == yn).mean())
    ref = sk_permutation_importance(Wrapped(), X.numpy(), y.numpy(), scoring=scorer, n_repeats=200, random_state=0)
    ours = interpret.permutation_importance(model, X, y, n_repeats=200, generator=gen(0))
    se = (ours.std ** 2 / 200 + torch.from_numpy(ref.importances_std) ** 2 / 200).sqrt()
    diff = (ours.mean - torch.from_numpy(ref.importances_mean)).abs()
    assert (diff[:2] < 4 * se[:2]).all(), (ours.mean, ref.importances_mean)
    assert ours.mean[0] > 0.1 and ours.mean[1] > 0.05                  # the used features matter
    assert (ours.values[2:] == 0).all() and (ref.importances[2:] == 0).all()
    assert ours.values.shape == (4, 200)
    assert abs(ours.baseline_score - scorer(None, X.numpy(), y.numpy())) < 1e-12
    with pytest.raises(ValueError, match="one target per row"):
        interpret.permutation_importance(model, X, y[:-1])


def test_deletion_curve_equals_a_loop_that_deletes_one_feature_at_a_time():
    """deletion_curve = a plain loop over k (delete the k features with the largest attribution), and insertion
    ends where deletion starts."""
    model, (x, y) = mlp(), data(n=2)
    attr = interpret.saliency(model, x, y)
    got = interpret.deletion_curve(model, x, y, attr, baseline=-0.5, per_step=2)
    order = attr.argsort(dim=1, descending=True, stable=True)
    for i in range(2):
        for k in range(4):
            xk = x[i].clone()
            xk[order[i, : 2 * k]] = -0.5
            torch.testing.assert_close(got[i, k], model(xk[None]).softmax(-1)[0, y[i]], atol=1e-12, rtol=0)
    ins = interpret.deletion_curve(model, x, y, attr, baseline=-0.5, per_step=2, insertion=True)
    torch.testing.assert_close(ins[:, -1], got[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(ins[:, 0], got[:, -1], atol=1e-12, rtol=0)


def test_rank_correlation_equals_scipy_spearman_with_ties():
    """rank_correlation = scipy.stats.spearmanr per row, ties included; invariant to monotone rescaling."""
    from scipy.stats import spearmanr

    a = torch.randint(0, 5, (4, 12), generator=gen(0)).to(DT)          # many ties
    b = torch.randn(4, 12, generator=gen(1), dtype=DT).round()
    got = interpret.rank_correlation(a.view(4, 3, 4), b.view(4, 3, 4))
    expected = torch.tensor([spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(4)], dtype=DT)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert abs(interpret.rank_correlation(b[0], b[0].exp()).item() - 1) < 1e-12
    with pytest.raises(ValueError, match="same shape"):
        interpret.rank_correlation(a, b[:, :5])


# ----------------------------------------------------------------------------- probing

def tiny_gpt(pos="learned"):
    from dlbook.transformer import GPT

    torch.manual_seed(0)
    model = GPT(11, block_size=8, n_layer=2, n_head=2, n_embd=8, pos=pos)
    model.reset_parameters(std=0.3)                                  # attention far from uniform
    return model.to(DT).eval()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_gpt_hidden_states_are_the_residual_stream(pos):
    """Layer 0 = token + position embedding; the last layer through ln_f and the head gives the model's logits."""
    model = tiny_gpt(pos)
    idx = torch.randint(0, 11, (3, 8), generator=gen(0))
    states = interpret.gpt_hidden_states(model, idx)
    assert states.shape == (3, 3, 8, 8)
    emb = model.tok_emb(idx) + (model.pos_emb(torch.arange(8)) if model.pos_emb is not None else 0)
    torch.testing.assert_close(states[0], emb, atol=1e-12, rtol=0)
    torch.testing.assert_close(model.head(model.ln_f(states[-1])), model(idx)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_gpt_attention_reproduces_each_attention_module(pos):
    """weights @ v, merged and projected, equals what each attention module returned; rows sum to 1, causal."""
    model = tiny_gpt(pos)
    idx = torch.randint(0, 11, (2, 8), generator=gen(1))
    maps = interpret.gpt_attention(model, idx)
    assert maps.shape == (2, 2, 2, 8, 8)
    inputs, outputs = [], []
    def keep(module, args, output):
        inputs.append(args[0])
        outputs.append(output)

    hooks = [b.attn.register_forward_hook(keep) for b in model.blocks]
    model(idx)
    for h in hooks:
        h.remove()
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        v = attn.split_heads(attn.qkv(inputs[layer]).split(8, dim=-1)[2])
        torch.testing.assert_close(attn.proj(attn.merge_heads(maps[layer] @ v)), outputs[layer], atol=1e-12, rtol=0)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 2, 8, dtype=DT), atol=1e-12, rtol=0)
    assert (maps.triu(1) == 0).all()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_gpt_head_outputs_weighted_by_attention_give_each_attention_module_output(pos):
    """sum over heads h and keys j of alpha_hij * (W_O^h v_j), plus the bias, is the module's output to 1e-12."""
    model = tiny_gpt(pos)
    idx = torch.randint(0, 11, (2, 8), generator=gen(2))
    maps, heads = interpret.gpt_attention(model, idx), interpret.gpt_head_outputs(model, idx)
    assert heads.shape == (2, 2, 2, 8, 8)                                   # (L, B, H, T, C)
    outputs = []
    hooks = [b.attn.register_forward_hook(lambda m, a, out: outputs.append(out)) for b in model.blocks]
    model(idx)
    for h in hooks:
        h.remove()
    for layer, block in enumerate(model.blocks):
        mixed = torch.einsum("bhij,bhjc->bic", maps[layer], heads[layer]) + block.attn.proj.bias
        torch.testing.assert_close(mixed, outputs[layer], atol=1e-12, rtol=0)
    with pytest.raises(TypeError, match="GPT"):
        interpret.gpt_head_outputs(torch.nn.Linear(2, 2), idx)


def test_linear_probe_equals_scikit_learn_logistic_regression():
    """Same data and penalty (C = 1 / (lambda n)): the probe's weights and probabilities match sklearn to 1e-5."""
    from sklearn.linear_model import LogisticRegression

    X = torch.randn(120, 5, generator=gen(0), dtype=DT)
    y = (X[:, 0] + X[:, 1] ** 2 > 1).long() + (X[:, 2] > 0.8).long()      # 3 classes
    mask = torch.zeros(120, dtype=torch.bool)
    mask[90:] = True
    probe = interpret.linear_probe(X, y, test_mask=mask, l2=0.05, standardize=False, max_iter=500)
    ref = LogisticRegression(C=1 / (0.05 * 90), tol=1e-12, max_iter=5000).fit(X[:90].numpy(), y[:90].numpy())
    torch.testing.assert_close(probe.model[1].weight.detach(), torch.from_numpy(ref.coef_), atol=1e-5, rtol=0)
    torch.testing.assert_close(probe.model(X).softmax(-1).detach(), torch.from_numpy(ref.predict_proba(X.numpy())),
                               atol=1e-5, rtol=0)
    assert abs(probe.test_accuracy - ref.score(X[90:].numpy(), y[90:].numpy())) < 1e-12


def test_mlp_probe_decodes_what_a_linear_probe_cannot():
    """XOR of two signs is invisible to a linear probe (about chance) but an MLP probe reads it off (> 0.9)."""
    X = torch.randn(400, 2, generator=gen(3))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).long()
    linear = interpret.linear_probe(X, y, l2=1e-3)
    mlp_probe = interpret.linear_probe(X, y, hidden=16, l2=1e-4, max_iter=100)
    assert linear.test_accuracy < 0.65 and mlp_probe.test_accuracy > 0.9, (linear, mlp_probe)
    with pytest.raises(ValueError, match="labels"):
        interpret.linear_probe(X, y[:-1])
    with pytest.raises(ValueError, match="test_frac"):
        interpret.linear_probe(X, y, test_frac=1.0)
