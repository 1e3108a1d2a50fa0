"""Tests of exercise set 03_transformers (chapter 3: attention and the Transformer).

Questions and the learner's names they read:

* q1 ``causal_mask(T)`` (2 points)
* q2 ``attention(q, k, v, mask=None)`` (4 points)
* q3 ``split_heads(x, n_head)`` and ``merge_heads(x)`` (3 points)
* q4 ``sinusoidal_encoding(length, dim)`` (3 points)
* q5 ``past_change(model, ids, t)`` and ``is_causal(model, ids)`` (4 points), on models built by the notebook's
  given ``make_model(state)``

Reference results come from torch (``F.scaled_dot_product_attention``, ``torch.tril``,
reshapes written here; q5's from ``dlbook.transformer.GPT``), bound at import before any learner code runs, in float64.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import scaled_dot_product_attention as ref_sdpa

from dlbook.grading import assert_close, question
from dlbook.grading.hints import generator
from dlbook.grading.hints import matches
from dlbook.transformer import GPT as RefGPT

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- q1

@question("q1", points=1, timeout=10)
def causal_mask_is_the_lower_triangle(ns):
    """causal_mask(T) is a bool (T, T) tensor, True on and below the diagonal, for T = 4, 9, 1."""
    for t in (4, 9, 1):
        mask = ns.causal_mask(t)
        assert isinstance(mask, torch.Tensor), f"causal_mask({t}) should return a tensor, got {type(mask).__name__}"
        assert mask.shape == (t, t), f"causal_mask({t}) should have shape ({t}, {t}), got {tuple(mask.shape)}"
        assert mask.dtype == torch.bool, f"the mask should be bool (True = may attend), got {mask.dtype}"
        expected = torch.tril(torch.ones(t, t, dtype=torch.bool))
        if torch.equal(mask, expected):
            continue
        if torch.equal(mask, expected & ~torch.eye(t, dtype=torch.bool)):
            raise AssertionError("the diagonal is missing: each position may attend to itself")
        if torch.equal(mask, ~expected) or torch.equal(mask, expected.T):
            raise AssertionError("the mask is flipped: position i may attend to j <= i (lower triangle incl. diagonal)")
        assert torch.equal(mask, expected), f"causal_mask({t}) differs from the lower triangle"


@question("q1", points=1, timeout=10)
def causal_mask_blocks_the_future_in_attention(ns):
    """Used as an SDPA mask, causal_mask makes output t independent of inputs after t."""
    g = generator(0)
    q, k, v = (torch.randn(1, 6, 4, generator=g, dtype=F64) for _ in range(3))
    mask = ns.causal_mask(6)
    assert isinstance(mask, torch.Tensor) and mask.shape == (6, 6) and mask.dtype == torch.bool, (
        "causal_mask(6) should be a bool tensor of shape (6, 6)")
    out = ref_sdpa(q, k, v, attn_mask=mask)
    assert bool(torch.isfinite(out).all()), ("a row of the mask is all False: that position may attend to nothing "
                                             "(its weights are 0 / 0); each position may attend to itself and the past")
    v2 = v.clone()
    v2[:, 4:] += 10.0
    out2 = ref_sdpa(q, k, v2, attn_mask=mask)
    assert_close(out2[:, :4], out[:, :4], atol=1e-12, hint="a later value changed an earlier output: the future leaks")
    v3 = v.clone()
    v3[:, :1] += 10.0
    moved = (ref_sdpa(q, k, v3, attn_mask=mask) - out).abs().amax(dim=-1)[0]
    assert bool((moved > 1e-3).all()), ("position 0's value does not reach every later output: the mask blocks the "
                                        "past too; position i may attend to every j <= i")


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
                "the scores where the mask is False must become -inf before the softmax, so their weights are 0")
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


# ---------------------------------------------------------------------------------------------- q5
# The models come from the learner notebook's given make_model(state), which builds the same model as _model
# below: dlbook's GPT with the grader's weights, its blocks' attention causal or not, and its logits mixed over
# positions by state["mix"]. Whether a model is causal is decided here, by the state sent; the learner's
# function sees only a function ids -> logits.

V, T_MAX = 16, 12


def _state(seed, causal=True, mix=None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gpt = RefGPT(vocab_size=V, block_size=T_MAX, n_layer=2, n_head=2, n_embd=16).double()
    state = {k: v.detach().clone() for k, v in gpt.state_dict().items()}
    state["mix"] = torch.eye(T_MAX, dtype=F64) if mix is None else mix
    state["causal"] = causal
    return state


def _leaky_mix(i=3, j=7, size=1e-9):
    """The identity plus one tiny weight above the diagonal: output i sees logits j > i."""
    mix = torch.eye(T_MAX, dtype=F64)
    mix[i, j] = size
    return mix


def _next_token_mix():
    """Each output averages its own logits with the next position's: the model can copy the future."""
    return 0.5 * torch.eye(T_MAX, dtype=F64) + 0.5 * torch.diag(torch.ones(T_MAX - 1, dtype=F64), 1)


