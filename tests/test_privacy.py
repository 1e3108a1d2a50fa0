"""Tests for dlbook.privacy: each from-scratch piece against Opacus 1.6, torch, or exact arithmetic."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dlbook import privacy as P


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def _data(n=10, d=6, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)


class _Mixed(nn.Module):
    """Conv2d, GroupNorm, LayerNorm, Embedding and linear layers with and without a sequence axis."""

    def __init__(self, seq_out=8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.emb = nn.Embedding(5, 4)
        self.seq = nn.Linear(4, seq_out)
        self.ln = nn.LayerNorm(seq_out)
        self.conv1 = nn.Conv1d(seq_out, 3, 2)
        self.head = nn.Linear(4 * 16 + 3 * 2, 3)

    def forward(self, x):
        img, ids = x[:, :16].reshape(-1, 1, 4, 4), x[:, 16:].long()
        a = self.gn(torch.relu(self.conv(img))).flatten(1)                  # (B, 64)
        s = self.ln(torch.tanh(self.seq(self.emb(ids))))                    # (B, 3, seq_out): a sequence axis
        c = self.conv1(s.transpose(1, 2)).flatten(1)                        # (B, 6)
        return self.head(torch.cat([a, c], 1))


def _mixed_data(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 5, (n, 3), generator=g).double()
    ids[0] = torch.tensor([1.0, 1.0, 2.0])   # a repeated token: the embedding's rows must add up
    return torch.cat([img, ids], 1), torch.randint(0, 3, (n,), generator=g)


# ----------------------------------------------------------------------------- per-example gradients

def test_per_sample_grads_equal_a_loop_of_backward_calls_float64():
    """vmap(grad) per-example gradients equal one backward per example, to 1e-12."""
    model, (x, y) = _mlp(), _data()
    got = P.per_sample_grads(model, F.cross_entropy, x, y)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[name][i], p.grad, atol=1e-12, rtol=0)


def test_clip_and_noise_clips_each_example_then_sums():
    """Each example is scaled to norm <= C before the sum; with noise 0 the sum equals the manual one."""
    model, (x, y) = _mlp(), _data()
    g = P.per_sample_grads(model, F.cross_entropy, x, y)
    norms = P.per_example_norms(g)
    assert norms.shape == (len(x),)
    C = float(norms.median())
    out = P.clip_and_noise(g, C, 0.0)
    factor = torch.clamp(C / (norms + 1e-6), max=1.0)
    for name in g:
        torch.testing.assert_close(out[name], (g[name] * factor.view(-1, *[1] * (g[name].dim() - 1))).sum(0))
    # the clipped per-example norms are at most C, so the sum's norm is at most B * C
    total = torch.sqrt(sum(v.pow(2).sum() for v in out.values()))
    assert total <= len(x) * C + 1e-9


def test_clip_and_noise_noise_has_std_sigma_times_c():
    """The added noise has standard deviation sigma * C (measured over 200k coordinates, 2%)."""
    zeros = [torch.zeros(2, 100_000, dtype=torch.float64)]
    out = P.clip_and_noise(zeros, 3.0, 0.5, torch.Generator().manual_seed(0))[0]
    assert abs(out.std().item() / 1.5 - 1) < 0.02


def _opacus_step(model, x, y, C, lr, expected):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    warnings.filterwarnings("ignore")
    gsm = GradSampleModule(model)
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=lr), noise_multiplier=0.0, max_grad_norm=C,
                      expected_batch_size=expected)
    opt.zero_grad()
    F.cross_entropy(gsm(x), y).backward()
    opt.step()
    return gsm._module


def _gn_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.GroupNorm(2, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("make,data", [(_mlp, _data), (_gn_mlp, _data), (lambda: _Mixed().double(), _mixed_data)])
def test_one_noiseless_dp_step_equals_opacus(make, data):
    """With noise 0, one step of dp_sgd_step and of DPSGD equals Opacus's DPOptimizer step (1e-10, float64)."""
    x, y = data()
    C, lr, expected = 0.3, 0.5, 8.0       # C small enough that most examples are clipped
    ref = _opacus_step(make(), x, y, C, lr, expected)
    m1 = make()
    P.dp_sgd_step(m1, F.cross_entropy, x, y, torch.optim.SGD(m1.parameters(), lr=lr), C, 0.0, expected)
    m2 = make()
    opt = P.DPSGD(m2, lr=lr, max_norm=C, noise_multiplier=0.0, expected_batch_size=expected)
    opt.zero_grad()
    F.cross_entropy(m2(x), y).backward()
    opt.step()
    start = dict(make().named_parameters())
    for name, p in ref.named_parameters():
        assert (p - start[name]).abs().max() > 1e-6, f"{name} did not move: the comparison would be empty"
        torch.testing.assert_close(dict(m1.named_parameters())[name], p, atol=1e-10, rtol=0)
        torch.testing.assert_close(dict(m2.named_parameters())[name], p, atol=1e-10, rtol=0)


