"""dlbook.interpret on cases from Captum's own test suite (pytorch/captum, tests/robust and tests/attr).

Each case names its source as ``pytorch/captum <file>::<test>``; inputs and expected values are
Captum's. The models are Captum's test helpers (``tests/helpers/basic_models.py``), restated here:

* ``Clamp1``: f(x) = 1 - relu(1 - x) elementwise (Captum's ``BasicModel``);
* ``TwoInput``: f(x1, x2) = relu(relu(x1) - 1 - relu(x2)) (``BasicModel2``, the IG paper's example);
* ``MultiLayer``: x (+ add_input) -> identity -> Linear(3, 4) of ones, bias (-10, 1, 1, 1) -> relu ->
  Linear(4, 2) of ones, bias (-1, 1) (``BasicModel_MultiLayer``).

Captum's attacks ascend ``loss_func(outputs, target)``, by default -log of the target output, and
descend it when ``targeted``; dlbook's ``fgsm``/``pgd`` ascend the cross-entropy of the true label,
so the ported cases pass Captum's loss as ``loss_fn`` (negated for targeted attacks).

Deliberately different (not ported): Captum's ``mask`` argument (perturb only some features) and
PGD's L2 ball (dlbook offers the L-infinity ball only); Captum's trapezoid rule, whose weights sum
to 1 - 1/n (dlbook's sum to 1, see ``ig_weights``): the library comparison below uses Gauss-Legendre.
When captum is installed, the same calls are also run through Captum and compared.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbook import interpret

try:
    import captum
except ImportError:  # the reference is a test dependency; without it only the ported values are checked
    captum = None

needs_captum = pytest.mark.skipif(captum is None, reason="captum is not installed")


class Clamp1(nn.Module):
    def forward(self, x):
        return 1 - F.relu(1 - x)


class TwoInput(nn.Module):
    def forward(self, x1, x2):
        return F.relu(F.relu(x1) - 1 - F.relu(x2))


class MultiLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(3, 4)
        self.linear2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear1.weight.fill_(1.0)
            self.linear1.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x, add_input=None):
        x = x if add_input is None else x + add_input
        return self.linear2(F.relu(self.linear1(x)))


def _pick(out, target):
    """The output each example's target names: an int, a tensor of ids, a tuple index, or a list of tuples."""
    if isinstance(target, int):
        return out[:, target]
    if isinstance(target, torch.Tensor):
        return out.gather(1, target[:, None])[:, 0]
    if isinstance(target, tuple):
        return out[(slice(None), *target)]
    return torch.stack([out[(i, *t)] if isinstance(t, tuple) else out[i, t] for i, t in enumerate(target)])


def captum_default_loss(targeted=False):
    """Captum's attacks' default loss, -log f_t(x); a targeted attack descends it, so negate."""
    sign = -1.0 if targeted else 1.0
    return lambda out, target: sign * -torch.log(_pick(out, target))


def _close(got, expected, delta=0.01):
    """Captum's assertTensorAlmostEqual(..., delta=0.01, mode='max'), for a tensor or a tuple."""
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g - torch.tensor(e, dtype=g.dtype)).abs().max().item() <= delta, (g, e)


X2 = (torch.tensor([[4.0, -1.0], [3.0, 10.0]]), torch.tensor([[2.0, -5.0], [-2.0, 1.0]]))
CUBE = torch.tensor([[[4.0, 2.0], [-1.0, -2.0]], [[3.0, -4.0], [10.0, 5.0]]])

