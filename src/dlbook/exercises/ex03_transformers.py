"""Tests of exercise set 03_transformers (chapter 3: attention and the Transformer).

Questions and the learner's names they read:

* q1 ``causal_mask(T)`` (2 points)
* q2 ``attention(q, k, v, mask=None)`` (4 points)
* q3 ``split_heads(x, n_head)`` and ``merge_heads(x)`` (3 points)
* q4 ``sinusoidal_encoding(length, dim)`` (3 points)

Reference results come from torch (``F.scaled_dot_product_attention``, ``torch.tril``,
reshapes written here), bound at import before any learner code runs, in float64.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import scaled_dot_product_attention as ref_sdpa

from dlbook.grading import assert_close, question
from dlbook.grading.hints import generator
from dlbook.grading.hints import matches

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- q1

@question("q1", points=1, timeout=10)
def causal_mask_is_the_lower_triangle(ns):
    """causal_mask(T) is a bool (T, T) tensor, True on and below the diagonal, for T = 1, 4, 9."""
    for t in (1, 4, 9):
        mask = ns.causal_mask(t)
        assert isinstance(mask, torch.Tensor), f"causal_mask({t}) should return a tensor, got {type(mask).__name__}"
        assert mask.shape == (t, t), f"causal_mask({t}) should have shape ({t}, {t}), got {tuple(mask.shape)}"
        assert mask.dtype == torch.bool, f"the mask should be bool (True = may attend), got {mask.dtype}"
        expected = torch.tril(torch.ones(t, t, dtype=torch.bool))
        if torch.equal(mask, expected):
            continue
        if torch.equal(mask, ~expected) or torch.equal(mask, expected.T):
            raise AssertionError("the mask is flipped: position i may attend to j <= i (lower triangle incl. diagonal)")
        if torch.equal(mask, expected & ~torch.eye(t, dtype=torch.bool)):
            raise AssertionError("the diagonal is missing: each position may attend to itself")
        assert torch.equal(mask, expected), f"causal_mask({t}) differs from the lower triangle"


@question("q1", points=1, timeout=10)
def causal_mask_blocks_the_future_in_attention(ns):
    """Used as an SDPA mask, causal_mask makes output t independent of inputs after t."""
    g = generator(0)
    q, k, v = (torch.randn(1, 6, 4, generator=g, dtype=F64) for _ in range(3))
    mask = ns.causal_mask(6)
    out = ref_sdpa(q, k, v, attn_mask=mask)
    v2 = v.clone()
    v2[:, 4:] += 10.0
    out2 = ref_sdpa(q, k, v2, attn_mask=mask)
    assert_close(out2[:, :4], out[:, :4], atol=1e-12, hint="a later value changed an earlier output: the future leaks")


# ---------------------------------------------------------------------------------------------- q2

def _qkv(shape_q, shape_kv, seed):
    g = generator(seed)
    return (torch.randn(*shape_q, generator=g, dtype=F64), torch.randn(*shape_kv, generator=g, dtype=F64),
            torch.randn(*shape_kv, generator=g, dtype=F64))


@question("q2", points=2, timeout=10)
def attention_matches_sdpa(ns):
    """attention(q, k, v) equals F.scaled_dot_product_attention, batched (2, 3, T, d), with T != S."""
    q, k, v = _qkv((2, 3, 5, 8), (2, 3, 7, 8), 1)
    out = ns.attention(q, k, v)
    expected = ref_sdpa(q, k, v)
    unscaled = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    wrong_axis = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-2) @ v
    hint = ("you forgot to divide the scores by sqrt(d)" if matches(out, unscaled) else
            "softmax over the wrong axis: normalize over the keys (dim=-1)" if matches(out, wrong_axis) else
            "softmax(q @ k^T / sqrt(d)) @ v, with k transposed on its last two dims")
    assert_close(out, expected, atol=1e-10, hint=hint)


@question("q2", points=2, timeout=10)
def attention_applies_the_mask(ns):
    """With a bool mask (True = may attend), attention equals SDPA with the same mask: causal and padding."""
    q, k, v = _qkv((2, 6, 4), (2, 6, 4), 2)
    causal = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    pad = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])[:, None, :]
    for mask in (causal, pad & causal):
        out = ns.attention(q, k, v, mask)
        inverted = ref_sdpa(q, k, v, attn_mask=~mask | torch.eye(6, dtype=torch.bool))
        hint = ("the mask is inverted: True means 'may attend'" if matches(out, inverted) else
                "set masked scores to -inf before the softmax (masked_fill(~mask, float('-inf')))")
        assert_close(out, ref_sdpa(q, k, v, attn_mask=mask), atol=1e-10, hint=hint)


# ---------------------------------------------------------------------------------------------- q3

@question("q3", points=2, timeout=10)
def split_heads_gives_each_head_its_channels(ns):
    """split_heads((B, T, C), H) is (B, H, T, C/H), head h holding channels h*D..(h+1)*D-1 of every position."""
    x = torch.arange(2 * 5 * 12, dtype=F64).view(2, 5, 12)
    out = ns.split_heads(x, 3)
    assert isinstance(out, torch.Tensor), "split_heads should return a tensor"
    assert tuple(out.shape) == (2, 3, 5, 4), f"expected shape (2, 3, 5, 4), got {tuple(out.shape)}"
    expected = x.reshape(2, 5, 3, 4).permute(0, 2, 1, 3)
    hint = ("you reshaped straight to (B, H, T, D): that mixes positions into heads; view as (B, T, H, D) "
            "then transpose(1, 2)" if matches(out, x.reshape(2, 3, 5, 4)) else
            "view as (B, T, H, D), then swap T and H")
    assert_close(out, expected, atol=0, hint=hint)


@question("q3", points=1, timeout=10)
def merge_heads_undoes_split_heads(ns):
    """merge_heads((B, H, T, D)) is (B, T, H*D), the exact inverse of the head split."""
    g = generator(3)
    x = torch.randn(2, 5, 12, generator=g, dtype=F64)
    heads = x.reshape(2, 5, 3, 4).permute(0, 2, 1, 3)
    out = ns.merge_heads(heads)
    assert isinstance(out, torch.Tensor), "merge_heads should return a tensor"
    assert tuple(out.shape) == (2, 5, 12), f"expected shape (2, 5, 12), got {tuple(out.shape)}"
    assert_close(out, x, atol=0, hint="transpose(1, 2) back to (B, T, H, D), then reshape to (B, T, H*D)")


# ---------------------------------------------------------------------------------------------- q4

@question("q4", points=3, timeout=10)
def sinusoidal_encoding_matches_the_formula(ns):
    """sinusoidal_encoding(50, 16)[p, 2i] = sin(p / 10000^(2i/16)), [p, 2i+1] = cos(...), to 1e-5."""
    pe = ns.sinusoidal_encoding(50, 16)
    assert isinstance(pe, torch.Tensor), "sinusoidal_encoding should return a tensor"
    assert tuple(pe.shape) == (50, 16), f"expected shape (50, 16), got {tuple(pe.shape)}"
    pos = torch.arange(50, dtype=F64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, 16, 2, dtype=F64) / 16)          # (50, 8)
    expected = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(50, 16)
    swapped = torch.stack([angle.cos(), angle.sin()], dim=-1).reshape(50, 16)
    halves = torch.cat([angle.sin(), angle.cos()], dim=-1)
    hint = ("sin and cos are swapped: even channels take sin, odd channels cos" if matches(pe, swapped, 1e-5) else
            "interleave them: channel 2i is sin, channel 2i+1 is cos (not the first half sin, second half cos)"
            if matches(pe, halves, 1e-5) else "the frequency of pair i is 1 / 10000^(2i/dim)")
    assert_close(pe.to(F64), expected, atol=1e-5, hint=hint)
