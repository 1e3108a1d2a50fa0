"""dlbook.grading.inputs and assert_close's edges: what learner code receives, and what a comparison accepts.

In the learner's own process (``check()``), every call into learner code gets fresh copies of its arguments, so
an in-place change can never reach a test's expected value; the change is recorded as its own finding instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlbook.grading import assert_close, assert_inputs_unchanged, probes, question
from dlbook.grading.core import Namespace, run_test
from dlbook.grading.inputs import LearnerObject, changed_inputs, fresh


def _zero_everything(x, rest=None):
    x.zero_()
    if rest is not None:
        rest[0].fill_(7)
    return x


def test_a_learner_function_gets_copies_and_its_in_place_change_is_recorded_not_applied():
    ns = Namespace({"f": _zero_everything})
    x, y = torch.ones(3), torch.ones(2)
    out = ns.f(x, [y])
    assert torch.equal(x, torch.ones(3)) and torch.equal(y, torch.ones(2))  # the test's tensors are intact
    assert torch.equal(out, torch.zeros(3))                                   # what it returned still counts
    assert changed_inputs(ns) == ["`f` changed its argument `x`",
                                  "`f` changed its argument `rest`"]
    with pytest.raises(AssertionError, match="changed its argument `x` in place: return a copy"):
        assert_inputs_unchanged(ns, "return a copy")


def test_an_untouched_call_records_nothing_and_nan_equals_nan():
    ns = Namespace({"f": lambda x: x + 1})
    ns.f(torch.tensor([1.0, math.nan]))
    assert changed_inputs(ns) == []
    assert_inputs_unchanged(ns)


def test_fresh_keeps_aliasing_generators_and_the_graph():
    t = torch.arange(3.0)
    g = torch.Generator().manual_seed(0)
    leaf = torch.ones(2, requires_grad=True)
    a, b, same_g, graph = fresh([t, t, g, leaf])
    assert a is b and a is not t and same_g is g
    graph.sum().backward()                                  # a copy that requires grad is still on the graph
    assert torch.equal(leaf.grad, torch.ones(2))
    assert type(fresh(torch.Size([2, 3]))) is torch.Size
    arr = np.zeros(2)
    assert fresh(arr) is not arr and fresh({"k": (arr,)})["k"][0] is not arr


def test_a_generator_is_shared_so_two_calls_draw_two_epochs():
    ns = Namespace({"draw": lambda n, g: torch.randperm(n, generator=g)})
    g, h = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(ns.draw(10, g), torch.randperm(10, generator=h))
    assert torch.equal(ns.draw(10, g), torch.randperm(10, generator=h))


class _Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))

    def forward(self, x):
        x.mul_(0)  # a careless forward that wipes its input
        return self.weight


def test_objects_from_learner_calls_are_guarded_too_and_probes_still_see_modules_and_gradients():
    ns = Namespace({"Scale": _Scale, "cube": lambda x: x ** 3})
    model = ns.Scale()
    assert isinstance(model, LearnerObject) and model.weight.shape == (3,)
    x = torch.ones(3, dtype=torch.float64)
    model(x)
    assert torch.equal(x, torch.ones(3, dtype=torch.float64)) and changed_inputs(ns)
    out, grads = probes.module_grads(model, x)
    assert torch.equal(grads["weight"], torch.ones(3, dtype=torch.float64))
    _, (dx,) = probes.grad(ns.cube, torch.tensor([2.0], dtype=torch.float64))
    assert torch.equal(dx, torch.tensor([12.0], dtype=torch.float64))


def test_a_tensor_subclass_returned_by_learner_code_is_compared_as_a_plain_tensor():
    class Liar(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return torch.zeros(())  # every operation "agrees"

    ns = Namespace({"f": lambda x: x})
    out = ns.f(torch.ones(2).as_subclass(Liar))
    assert type(out) is torch.Tensor


@question("q1", points=1)
def _cheat_target(ns):
    """The expected value is computed from x after the call (as many tests do)."""
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    out = ns.sigmoid(x)
    assert_close(out, torch.sigmoid(x), atol=1e-12)


def test_rewriting_the_inputs_earns_nothing_and_the_failure_notes_the_change():
    def cheat(x):
        x.zero_()
        return torch.full_like(x, 0.5)

    row = run_test(_cheat_target.__dlbook_test__, _cheat_target, {"sigmoid": cheat})
    assert row.earned == 0 and "changed its argument `x` in place" in row.message, row.message


@pytest.mark.parametrize("actual, expected, ok", [
    (math.inf, math.inf, True), (-math.inf, math.inf, False), (1e300, math.inf, False),
    (math.nan, math.nan, True), (0.0, math.nan, False), (math.inf, math.nan, False),
    ([1.0, math.inf], [1.0 + 1e-9, math.inf], True), ([1.0, 5.0], [1.0, -math.inf], False),
])
def test_assert_close_accepts_a_non_finite_expected_value_only_when_matched_exactly(actual, expected, ok):
    if ok:
        assert_close(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))
    else:
        with pytest.raises(AssertionError, match="was expected"):
            assert_close(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))


def test_assert_close_notes_a_float32_result_against_a_python_float():
    with pytest.raises(AssertionError, match="your result is float32"):
        assert_close(torch.tensor(1.0, dtype=torch.float32), 1.1, atol=1e-9)