FGSM_CASES = [
    pytest.param(Clamp1, torch.tensor([[2.0, -9.0, 9.0, 1.0, -3.0]]), 1, 0.1, {},
                 [[2.0, -8.9, 9.0, 1.0, -3.0]], id="test_FGSM.py::test_attack_nontargeted"),
    pytest.param(Clamp1, torch.tensor([[9.0, 10.0, -6.0, -1.0]]), 3, 0.2, {"targeted": True},
                 [[9.0, 10.0, -6.0, -1.2]], id="test_FGSM.py::test_attack_targeted"),
    pytest.param(TwoInput, X2, 0, 0.25, {},
                 ([[3.75, -1.0], [2.75, 10.0]], [[2.25, -5.0], [-2.0, 1.0]]), id="test_FGSM.py::test_attack_multiinput"),
    pytest.param(TwoInput, X2, [0, 1], 0.1, {},
                 ([[3.9, -1.0], [3.0, 9.9]], [[2.1, -5.0], [-2.0, 1.1]]), id="test_FGSM.py::test_attack_label_list"),
    pytest.param(TwoInput, X2, torch.tensor([0, 1]), 0.1, {"targeted": True},
                 ([[4.1, -1.0], [3.0, 10.1]], [[1.9, -5.0], [-2.0, 0.9]]), id="test_FGSM.py::test_attack_label_tensor"),
    pytest.param(Clamp1, CUBE, (0, 1), 0.1, {},
                 [[[4.0, 2.0], [-1.0, -2.0]], [[3.0, -3.9], [10.0, 5.0]]], id="test_FGSM.py::test_attack_label_tuple"),
    pytest.param(Clamp1, CUBE, [(1, 1), (0, 1)], 0.1, {},
                 [[[4.0, 2.0], [-1.0, -1.9]], [[3.0, -3.9], [10.0, 5.0]]], id="test_FGSM.py::test_attack_label_listtuple"),
    pytest.param(MultiLayer, torch.tensor([[1.0, 6.0, -3.0]]), 0, 0.2,
                 {"additional_forward_args": (torch.tensor([[-1.0, 2.0, 2.0]]),)},
                 [[0.8, 5.8, -3.2]], id="test_FGSM.py::test_attack_additional_inputs"),
    pytest.param(MultiLayer, torch.tensor([[1.0, 6.0, -3.0]]), 0, 0.2,
                 {"additional_forward_args": torch.tensor([[-1.0, 2.0, 2.0]])},
                 [[0.8, 5.8, -3.2]], id="test_FGSM.py::test_attack_additional_inputs(bare tensor)"),
    pytest.param(Clamp1, torch.tensor([[9.0, 10.0, -6.0, -1.0]]), 3, 0.2, {"targeted": True, "lo": -5.0, "hi": 5.0},
                 [[5.0, 5.0, -5.0, -1.2]], id="test_FGSM.py::test_attack_bound"),
]


@pytest.mark.parametrize("make, x, target, eps, kw, expected", FGSM_CASES)
def test_fgsm_matches_captums_cases(make, x, target, eps, kw, expected):
    """pytorch/captum tests/robust/test_FGSM.py: dlbook.fgsm with Captum's loss gives Captum's expected inputs."""
    kw = dict(kw)
    loss = captum_default_loss(kw.pop("targeted", False))
    got = interpret.fgsm(make(), x, target, eps, loss_fn=loss, **kw)
    _close(got, expected)


def test_fgsm_leaves_zero_gradient_coordinates_put():
    """pytorch/captum tests/robust/test_FGSM.py::test_attack_loss_defined: with the cross-entropy
    the exact gradient is zero (the two logits move together), float rounding leaves 1.8e-7,
    and the input must come back unchanged (dlbook's default loss is this cross-entropy)."""
    got = interpret.fgsm(MultiLayer(), torch.tensor([[1.0, 6.0, -3.0]]), torch.tensor([0]), 0.2,
                         additional_forward_args=(torch.tensor([[-1.0, 2.0, 2.0]]),))
    _close(got, [[1.0, 6.0, -3.0]])


def test_pgd_leaves_zero_gradient_coordinates_put():
    """pytorch/captum tests/robust/test_PGD.py::test_attack_loss_defined (radius 0.25, step 0.1, 3 steps)."""
    got = interpret.pgd(MultiLayer(), torch.tensor([[1.0, 6.0, -3.0]]), torch.tensor([0]), 0.25, alpha=0.1, steps=3,
                        random_start=False, additional_forward_args=(torch.tensor([[-1.0, 2.0, 2.0]]),))
    _close(got, [[1.0, 6.0, -3.0]])


PGD_CASES = [
    pytest.param(Clamp1, torch.tensor([[2.0, -9.0, 9.0, 1.0, -3.0]]), 4, (0.25, 0.1, 2), False,
                 [[2.0, -9.0, 9.0, 1.0, -2.8]], id="test_PGD.py::test_attack_nontargeted"),
    pytest.param(Clamp1, torch.tensor([[9.0, 10.0, -6.0, -1.0]]), 3, (0.2, 0.1, 3), True,
                 [[9.0, 10.0, -6.0, -1.2]], id="test_PGD.py::test_attack_targeted"),
    pytest.param(Clamp1, CUBE, (0, 1), (0.25, 0.1, 3), False,
                 [[[4.0, 2.0], [-1.0, -2.0]], [[3.0, -3.75], [10.0, 5.0]]], id="test_PGD.py::test_attack_3dimensional_input"),
]


@pytest.mark.parametrize("make, x, target, radius_step_steps, targeted, expected", PGD_CASES)
def test_pgd_matches_captums_cases(make, x, target, radius_step_steps, targeted, expected):
    """pytorch/captum tests/robust/test_PGD.py (L-infinity cases, no random start)."""
    eps, alpha, steps = radius_step_steps
    got = interpret.pgd(make(), x, target, eps, alpha=alpha, steps=steps, random_start=False,
                        loss_fn=captum_default_loss(targeted))
    _close(got, expected)