def _model(state):
    """The reference twin of the notebook's make_model."""
    gpt = RefGPT(vocab_size=V, block_size=T_MAX, n_layer=2, n_head=2, n_embd=16).double()
    gpt.load_state_dict({k: v for k, v in state.items() if k not in ("mix", "causal")})
    for block in gpt.blocks:
        block.causal = bool(state["causal"])
    gpt.eval()

    def model(ids):
        with torch.no_grad():
            logits, _ = gpt(ids)
        T = ids.shape[1]
        return torch.einsum("ij,bjv->biv", state["mix"][:T, :T], logits)
    return model


def _ids(seed, batch=2):
    return torch.randint(0, V, (batch, T_MAX), generator=generator(seed))


def _changes(model, ids, first, positions, reduce="max"):
    """|model(ids') - model(ids)| at `positions`, reduced; ids' has the tokens at `first` set to (token+1) % V."""
    changed = ids.clone()
    changed[:, first] = (changed[:, first] + 1) % V
    diff = model(changed)[:, positions] - model(ids)[:, positions]
    return {"max": diff.abs().max(), "mean": diff.abs().mean(), "signed": diff.max()}[reduce].item()


def _past_change_hint(got, model, ids, t):
    wrong = {
        "you compared the positions before t only: the outputs at positions 0..t (t included) must stay put":
            _changes(model, ids, slice(t + 1, None), slice(None, t)),
        "you compared position t only: a leak can reach any earlier position, compare 0..t":
            _changes(model, ids, slice(t + 1, None), slice(t, t + 1)),
        "you compared every position: the outputs after t are allowed to change, compare only 0..t":
            _changes(model, ids, slice(t + 1, None), slice(None)),
        "you changed token t too: only the tokens after t (positions t+1 ..) are the future of position t":
            _changes(model, ids, slice(t, None), slice(None, t + 1)),
        "you changed token t+1 only: change every token after t, or a leak from further ahead goes unseen":
            _changes(model, ids, slice(t + 1, t + 2), slice(None, t + 1)),
        "return the largest absolute change, not the mean": _changes(model, ids, slice(t + 1, None),
                                                                     slice(None, t + 1), "mean"),
        "return the largest ABSOLUTE change: a change downwards counts too": _changes(model, ids, slice(t + 1, None),
                                                                                       slice(None, t + 1), "signed"),
    }
    return next((h for h, v in wrong.items() if abs(got - v) <= 1e-12 + 1e-6 * abs(v)),
                "the largest |model(ids') - model(ids)| over the batch, positions 0..t and the vocabulary, where ids' "
                "has every token after t replaced by (token + 1) % V")


@question("q5", points=2, timeout=10)
def past_change_measures_what_the_future_moves(ns):
    """past_change(model, ids, t) equals the largest change of outputs 0..t when every token after t changes."""
    cases = [(_state(30, mix=_leaky_mix()), t) for t in (2, 3, 6, 7)]
    cases += [(_state(31, causal=False), 4), (_state(32, mix=_next_token_mix()), 8), (_state(33), 5)]
    ids = _ids(34)
    for state, t in cases:
        learner_model, model = ns.make_model(state), _model(state)
        got = ns.past_change(learner_model, ids.clone(), t)
        assert isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1), (
            f"past_change must return a number (a float), got {type(got).__name__}")
        got, expected = float(got), _changes(model, ids, slice(t + 1, None), slice(None, t + 1))
        assert abs(got - expected) <= 1e-12 + 1e-6 * expected, (
            f"past_change(model, ids, t={t}) = {got:.4g}, expected {expected:.4g}: "
            + _past_change_hint(got, model, ids, t))


def _is_causal(ns, state, ids):
    answer = ns.is_causal(ns.make_model(state), ids.clone())
    assert isinstance(answer, bool) or (isinstance(answer, torch.Tensor) and answer.dtype == torch.bool
                                        and answer.numel() == 1), (
        f"is_causal must return True or False, got {type(answer).__name__}")
    return bool(answer)


_EXACT = ("the GPT's outputs at positions <= t do not move at all when later tokens change: compare them exactly "
          "(past_change == 0), and do not change token t itself")


@question("q5", points=1, timeout=10)
def is_causal_tells_the_gpt_from_a_bidirectional_model(ns):
    """is_causal is True for a causal GPT, False for the same GPT without its mask and for one that copies ahead."""
    ids = _ids(35)
    assert _is_causal(ns, _state(36), ids), "is_causal said False for a causal GPT: " + _EXACT
    assert not _is_causal(ns, _state(36, causal=False), ids), (
        "is_causal said True for a GPT whose attention has no mask: position 0 sees every token")
    assert not _is_causal(ns, _state(37, mix=_next_token_mix()), ids), (
        "is_causal said True for a model whose output i mixes in position i+1: test every t from 0 to T-2")


@question("q5", points=1, timeout=10)
def is_causal_catches_a_leak_of_one_in_a_billion(ns):
    """is_causal is False when output 3 sees position 7 with weight 1e-9, and True again for a causal GPT."""
    ids = _ids(38)
    assert not _is_causal(ns, _state(39, mix=_leaky_mix()), ids), (
        "is_causal said True for a model whose output 3 sees the logits of position 7 with weight 1e-9: its past "
        "moves by about 1e-9, which a tolerance such as torch.allclose's hides; a causal model's past does not move "
        "at all, so compare exactly")
    assert _is_causal(ns, _state(40), ids), "is_causal said False for a causal GPT: " + _EXACT
