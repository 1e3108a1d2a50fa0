"""Small helpers for writing exercise tests that diagnose mistakes.

A good failure message names the likely mistake. The usual way to find it:
compute the results of a few known wrong formulas and see which one the
learner's result equals::

    from dlbook.grading.hints import generator, hint_for

    x = torch.randn(8, generator=generator(0), dtype=torch.float64)
    out = ns.sigmoid_grad(x)
    assert_close(out, expected, atol=1e-10, hint=hint_for(out, {
        "1 - sigmoid(x)^2 is tanh's derivative; the sigmoid's is s * (1 - s)": 1 - torch.sigmoid(x) ** 2,
    }, default="differentiate 1 / (1 + exp(-x))"))
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["generator", "matches", "hint_for"]


def generator(seed: int) -> torch.Generator:
    """A CPU random generator seeded with ``seed``: test data that never depends on global state."""
    return torch.Generator().manual_seed(seed)


def matches(actual, candidate, atol: float = 1e-6) -> bool:
    """True when ``actual`` equals ``candidate`` (same shape, within ``atol``), compared in float64.

    Anything that cannot be compared (a wrong type, a shape mismatch) is simply not a match:
    this only chooses a hint, it never fails a test by itself.
    """
    try:
        a, c = torch.as_tensor(actual), torch.as_tensor(candidate)
        if a.shape != c.shape:  # decided before any float64 copy of a (possibly huge) answer
            return False
        a, c = a.detach().to(torch.float64), c.detach().to(torch.float64)
        return bool(((a - c).abs() <= atol).all())
    except (TypeError, ValueError, RuntimeError):
        return False


def hint_for(actual, mistakes: Mapping[str, object], default: str, atol: float = 1e-6) -> str:
    """The hint of the first known mistake ``actual`` matches, else ``default``.

    Args:
        mistakes: ``{hint: result of the wrong formula}``, tried in order.
    """
    for hint, candidate in mistakes.items():
        if matches(actual, candidate, atol):
            return hint
    return default
