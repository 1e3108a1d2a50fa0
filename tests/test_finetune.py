"""dlbook.finetune: LoRA against peft, adapters, prefix/prompt tuning, and the preference losses.

peft's LoRA is the reference: the same A and B copied into both must give the same
outputs in float64 to 1e-6 (they agree to about 1e-15). Only API common to peft 0.20
and 0.21 is used (LoraConfig, get_peft_model, lora_A/lora_B["default"].weight).
"""

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.finetune import (Adapter, LoRALinear, PrefixAttention, PromptTuning, add_adapters, add_lora,
                             add_prefix, bradley_terry_loss, count_trainable, dpo_loss, freeze,
                             DIGIT_TASKS, SEP, answer_accuracy, digit_mixture, digit_task, implicit_reward, merge_lora, sequence_logprob,
                             train_steps, unmerge_lora)
from dlbook.transformer import GPT, MultiHeadAttention

F64 = torch.float64
GPT_TARGETS = ["attn.qkv", "attn.proj", "ffn.0", "ffn.2"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_gpt(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = GPT(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw).to(dtype)
    model.reset_parameters(std=0.2)
    return model.to(dtype)


def ids(b=3, t=7, seed=1, v=11):
    return torch.randint(0, v, (b, t), generator=gen(seed))


def randomize_lora(model, seed=5):
    """Give every LoRA B nonzero values, so the comparisons test the update, not only the base."""
    g = gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype) * 0.3)


# ----------------------------------------------------------------------------- LoRALinear

def test_lora_equals_its_base_exactly_at_initialization():
    """B = 0 at init, so the wrapped layer's output is bit-for-bit the base layer's."""
    torch.manual_seed(0)
    base = nn.Linear(12, 8)
    lora = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(5, 3, 12)
    assert torch.equal(lora(x), base(x))
    assert torch.count_nonzero(lora.lora_B) == 0 and torch.count_nonzero(lora.lora_A) > 0


def test_lora_forward_is_the_formula_in_float64():
    """h = W0 x + b0 + (alpha/r) B A x, to 1e-12."""
    torch.manual_seed(0)
    base = nn.Linear(12, 8).double()
    lora = LoRALinear(base, r=3, alpha=6.0)
    randomize_lora(lora)
    x = torch.randn(4, 12, dtype=F64)
    expected = x @ base.weight.T + base.bias + (6.0 / 3) * x @ lora.lora_A.T @ lora.lora_B.T
    torch.testing.assert_close(lora(x), expected, atol=1e-12, rtol=0)


def test_lora_trainable_count_is_r_times_d_plus_k():
    """A LoRALinear on a (d=8, k=12) layer has r (d + k) trainable parameters, the base none."""
    lora = LoRALinear(nn.Linear(12, 8), r=3, alpha=3)
    assert count_trainable(lora) == 3 * (8 + 12)
    assert not any(p.requires_grad for p in lora.base.parameters())


def test_merge_unmerge_round_trip_in_float32():
    """Merged output equals the unmerged one to 1e-5 (float32); unmerge restores W0 to 1e-6."""
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    w0 = base.weight.detach().clone()
    lora = LoRALinear(base, r=4, alpha=16)
    randomize_lora(lora)
    x = torch.randn(10, 32)
    before = lora(x)
    lora.merge()
    assert lora.merged
    torch.testing.assert_close(lora(x), before, atol=1e-5, rtol=0)
    torch.testing.assert_close(F.linear(x, base.weight, base.bias), before, atol=1e-5, rtol=0)  # one matmul
    lora.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    assert not torch.equal(lora(x), base(x))  # the update is back on the side path


@pytest.mark.parametrize("kwargs, error", [
    (dict(r=0, alpha=1), ValueError), (dict(r=2, alpha=0), ValueError),
    (dict(r=2, alpha=-1.0), ValueError), (dict(r=2.0, alpha=1), TypeError), (dict(r=2, alpha=1, dropout=1.0),
                                                                          ValueError)])
def test_lora_rejects_bad_arguments(kwargs, error):
    """r < 1, alpha <= 0, a float rank and dropout 1 raise with a message (r > min(d, k) is allowed, as in peft)."""
    with pytest.raises(error, match="r|alpha|dropout"):
        LoRALinear(nn.Linear(12, 8), **kwargs)