def test_saliency_on_a_1d_input_with_no_target():
    """pytorch/captum tests/attr/test_saliency.py::_saliency_base_helper: a 1-D input is N scalars,
    the model returns one output each, no target; |grad| is (0, 0, 0, 1, 1, 0)."""
    x = torch.tensor([1.0, 2.0, 3.0, 0.0, -1.0, 7.0])
    got = interpret.saliency(Clamp1(), x, None, absolute=True)
    assert got.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_integrated_gradients_two_inputs_paper_example():
    """pytorch/captum tests/attr/test_integrated_gradients_basic.py::test_multivariable_vanilla
    (the IG paper's example f = relu(relu(x1) - 1 - relu(x2)) at x1 = 3, x2 = 1): attributions
    (1.5, -0.5), summing to f(x) - f(0) = 1."""
    x = (torch.tensor([[3.0]]), torch.tensor([[1.0]]))
    # (the kink is at alpha = 1/2: the midpoint rule with an even number of steps integrates it exactly)
    got = interpret.integrated_gradients(TwoInput(), x, (0,), steps=100, method="riemann_middle")
    assert isinstance(got, tuple)
    _close(got, ([[1.5]], [[-0.5]]), delta=0.005)


def test_input_x_gradient_with_additional_forward_args():
    """pytorch/captum tests/attr/test_input_x_gradient.py (multi-argument model): attribution x * grad,
    the side input passed through ``additional_forward_args``, not attributed."""
    x, side = torch.tensor([[1.0, 6.0, -3.0]]), torch.tensor([[-1.0, 2.0, 2.0]])
    got = interpret.input_x_gradient(MultiLayer(), x, 1, additional_forward_args=(side,))
    # logit 1 = sum(relu(sum(x + side) + 1)) * 3 + 1 on the three live units: d/dx_j = 3
    assert got.tolist() == [[3.0, 18.0, -9.0]]


def test_occlusion_on_integer_inputs():
    """pytorch/captum tests/attr/test_occlusion.py accepts any input its forward takes; token ids
    are occluded with an integer baseline and the attribution is the drop of the target output."""
    emb = nn.Embedding(5, 1)
    with torch.no_grad():
        emb.weight.copy_(torch.arange(5.0)[:, None])

    def model(ids):
        return emb(ids).sum((1, 2))[:, None].repeat(1, 2)

    ids = torch.tensor([[1, 4, 2]])
    got = interpret.occlusion(model, ids, 0, window=1, baseline=0)
    assert got.tolist() == [[1.0, 4.0, 2.0]]


# ----------------------------------------------------------------------------- against the library

def _random_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


@needs_captum
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_attributions_equal_captums(seed):
    """Saliency and InputXGradient equal Captum's to 1e-10; IntegratedGradients (Gauss-Legendre)
    to 1e-7, as Captum keeps its nodes and weights in float32, and Occlusion to 1e-6, as Captum
    returns it in float32."""
    from captum.attr import InputXGradient, IntegratedGradients, Occlusion, Saliency
    warnings.filterwarnings("ignore", message="Input Tensor", category=UserWarning)   # Captum sets requires_grad itself
    model = _random_model(seed)
    x = torch.randn(5, 6, dtype=torch.double, generator=torch.Generator().manual_seed(seed))
    t = torch.arange(5) % 4
    pairs = [
        (interpret.saliency(model, x, t, absolute=True), Saliency(model).attribute(x, target=t), 1e-10),
        (interpret.input_x_gradient(model, x, t), InputXGradient(model).attribute(x, target=t), 1e-10),
        (interpret.integrated_gradients(model, x, t, steps=20, method="gausslegendre"),
         IntegratedGradients(model).attribute(x, target=t, n_steps=20, method="gausslegendre"), 1e-7),
        (interpret.occlusion(model, x, t, window=(2,), stride=(1,)),
         Occlusion(model).attribute(x, sliding_window_shapes=(2,), strides=(1,), target=t), 1e-6),
    ]
    for ours, theirs, rtol in pairs:
        torch.testing.assert_close(ours, theirs.detach().to(ours.dtype), rtol=rtol, atol=rtol * 1e-2)


@needs_captum
def test_fgsm_and_pgd_equal_captums_on_a_tuple_input():
    """dlbook.fgsm/pgd with Captum's loss equal captum.robust.FGSM/PGD on BasicModel2's tuple input."""
    from captum.robust import FGSM, PGD
    loss = captum_default_loss()
    ours = interpret.fgsm(TwoInput(), X2, [0, 1], 0.1, loss_fn=loss)
    theirs = FGSM(TwoInput()).perturb(X2, 0.1, [0, 1])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    ours = interpret.pgd(Clamp1(), CUBE, (0, 1), 0.25, alpha=0.1, steps=3, random_start=False, loss_fn=loss)
    theirs = PGD(Clamp1()).perturb(CUBE, 0.25, 0.1, 3, (0, 1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