@pytest.mark.parametrize("seq_out", [8, 40])
def test_dpsgd_norms_equal_materialized_norms(seq_out):
    """DPSGD's per-example norms (ghost Gram path for seq_out=8, materialized for 40) equal vmap's."""
    model = _Mixed(seq_out=seq_out).double()
    x, y = _mixed_data()
    ref = P.per_example_norms(P.per_sample_grads(model, F.cross_entropy, x, y))
    opt = P.DPSGD(model, lr=0.0, max_norm=1.0, noise_multiplier=0.0, expected_batch_size=6)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    torch.testing.assert_close(opt.last_norms, ref, atol=1e-10, rtol=0)


def test_dpsgd_trains_with_fit_on_poisson_batches():
    """DPSGD works as fit's optimizer on poisson_loader batches, counts steps and reports epsilon."""
    from dlbook.train import fit

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 2, generator=g)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    q = 0.1
    opt = P.DPSGD(model, lr=0.5, max_norm=1.0, noise_multiplier=0.5, expected_batch_size=q * 400,
                  generator=torch.Generator().manual_seed(1), sample_rate=q)
    fit(model, nn.CrossEntropyLoss(), opt, P.poisson_loader(X, y, q, seed=0), epochs=5, progress=False)
    assert opt.steps == 50
    acc = (model(X).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    assert opt.epsilon(1e-5) == pytest.approx(P.epsilon(0.5, q, 50, 1e-5))


def test_poisson_loader_samples_each_example_with_rate_q():
    """Batch sizes average q N (binomial), and every example is included about q of the time."""
    X, y = torch.arange(1000.0)[:, None], torch.zeros(1000, dtype=torch.long)
    loader = P.poisson_loader(X, y, 0.05, steps=200, seed=0)
    sizes = [len(b[0]) for b in loader]
    assert len(sizes) == 200 and abs(np.mean(sizes) / 50 - 1) < 0.03
    assert len(set(sizes)) > 5   # the sizes vary: it is not a fixed-size loader


def test_dpsgd_refuses_batchnorm_and_tied_weights():
    """BatchNorm mixes examples and tied weights break the norm sum: both are refused with TypeError."""
    with pytest.raises(TypeError, match="BatchNorm1d"):
        P.DPSGD(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 0.1, 1.0, 1.0, 10)
    from dlbook.transformer import GPT
    with pytest.raises(TypeError, match="shared"):
        P.DPSGD(GPT(10, 8, n_layer=1, n_head=1, n_embd=8), 0.1, 1.0, 1.0, 10)


# ----------------------------------------------------------------------------- accounting

GRID = [(sigma, q, steps, delta) for sigma in (0.6, 1.0, 2.5) for q in (0.004, 0.05, 0.3)
        for steps, delta in ((10, 1e-5), (1000, 1e-7))]


def test_epsilon_equals_opacus_rdp_accountant_over_a_grid():
    """epsilon() equals Opacus's RDPAccountant within 1% relative on 18 (sigma, q, steps, delta) settings."""
    from opacus.accountants import RDPAccountant

    worst = 0.0
    for sigma, q, steps, delta in GRID:
        acc = RDPAccountant()
        acc.history = [(sigma, q, steps)]
        ref = acc.get_epsilon(delta)
        worst = max(worst, abs(P.epsilon(sigma, q, steps, delta) / ref - 1))
    assert worst < 0.01, worst


def test_rdp_of_full_batch_is_the_gaussian_and_composes_additively():
    """q = 1 gives alpha / (2 sigma^2) exactly; T steps cost T times one step."""
    orders = [2, 4.5, 32]
    np.testing.assert_allclose(P.rdp_sampled_gaussian(1.0, 2.0, orders), np.array(orders) / 8)
    one = P.rdp_sampled_gaussian(0.01, 1.0)
    assert P.epsilon(1.0, 0.01, 100, 1e-5) == pytest.approx(P.rdp_to_epsilon(100 * one, P.DEFAULT_ORDERS, 1e-5))


def test_noise_for_epsilon_inverts_epsilon():
    """The sigma found reaches the target epsilon from below, within 1%."""
    sigma = P.noise_for_epsilon(2.0, 0.02, 500, 1e-5)
    assert P.epsilon(sigma, 0.02, 500, 1e-5) <= 2.0
    assert P.epsilon(sigma * 0.99, 0.02, 500, 1e-5) > 2.0 * 0.99


@pytest.mark.parametrize("call", [
    lambda: P.epsilon(1.0, 0.0, 10, 1e-5), lambda: P.epsilon(1.0, 1.5, 10, 1e-5),
    lambda: P.epsilon(0.0, 0.1, 10, 1e-5), lambda: P.epsilon(-1.0, 0.1, 10, 1e-5),
    lambda: P.epsilon(1.0, 0.1, 10, 0.0), lambda: P.epsilon(1.0, 0.1, 10, 1.0),
    lambda: P.clip_and_noise([torch.zeros(2, 3)], 0.0, 1.0), lambda: P.clip_and_noise([torch.zeros(2, 3)], 1.0, -1.0),
    lambda: P.DPSGD(_mlp(), 0.1, -1.0, 1.0, 10), lambda: P.poisson_loader(torch.zeros(3), torch.zeros(3), 0.0),
    lambda: P.gaussian_sigma(1.0, 2.0, 1e-5), lambda: P.laplace_mechanism(1.0, 1.0, 0.0),
    lambda: P.Paillier(64).encrypt(-1), lambda: P.rdp_to_epsilon([1.0], [0.5], 1e-5),
])
def test_bad_arguments_raise_value_error(call):
    """Sample rates outside (0, 1], sigma <= 0 for accounting, delta outside (0, 1), C <= 0, classic Gaussian
    with epsilon >= 1, plaintexts out of range and orders <= 1 raise ValueError."""
    with pytest.raises(ValueError):
        call()


def test_bad_types_raise_type_error():
    """Non-number sample rates, non-module models and float plaintexts raise TypeError."""
    with pytest.raises(TypeError):
        P.epsilon(1.0, "0.1", 10, 1e-5)
    with pytest.raises(TypeError):
        P.per_sample_grads("model", F.cross_entropy, torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(TypeError):
        P.Paillier(64).encrypt(1.5)


# ----------------------------------------------------------------------------- mechanisms

def test_laplace_mechanism_has_scale_sensitivity_over_epsilon():
    """Laplace noise with b = Delta / eps: mean absolute deviation b (1.5% over 200k draws), unbiased."""
    out = P.laplace_mechanism(torch.full((200_000,), 10.0, dtype=torch.float64), 2.0, 0.5,
                              torch.Generator().manual_seed(0))
    assert abs((out - 10).abs().mean().item() / 4.0 - 1) < 0.015
    assert abs(out.mean().item() - 10) < 0.05


def test_gaussian_sigma_classic_and_analytic():
    """Classic sigma = Delta sqrt(2 ln(1.25/delta)) / eps; the analytic sigma is smaller and meets delta exactly."""
    assert P.gaussian_sigma(2.0, 0.5, 1e-5) == pytest.approx(2.0 * math.sqrt(2 * math.log(1.25e5)) / 0.5)
    for eps in (0.5, 3.0):
        s = P.gaussian_sigma(1.0, eps, 1e-5, analytic=True)
        phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))
        d = phi(1 / (2 * s) - eps * s) - math.exp(eps) * phi(-1 / (2 * s) - eps * s)
        assert d == pytest.approx(1e-5, rel=1e-6)
    assert P.gaussian_sigma(1.0, 0.5, 1e-5, analytic=True) < P.gaussian_sigma(1.0, 0.5, 1e-5)
    out = P.gaussian_mechanism(torch.zeros(100_000, dtype=torch.float64), 1.0, 0.5, 1e-5,
                               torch.Generator().manual_seed(0))
    assert abs(out.std().item() / P.gaussian_sigma(1.0, 0.5, 1e-5) - 1) < 0.01