def test_lora_rejects_a_non_linear_and_warns_on_merging_twice():
    """Wrapping a Conv1d is a TypeError; merging twice and unmerging an unmerged layer warn
    (as peft) and leave the weight as it was: the update is never added twice."""
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=1, alpha=1)
    lora = LoRALinear(nn.Linear(4, 4), r=2, alpha=2)
    nn.init.normal_(lora.lora_B)
    w0 = lora.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="not merged"):
        lora.unmerge()
    assert torch.equal(lora.base.weight, w0)
    lora.merge()
    merged = lora.base.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged"):
        lora.merge()
    assert torch.equal(lora.base.weight, merged) and not torch.equal(merged, w0)


# ----------------------------------------------------------------------------- add_lora and peft

def test_add_lora_wraps_the_targets_and_freezes_the_rest():
    """On a GPT only the LoRA factors train, their count is sum r (d + k), and only they get gradients."""
    model = add_lora(tiny_gpt(), ["attn.qkv", "attn.proj"], r=2, alpha=4)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert count_trainable(model) == 2 * (2 * (48 + 16) + 2 * (16 + 16))
    randomize_lora(model)
    _, loss = model(ids(), ids(seed=2))
    loss.backward()
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad == ("lora_" in name), name


def test_add_lora_errors():
    """No matching module is a ValueError; a matched non-Linear is a TypeError; a bare string is refused."""
    with pytest.raises(ValueError, match="matches"):
        add_lora(tiny_gpt(), ["nothing"], r=1, alpha=1)
    with pytest.raises(TypeError, match="nn.Linear"):
        add_lora(tiny_gpt(), ["ln1"], r=1, alpha=1)
    with pytest.raises(TypeError, match="list"):
        add_lora(tiny_gpt(), "attn.qkv", r=1, alpha=1)


