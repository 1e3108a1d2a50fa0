"""dlbook.grading.hints: the helpers that pick a diagnosis for a wrong answer."""

import torch

from dlbook.grading.hints import generator, hint_for, matches


def test_generator_is_seeded_and_independent_of_global_state():
    a = torch.randn(3, generator=generator(5))
    torch.manual_seed(123)
    assert torch.equal(a, torch.randn(3, generator=generator(5)))


def test_matches_compares_shape_and_values_in_float64():
    assert matches(torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-9])
    assert not matches(torch.tensor([1.0, 2.0]), [1.0, 2.1])
    assert not matches(torch.zeros(2), torch.zeros(3))
    assert not matches("not a number", torch.zeros(2))  # incomparable is not a match, never an error


def test_hint_for_returns_the_first_matching_mistake_else_the_default():
    x = torch.tensor([0.5, -0.5], dtype=torch.float64)
    mistakes = {"forgot the square": 2 * x, "used the absolute value": x.abs()}
    assert hint_for(x.abs(), mistakes, default="?") == "used the absolute value"
    assert hint_for(x + 7, mistakes, default="compare with the formula") == "compare with the formula"