# ----------------------------------------------------------------------------- attacks

def test_roc_auc_equals_sklearn_and_curve_ends_at_corners():
    """roc_auc equals sklearn's roc_auc_score (ties included); the curve runs from (0, 0) to (1, 1)."""
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 20, (50,), generator=g).double() + 2, torch.randint(0, 20, (70,), generator=g).double()
    ref = roc_auc_score(np.r_[np.ones(50), np.zeros(70)], np.r_[pos.numpy(), neg.numpy()])
    assert P.roc_auc(pos, neg) == pytest.approx(ref, abs=1e-12)
    f, t = P.roc_curve(pos, neg)
    assert (f[0], t[0], f[-1], t[-1]) == (0, 0, 1, 1) and bool((f[1:] >= f[:-1]).all())
    assert P.tpr_at_fpr(torch.tensor([5.0, 4.0]), torch.tensor([4.5, 1.0]), 0.0) == 0.5


def test_membership_inference_auc_detects_memorization():
    """An overfit model's training points have lower loss than fresh points: AUC > 0.8; identical sets give 0.5."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(80, 20, generator=g), torch.randint(0, 2, (80,), generator=g)   # random labels
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(X[:40]), y[:40]).backward()
        opt.step()
    assert P.membership_inference_auc(model, (X[:40], y[:40]), (X[40:], y[40:])) > 0.8
    assert P.membership_inference_auc(model, (X[:40], y[:40]), (X[:40], y[:40])) == 0.5


def test_exposure_from_ranks():
    """Rank 1 among 2^k - 1 candidates gives exposure k; a middle rank gives about 1."""
    assert P.exposure(10.0, torch.arange(1023.0) - 2000) == pytest.approx(10.0)
    assert P.exposure(0.0, torch.linspace(-1, 1, 1023)) == pytest.approx(math.log2(1024 / 512), abs=0.01)


def test_canary_exposure_scores_only_the_secret_part():
    """With a model that prefers token 1 everywhere, the all-ones canary has maximal exposure."""
    class Prefers1(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            logits = torch.zeros(*ids.shape, 4)
            logits[..., 1] = 3.0
            return logits + self.w

    canary = torch.tensor([0, 2, 1, 1, 1])
    g = torch.Generator().manual_seed(0)
    cands = torch.cat([torch.tensor([[0, 2]]).expand(63, 2), torch.randint(0, 4, (63, 3), generator=g)], 1)
    cands = cands[~(cands == canary).all(1)]
    assert P.canary_exposure(Prefers1(), canary, cands, prefix_len=2) == pytest.approx(math.log2(len(cands) + 1))


# ----------------------------------------------------------------------------- encryption and secure aggregation

def test_paillier_round_trip_and_homomorphic_sums_are_exact():
    """Decrypt(Encrypt(m)) = m; the product of ciphertexts decrypts to the sum mod n; E(a)^k to k a mod n."""
    he = P.Paillier(128, seed=0)
    rng = np.random.default_rng(0)
    ms = [int(v) for v in rng.integers(0, 2 ** 62, 20)]
    cs = [he.encrypt(m) for m in ms]
    assert [he.decrypt(c) for c in cs] == ms
    total = cs[0]
    for c in cs[1:]:
        total = he.add(total, c)
    assert he.decrypt(total) == sum(ms) % he.n
    assert he.decrypt(he.mul_plain(cs[0], 7)) == 7 * ms[0] % he.n
    assert he.encrypt(5) != he.encrypt(5)   # randomized: equal plaintexts give different ciphertexts


def test_paillier_fixed_point_sum_of_signed_reals():
    """Encoded real gradients (negatives included) sum under encryption to the fixed-point sum exactly."""
    he = P.Paillier(96, seed=1)
    xs = [0.25, -1.5, 3.0625, -0.0078125]
    c = he.encrypt(he.encode(xs[0]))
    for v in xs[1:]:
        c = he.add(c, he.encrypt(he.encode(v)))
    assert he.decode(he.decrypt(c)) == sum(xs)


def test_pairwise_masks_cancel_exactly_and_sum_is_recovered():
    """Masks of all clients sum to 0 mod 2^k; the masked sum equals the plain sum; dropouts are recoverable."""
    n, bits = 5, 32
    masks = [P.pairwise_mask(i, n, (7,), bits, seed=3) for i in range(n)]
    assert torch.equal(torch.remainder(torch.stack(masks).sum(0), 2 ** bits), torch.zeros(7, dtype=torch.int64))
    g = torch.Generator().manual_seed(0)
    updates = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(n)]
    q = [P.encode_fixed_point(u, 2 ** 16, bits) for u in updates]
    masked = [P.mask_update(v, i, n, bits, seed=3) for i, v in enumerate(q)]
    plain = torch.remainder(torch.stack(q).sum(0), 2 ** bits)
    assert torch.equal(P.secure_sum(masked, bits), plain)
    torch.testing.assert_close(P.decode_fixed_point(plain, 2 ** 16, bits), sum(updates), atol=n * 2 ** -17, rtol=0)
    # client 2 drops out: the survivors' sum is garbage until its masks are removed
    survivors = [m for i, m in enumerate(masked) if i != 2]
    want = torch.remainder(sum(v for i, v in enumerate(q) if i != 2), 2 ** bits)
    assert not torch.equal(P.secure_sum(survivors, bits), want)
    assert torch.equal(P.recover_dropouts(P.secure_sum(survivors, bits), [2], n, bits, seed=3), want)


def test_fixed_point_round_trip_with_negatives():
    """decode_fixed_point(encode_fixed_point(x)) = round(x * s) / s, negatives included."""
    x = torch.tensor([-2.5, -1e-3, 0.0, 1.25, 3.0], dtype=torch.float64)
    decoded = P.decode_fixed_point(P.encode_fixed_point(x, 1000, 20), 1000, 20)
    torch.testing.assert_close(decoded, torch.round(x * 1000) / 1000)