def _peft_twin(model, targets, r, alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
        return get_peft_model(model, config)


@pytest.mark.parametrize("r, alpha", [(2, 4), (4, 2)])
def test_add_lora_equals_peft_with_the_same_factors_in_float64(r, alpha):
    """A GPT with add_lora and the same GPT through peft's get_peft_model, with A and B copied from
    ours into peft's, give the same logits to 1e-6 in float64, and train the same parameter count."""
    base = tiny_gpt(F64)
    ours = add_lora(copy.deepcopy(base), GPT_TARGETS, r=r, alpha=alpha)
    randomize_lora(ours)
    ref = _peft_twin(copy.deepcopy(base), GPT_TARGETS, r, alpha)
    n_copied = 0
    with torch.no_grad():
        for name, m in ours.named_modules():
            if isinstance(m, LoRALinear):
                twin = ref.get_base_model().get_submodule(name)
                twin.lora_A["default"].weight.copy_(m.lora_A)
                twin.lora_B["default"].weight.copy_(m.lora_B)
                assert math.isclose(twin.scaling["default"], m.scaling)
                n_copied += 1
    assert n_copied == 8
    x = ids(b=4, t=12)
    mine, theirs = ours(x)[0], ref(x)[0]
    assert (mine - base(x)[0]).abs().max() > 1e-2  # the update changes the model
    torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    assert count_trainable(ours) == sum(p.numel() for p in ref.parameters() if p.requires_grad)


def test_merge_lora_on_a_whole_model():
    """merge_lora / unmerge_lora on every wrapped layer keep the logits (1e-5, float32)."""
    model = add_lora(tiny_gpt(), GPT_TARGETS, r=2, alpha=4)
    randomize_lora(model)
    x = ids()
    before = model(x)[0]
    torch.testing.assert_close(merge_lora(model)(x)[0], before, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmerge_lora(model)(x)[0], before, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- adapters

def test_adapter_is_the_identity_at_init_and_counts_its_parameters():
    """Adapter(C, m) returns its input exactly at init and has 2 m C + m + C parameters."""
    a = Adapter(16, 4)
    h = torch.randn(2, 5, 16)
    assert torch.equal(a(h), h)
    assert count_trainable(a) == 2 * 4 * 16 + 4 + 16
    with pytest.raises(ValueError, match="bottleneck"):
        Adapter(16, 0)


def test_add_adapters_keeps_the_model_and_trains_only_adapters():
    """Two adapters per block; logits unchanged at init; only adapters (and a kept head) get gradients."""
    base = tiny_gpt()
    x, y = ids(), ids(seed=2)
    before = base(x)[0].detach()
    model = add_adapters(copy.deepcopy(base), bottleneck=4, keep_trainable=["ln_f"])
    assert sum(isinstance(m, Adapter) for m in model.modules()) == 4
    torch.testing.assert_close(model(x)[0], before, atol=0, rtol=0)
    assert count_trainable(model) == 4 * (2 * 4 * 16 + 4 + 16) + 2 * 16
    model(x, y)[1].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("adapter" in name or name.startswith("ln_f")), name


# ----------------------------------------------------------------------------- prefix and prompt tuning

def test_prefix_attention_equals_attention_over_the_concatenated_keys_in_float64():
    """PrefixAttention equals softmax attention over [prefix; causal keys], written out, to 1e-12."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).double()
    pre = PrefixAttention(attn, n_prefix=3)
    x = torch.randn(2, 5, 8, dtype=F64)
    out = pre(x, is_causal=True)
    q, k, v = (attn.split_heads(z) for z in attn.qkv(x).split(8, dim=-1))
    k = torch.cat([pre.prefix_k.expand(2, -1, -1, -1), k], 2)
    v = torch.cat([pre.prefix_v.expand(2, -1, -1, -1), v], 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(4)                   # (2, 2, 5, 8)
    allowed = torch.ones(5, 8, dtype=torch.bool)
    allowed[:, 3:] = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, attn.proj(attn.merge_heads(y)), atol=1e-12, rtol=0)


def test_add_prefix_trains_2_L_P_C_parameters_and_stays_causal():
    """Prefix tuning on a GPT: 2 L P C trainable parameters, only prefixes get gradients, and the
    logits at position t do not depend on tokens after t."""
    model = add_prefix(tiny_gpt(), n_prefix=4)
    assert count_trainable(model) == 2 * 2 * 4 * 16
    x = ids()
    x2 = x.clone()
    x2[:, 5:] = (x2[:, 5:] + 1) % 11
    torch.testing.assert_close(model(x)[0][:, :5], model(x2)[0][:, :5], atol=1e-6, rtol=0)
    model(x, ids(seed=2))[1].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("prefix_" in name), name


def test_prompt_tuning_prepends_trainable_embeddings_only():
    """PromptTuning: P C trainable parameters, logits (B, T, V) for the tokens only, different from
    the base model's, and only the prompt gets a gradient; too long an input is refused."""
    base = tiny_gpt()
    model = PromptTuning(copy.deepcopy(base), n_prompt=3, generator=gen(0))
    assert count_trainable(model) == 3 * 16
    x = ids()
    logits, loss = model(x, ids(seed=2))
    assert logits.shape == (3, 7, 11)
    assert (logits - base(x)[0]).abs().max() > 1e-3  # the prompt changes the predictions
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["prompt"]
    with pytest.raises(ValueError, match="block_size"):
        model(ids(t=17))


def test_prompt_tuning_token_path_equals_gpt_when_the_prompt_is_masked_out():
    """PromptTuning equals feeding [prompt; token + position embeddings] by hand through the GPT's
    blocks, final norm and head, keeping the token positions (float64, 1e-12)."""
    base = tiny_gpt(F64)
    model = PromptTuning(base, n_prompt=2, init_std=1.0, generator=gen(1))
    x = ids(b=2, t=6)
    h = base.tok_emb(x) + base.pos_emb(torch.arange(6))
    h = torch.cat([model.prompt.expand(2, -1, -1), h], 1)
    for block in base.blocks:
        h = block(h)
    torch.testing.assert_close(model(x)[0], base.head(base.ln_f(h[:, 2:])), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- preferences

def test_bradley_terry_loss_is_the_negative_log_likelihood():
    """-mean log sigma(r_w - r_l), checked by hand; log 2 for equal rewards."""
    rw, rl = torch.tensor([2.0, 0.0, -1.0], dtype=F64), torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5) + math.log(1 / (1 + math.exp(2)))) / 3
    assert math.isclose(bradley_terry_loss(rw, rl).item(), expected, rel_tol=1e-12)
    assert math.isclose(bradley_terry_loss(rl, rl).item(), math.log(2), rel_tol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(rw, rl[:2])


def test_dpo_loss_by_hand_and_log2_at_the_reference():
    """dpo_loss equals the formula computed by hand, is log 2 when policy = reference, and sends
    no gradient to the reference log-probabilities."""
    pw, pl = torch.tensor([-3.0, -5.0], dtype=F64), torch.tensor([-4.0, -2.0], dtype=F64)
    rw, rl = torch.tensor([-3.5, -4.0], dtype=F64, requires_grad=True), torch.tensor([-4.5, -3.0], dtype=F64)
    beta = 0.5
    m = [(-3.0 + 3.5) - (-4.0 + 4.5), (-5.0 + 4.0) - (-2.0 + 3.0)]
    expected = sum(math.log1p(math.exp(-beta * mi)) for mi in m) / 2
    loss = dpo_loss(pw, pl, rw, rl, beta)
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert math.isclose(dpo_loss(pw, pl, pw, pl, 0.1).item(), math.log(2), rel_tol=1e-12)
    assert not loss.requires_grad or rw.grad is None
    torch.testing.assert_close(implicit_reward(pw, rw.detach(), beta), beta * (pw - rw.detach()))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pw, pl, pw, pl, 0.0)
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(pw, pl[:1], pw, pl, 0.1)


def test_sequence_logprob_sums_response_tokens_only():
    """sequence_logprob equals the sum of the response tokens' log-softmax written out position by
    position (1e-12, float64), differs from the sum over all tokens, a response mask drops padded
    tokens, and a 1-d prompt is shared by the batch."""
    model = tiny_gpt(F64).eval()
    prompt, response = ids(b=2, t=4, seed=3), ids(b=2, t=3, seed=4)
    full = torch.cat([prompt, response], 1)
    logp = model(full)[0].log_softmax(-1)
    expected = sum(logp[:, 3 + j].gather(-1, response[:, j:j + 1]).squeeze(-1) for j in range(3))
    got = sequence_logprob(model, prompt, response)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    all_tokens = sum(logp[:, t - 1].gather(-1, full[:, t:t + 1]).squeeze(-1) for t in range(1, 7))
    assert (got - all_tokens).abs().min() > 1e-3  # prompt tokens are not counted
    mask = torch.tensor([[True, True, True], [True, False, False]])
    masked = sequence_logprob(model, prompt, response, mask)
    torch.testing.assert_close(masked[1], logp[1, 3, response[1, 0]], atol=1e-12, rtol=0)
    shared = sequence_logprob(model, prompt[0], response)
    torch.testing.assert_close(shared[0], got[0], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="prompt"):
        sequence_logprob(model, prompt[:1], response)


def test_freeze_keeps_named_modules_trainable():
    """freeze(model, ["head"]) leaves exactly the head's parameters trainable (here tied to tok_emb)."""
    model = freeze(tiny_gpt(), ["ln_f"])
    assert count_trainable(model) == 2 * 16
    with pytest.raises(TypeError, match="list"):
        freeze(tiny_gpt(), "ln_f")


# ----------------------------------------------------------------------------- the toy tasks

def test_digit_task_layout_and_targets():
    """[task, x, SEP, y] with y = reverse(x) + shift mod 10; only the answer digits are scored."""
    x, y = digit_task(5, length=3, reverse=True, shift=2, task_token=13, generator=gen(0))
    assert x.shape == y.shape == (5, 7)
    assert (x[:, 0] == 13).all() and (x[:, 4] == SEP).all()
    digits = x[:, 1:4]
    torch.testing.assert_close(y[:, 4:], (digits.flip(1) + 2) % 10)
    assert (y[:, :4] == -100).all()
    torch.testing.assert_close(x[:, 5:], y[:, 4:6])  # inputs are the targets shifted by one
    with pytest.raises(ValueError, match="n"):
        digit_task(0)


STEPS = 100


def test_train_steps_fits_a_task_and_answer_accuracy_counts_whole_answers():
    """A tiny GPT learns copying to 100% answer accuracy in 100 steps; a model that is right on one
    digit but wrong on another scores 0 for that example; only trainable parameters move."""
    torch.manual_seed(0)
    model = GPT(vocab_size=12, block_size=5, n_layer=1, n_head=2, n_embd=16)
    model.reset_parameters(std=0.1)
    g = gen(1)
    losses = train_steps(model, lambda s: digit_task(32, 2, generator=g), steps=STEPS, lr=2e-2)
    assert losses[-1] < 0.1 * losses[0]
    x, y = digit_task(200, 2, generator=gen(2))
    assert answer_accuracy(model, x, y) == 1.0
    y_wrong = y.clone()
    y_wrong[:100, -1] = (y_wrong[:100, -1] + 1) % 10
    assert answer_accuracy(model, x, y_wrong) == 0.5
    frozen = freeze(model)
    with pytest.raises(ValueError, match="trainable"):
        train_steps(frozen, lambda s: (x, y), 1, 1e-3)


def test_digit_mixture_names_each_example_by_its_task():
    """Every example of the mixture follows the task its first token names."""
    x, y = digit_mixture([0, 6, 9], 300, generator=gen(3))
    assert set(x[:, 0].tolist()) == {11, 17, 20}
    for i in (0, 6, 9):
        rows = x[:, 0] == 11 + i
        reverse, shift = DIGIT_TASKS[i]
        digits = x[rows, 1:5]
        torch.testing.assert_close(y[rows, 5:], ((digits.flip(1) if reverse else digits) + shift) % 10)
    with pytest.raises(ValueError, match="DIGIT_TASKS"):
        digit_mixture([10], 4)
