"""dlbook.finetune's LoRA on cases from peft's own test suite (huggingface/peft, tests/).

Each case names its source as ``huggingface/peft <file>::<test>``. The model is peft's custom-model
``MLP`` (tests/test_custom_models.py), restated: Linear(10, 20) -> ReLU -> Dropout -> Linear(20, 2)
-> LogSoftmax, on inputs of shape (N, 10); peft's default rank 8 makes ``lin1`` (20 -> 2) a
rank-above-min(in, out) case, which peft's own tests use. When peft is installed, the same
factors are copied into peft's model and the outputs compared.

Deliberately different: dlbook has no ``safe_merge``, adapter names or several adapters at once.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from dlbook.finetune import LoRALinear, add_lora, count_trainable, merge_lora, unmerge_lora

try:
    import peft
except ImportError:  # a test dependency; without it only dlbook's own side is checked
    peft = None

needs_peft = pytest.mark.skipif(peft is None, reason="peft is not installed")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(x)))))


def _mlp():
    torch.manual_seed(0)
    return MLP().double().eval()


def _x():
    return torch.arange(90, dtype=torch.double).view(9, 10) / 90


CASES = [  # (targets, r, alpha): test_custom_models.py's "Vanilla MLP" LoRA configurations
    pytest.param(["lin0"], 8, 8, id="test_custom_models.py Vanilla MLP 1 LoRA (lin0)"),
    pytest.param(["lin0", "lin1"], 8, 8, id="test_custom_models.py Vanilla MLP 2 LoRA (lin1: r 8 > min(20, 2))"),
    pytest.param(["lin1"], 8, 16, id="test_custom_models.py Vanilla MLP 3 LoRA (alpha 16)"),
    pytest.param(["lin0", "lin1"], 2, 4, id="test_custom_models.py Vanilla MLP 5 LoRA (r 2)"),
]


def _randomized(targets, r, alpha):
    model = add_lora(_mlp(), targets, r=r, alpha=alpha)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype))
    return model


@pytest.mark.parametrize("targets, r, alpha", CASES)
def test_lora_starts_equal_to_the_base_model(targets, r, alpha):
    """huggingface/peft tests/test_initialization.py::test_lora_linear_init_default: B = 0, so the
    wrapped model's output is the base model's exactly, for r above min(in, out) too."""
    base = _mlp()
    torch.testing.assert_close(add_lora(copy.deepcopy(base), targets, r=r, alpha=alpha)(_x()), base(_x()),
                               rtol=0, atol=0)


@pytest.mark.parametrize("targets, r, alpha", CASES)
def test_merge_layers(targets, r, alpha):
    """huggingface/peft tests/testing_common.py::_test_merge_layers: merging keeps the output
    (1e-10 in float64) and unmerging restores it."""
    model = _randomized(targets, r, alpha)
    before = model(_x())
    assert (before - _mlp()(_x())).abs().max() > 1e-3          # the adapters do something
    merge_lora(model)
    torch.testing.assert_close(model(_x()), before, rtol=0, atol=1e-10)
    unmerge_lora(model)
    torch.testing.assert_close(model(_x()), before, rtol=0, atol=1e-10)


def test_merging_twice_warns_and_keeps_the_model():
    """huggingface/peft src/peft/tuners/tuners_utils.py check_adapters_to_merge, exercised by
    tests/testing_common.py::_test_merge_layers: merging a merged layer warns ("already merged")
    and changes nothing; unmerging an unmerged layer warns too."""
    model = _randomized(["lin0", "lin1"], 8, 8)
    merge_lora(model)
    out = model(_x())
    with pytest.warns(UserWarning, match="already merged"):
        merge_lora(model)
    torch.testing.assert_close(model(_x()), out, rtol=0, atol=0)
    unmerge_lora(model)
    with pytest.warns(UserWarning, match="not merged"):
        unmerge_lora(model)


@pytest.mark.parametrize("targets, r, alpha", CASES)
def test_trainable_parameter_count(targets, r, alpha):
    """huggingface/peft tests/testing_common.py::_test_prepare_for_training: only the LoRA factors
    train, r (in + out) per wrapped layer."""
    model = _randomized(targets, r, alpha)
    sizes = {"lin0": (10, 20), "lin1": (20, 2)}
    assert count_trainable(model) == sum(r * (sizes[t][0] + sizes[t][1]) for t in targets)


@needs_peft
@pytest.mark.parametrize("targets, r, alpha", CASES)
def test_outputs_equal_peft_with_the_same_factors(targets, r, alpha):
    """The same configuration through peft's get_peft_model, with A and B copied from dlbook's,
    gives the same outputs to 1e-12 (float64), before and after merging."""
    from peft import LoraConfig, get_peft_model
    ours = _randomized(targets, r, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = get_peft_model(_mlp(), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))
    ref.eval()
    with torch.no_grad():
        for t in targets:
            mine, twin = ours.get_submodule(t), ref.get_base_model().get_submodule(t)
            twin.lora_A["default"].weight.copy_(mine.lora_A)
            twin.lora_B["default"].weight.copy_(mine.lora_B)
            assert math.isclose(twin.scaling["default"], mine.scaling)
    torch.testing.assert_close(ours(_x()), ref(_x()), rtol=0, atol=1e-12)
    assert count_trainable(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    merge_lora(ours)
    merged = ref.merge_and_unload()
    torch.testing.assert_close(ours(_x()), merged(_x()), rtol=0, atol=1e-12)
