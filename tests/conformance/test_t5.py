"""dlbook.pretrain.span_corrupt against T5's ``random_spans_noise_mask`` and its tests.

Source: google-research/text-to-text-transfer-transformer, t5/data/preprocessors.py::
random_spans_noise_mask and t5/data/preprocessors_test.py::test_random_spans_noise_mask. T5
counts n_noise = round(float32(N) * float32(p)), clipped to [1, N - 1] (N padded to at least 2),
and n_spans = max(1, round(float32(n_noise) / float32(mean_span))), both rounded half to even;
``t5_counts`` below restates that arithmetic and each case checks that span_corrupt drops exactly
those numbers of tokens and spans (and round-trips through span_restore).

Deliberately different: spans are drawn with torch's generator, not TensorFlow's stateless seeds
(the counts match, the positions cannot); n_spans is also capped at the number of kept tokens,
which only bites where T5 would produce empty kept runs; a 1-token sequence is always corrupted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlbook.pretrain import span_corrupt, span_restore

SENTINELS = list(range(1000, 1100))


def t5_counts(n: int, p: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) as random_spans_noise_mask computes them, in float32."""
    length = max(n, 2)
    noise = int(np.round(np.float32(length) * np.float32(p)))
    noise = min(max(noise, 1), length - 1)
    spans = max(int(np.round(np.float32(noise) / np.float32(mean_span))), 1)
    return noise, spans


def _corrupt(n, p, mean_span, seed=0):
    ids = torch.arange(n)
    inputs, targets = span_corrupt(ids, SENTINELS, p=p, mean_span=mean_span,
                                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(span_restore(inputs, targets, SENTINELS), ids)
    spans = sum(1 for t in targets.tolist() if t in SENTINELS)
    return len(targets) - spans, spans


@pytest.mark.parametrize("n, p, mean_span, expected", [
    pytest.param(32, 0.25, 2.0, (8, 4), id="preprocessors_test.py::test_random_spans_noise_mask (32, 0.25, 2)"),
    pytest.param(190, 0.15, 3.0, (29, 10), id="random_spans_noise_mask at a float32 .5 tie (190, 0.15, 3)"),
    pytest.param(512, 0.15, 3.0, (77, 26), id="T5 default objective on 512 tokens"),
    pytest.param(114, 0.15, 3.0, (17, 6), id="T5 span corruption inputs_length 114"),
    pytest.param(10, 0.5, 1.0, (5, 5), id="noise_density 0.5, mean span 1"),
])
def test_noise_and_span_counts_equal_t5(n, p, mean_span, expected):
    """span_corrupt drops T5's number of tokens in T5's number of spans, for several seeds."""
    assert t5_counts(n, p, mean_span) == expected
    for seed in range(3):
        assert _corrupt(n, p, mean_span, seed) == expected


@pytest.mark.parametrize("n, p", [(1, 0.15), (2, 0.15), (2, 0.9), (20, 0.0), (7, 0.0)],
                         ids=lambda v: str(v))
def test_degenerate_inputs_t5_accepts(n, p):
    """random_spans_noise_mask accepts p = 0 and 1-2 token sequences (one noise token, one span)."""
    assert _corrupt(n, p, 3.0) == (1, 1)
    if n >= 2:
        assert t5_counts(n, p, 3.0) == (1, 1)
