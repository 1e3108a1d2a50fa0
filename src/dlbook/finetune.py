"""Adapting a pretrained model cheaply, and aligning it with preferences.

Parameter-efficient fine-tuning (PEFT) freezes the pretrained weights and trains a
few new ones. Notation: a linear layer maps d_in = k features to d_out = d; B batch,
T length, C model width, H heads, D = C // H head width, L layers, P prefix/prompt length.

* ``LoRALinear`` (low-rank adaptation): h = W0 x + b0 + (alpha / r) B A x with W0, b0
  frozen, A (r, k) random and B (d, r) zero, so the wrapped layer equals the base at
  initialization; ``merge()`` folds (alpha / r) B A into W0 (no extra latency),
  ``unmerge()`` takes it out again. ``add_lora`` wraps chosen linear layers of a model
  by name (the matching rule of peft's ``target_modules``) and freezes everything else.
* ``Adapter``: a bottleneck MLP with a residual, h + W_up act(W_down h), W_up = 0 at
  initialization (the identity); ``add_adapters`` inserts one after the attention and
  one after the FFN of every ``TransformerBlock`` (Houlsby et al. 2019).
* ``PrefixAttention`` / ``add_prefix`` (prefix tuning): P trainable key and value
  vectors per head at *every* layer, attended to by every query.
* ``PromptTuning`` (prompt tuning): P trainable input embeddings in front of the
  tokens, nothing else trained.
* ``digit_task`` (a family of toy sequence tasks: copy x, reverse it and/or shift every
  digit), ``train_steps`` (AdamW on the trainable parameters only) and ``answer_accuracy``:
  what the chapter's experiments adapt and measure.
* ``count_trainable``; the preference losses ``bradley_terry_loss`` (reward model)
  and ``dpo_loss``; ``sequence_logprob`` sums log pi(y | x) over response tokens only.

The models are ``dlbook.transformer`` models (``GPT`` and its ``TransformerBlock``);
anything with the same attribute names (``tok_emb``, ``blocks``, ``ln_f``, ``head``)
plugs in. ``tests/test_finetune.py`` checks LoRA against the ``peft`` library.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.transformer import GPT, MultiHeadAttention, TransformerBlock, attention, causal_mask, count_parameters

__all__ = [
    "LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "freeze",
    "Adapter", "add_adapters", "PrefixAttention", "add_prefix", "PromptTuning",
    "count_trainable", "bradley_terry_loss", "sequence_logprob", "dpo_loss", "implicit_reward",
    "SEP", "DIGIT_TASKS", "digit_task", "digit_mixture", "train_steps", "answer_accuracy", "pretrain_digit_gpt",
]


def _check_positive_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule: a module matches a target when its full name is the target or ends in '.' + target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def freeze(model: nn.Module, keep_trainable: Iterable[str] = ()) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter except those under ``keep_trainable``.

    Args:
        model: any module; changed in place.
        keep_trainable: module names (matched like peft's ``target_modules``: the full
            name or a dotted suffix, e.g. ``"head"``) whose parameters stay trainable.

    Returns:
        ``model``.
    """
    if isinstance(keep_trainable, str):
        raise TypeError(f"keep_trainable must be a list of names, got the string {keep_trainable!r}")
    keep = list(keep_trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if keep and _matches(name, keep):
            for p in module.parameters():
                p.requires_grad_(True)
    return model


# ----------------------------------------------------------------------------- LoRA

class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    .. math::

        h = W_0 x + b_0 + \\frac{\\alpha}{r} B A x, \\qquad A \\in R^{r \\times k},\\; B \\in R^{d \\times r}

    A is initialized like ``nn.Linear`` (Kaiming-uniform, as peft does) and B = 0, so
    the layer equals its base exactly until B moves. (With both zero the gradients of
    both are zero forever; with both random the model starts changed.) Trainable
    parameters: r (d + k). Dropout (if any) acts on the input of the low-rank path only.

    Args:
        base: the pretrained ``nn.Linear`` (in_features k, out_features d); its weight
            and bias are frozen (``requires_grad=False``), not copied.
        r: rank, >= 1. Above min(d, k) it adds parameters but no expressiveness (B A has
            rank at most min(d, k)); it is allowed, as in peft, whose own tests use it.
        alpha: scale; the update is multiplied by alpha / r.
        dropout: dropout probability on the low-rank path's input.

    Shapes: forward (..., k) -> (..., d). Attributes ``lora_A`` (r, k), ``lora_B`` (d, r)
    (the shapes of peft's ``lora_A.weight`` and ``lora_B.weight``), ``scaling`` = alpha / r,
    ``merged``.

    Raises:
        TypeError: if ``base`` is not an ``nn.Linear``.
        ValueError: if r < 1, alpha <= 0 or dropout not in [0, 1).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_positive_int("r", r)
        d, k = base.out_features, base.in_features
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base, self.r, self.alpha, self.scaling = base, r, alpha, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, k, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(d, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        """k, the input width of the wrapped layer."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """d, the output width of the wrapped layer."""
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) B A, shape (d, k)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., k) -> W0 x + b0 + (alpha / r) B A x, shape (..., d); after ``merge()`` one matmul."""
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + (alpha / r) B A: inference then costs one matmul, like the base layer.

        Merging a merged layer warns (UserWarning) and does nothing, as in peft: adding the
        update twice would silently change the model.
        """
        if self.merged:
            warnings.warn("this LoRALinear is already merged; nothing to do (unmerge() first to merge again)",
                          UserWarning, stacklevel=2)
            return
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - (alpha / r) B A: restores the pretrained weight up to float rounding.

        Unmerging a layer that is not merged warns (UserWarning) and does nothing, as in peft.
        """
        if not self.merged:
            warnings.warn("this LoRALinear is not merged; nothing to unmerge", UserWarning, stacklevel=2)
            return
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def add_lora(model: nn.Module, target_modules: Sequence[str], r: int, alpha: float, dropout: float = 0.0,
             keep_trainable: Iterable[str] = ()) -> nn.Module:
    """Wrap the chosen ``nn.Linear`` layers of ``model`` in ``LoRALinear`` and freeze the rest.

    Args:
        model: changed in place.
        target_modules: names matched as in peft's ``LoraConfig(target_modules=...)``:
            a module matches when its full name equals a target or ends with "." + target
            (for a dlbook GPT: ``"attn.qkv"``, ``"attn.proj"``, ``"ffn.0"``, ``"ffn.2"``).
        r, alpha, dropout: as in ``LoRALinear``.
        keep_trainable: module names that stay trainable too (a new task head, say).

    Returns:
        ``model``, whose only trainable parameters are the LoRA factors (and ``keep_trainable``).

    Raises:
        TypeError: if a matched module is not an ``nn.Linear``.
        ValueError: if no module matches.
    """
    if isinstance(target_modules, str):
        raise TypeError(f"target_modules must be a list of names, got the string {target_modules!r}")
    names = [n for n, _ in model.named_modules() if n and _matches(n, target_modules)]
    if not names:
        raise ValueError(f"no module of the model matches target_modules={list(target_modules)}; names look like "
                         f"{[n for n, _ in model.named_modules() if n][:6]}")
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name!r} is a {type(module).__name__}; LoRA here wraps nn.Linear layers only")
    freeze(model, keep_trainable)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Call ``merge()`` on every ``LoRALinear`` of ``model``; returns ``model``."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Call ``unmerge()`` on every ``LoRALinear`` of ``model``; returns ``model``."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    return model


# ----------------------------------------------------------------------------- adapters

class Adapter(nn.Module):
    """A bottleneck adapter with a residual (Houlsby et al. 2019).

    .. math:: y = h + W_{up}\\, \\mathrm{GELU}(W_{down} h + b_{down}) + b_{up}

    with W_down (m, C) and W_up (C, m), m = ``bottleneck``. W_up and b_up start at zero,
    so the adapter starts as the identity (the pretrained model is unchanged) and
    W_up gets a gradient at once. Trainable parameters: 2 m C + m + C.

    Args:
        dim: C, the width of the hidden states it adapts.
        bottleneck: m >= 1.

    Shapes: (..., C) -> (..., C).
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("bottleneck", bottleneck)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class _Then(nn.Module):
    """module(*args, **kwargs) followed by adapter: a wrapper that keeps the module's call signature."""

    def __init__(self, module: nn.Module, adapter: nn.Module):
        super().__init__()
        self.module, self.adapter = module, adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.module(*args, **kwargs))


def _blocks(model: nn.Module) -> list[TransformerBlock]:
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no dlbook.transformer.TransformerBlock to adapt")
    return blocks


def add_adapters(model: nn.Module, bottleneck: int, keep_trainable: Iterable[str] = ()) -> nn.Module:
    """Insert an ``Adapter`` after the attention and after the FFN of every ``TransformerBlock``.

    Each adapter sits inside its residual branch, before the addition (Houlsby's
    placement), and the rest of the model is frozen. The adapters run *after* the
    layer they follow, so unlike LoRA they add sequential work at inference.

    Args:
        model: a model built from ``dlbook.transformer.TransformerBlock``; changed in place.
        bottleneck: m, the adapters' hidden width.
        keep_trainable: module names that stay trainable too.

    Returns:
        ``model``.
    """
    blocks = _blocks(model)
    freeze(model, keep_trainable)
    for block in blocks:
        c = block.attn.n_embd
        block.attn = _Then(block.attn, Adapter(c, bottleneck).to(block.ln1.weight.device))
        block.ffn = _Then(block.ffn, Adapter(c, bottleneck).to(block.ln1.weight.device))
    return model


# ----------------------------------------------------------------------------- prefix and prompt tuning

class PrefixAttention(nn.Module):
    """Self-attention with P trainable key/value vectors per head in front of the sequence (Li & Liang 2021).

    Every query, at every position, attends to the P prefix positions and then (causally,
    if the block is causal) to the tokens. The wrapped ``MultiHeadAttention`` is frozen;
    only ``prefix_k`` and ``prefix_v`` (each (H, P, D)) train: 2 P C parameters per layer.
    Prefix keys are not rotated when the model uses RoPE (they have no position).

    Args:
        attn: a ``dlbook.transformer.MultiHeadAttention``.
        n_prefix: P >= 1.
        init_std: standard deviation of the prefixes' normal initialization.

    forward(x (B, T, C), key_padding_mask (B, T) or None, is_causal) -> (B, T, C), the
    call signature of ``MultiHeadAttention`` (no cross-attention, no KV cache).
    """

    def __init__(self, attn: MultiHeadAttention, n_prefix: int, init_std: float = 0.5):
        super().__init__()
        if not isinstance(attn, MultiHeadAttention):
            raise TypeError(f"PrefixAttention wraps a dlbook MultiHeadAttention, got {type(attn).__name__}")
        _check_positive_int("n_prefix", n_prefix)
        self.attn, self.n_prefix = attn, n_prefix
        for p in attn.parameters():
            p.requires_grad_(False)
        h, d = attn.n_head, attn.n_embd // attn.n_head
        w = attn.qkv.weight
        self.prefix_k = nn.Parameter(torch.randn(h, n_prefix, d, dtype=w.dtype, device=w.device) * init_std)
        self.prefix_v = nn.Parameter(torch.randn(h, n_prefix, d, dtype=w.dtype, device=w.device) * init_std)

    def forward(self, x, memory=None, key_padding_mask=None, is_causal=False, cache=None, layer=0):
        if memory is not None or cache is not None:
            raise ValueError("PrefixAttention supports self-attention without a KV cache only")
        a, (b, t, c) = self.attn, x.shape
        q, k, v = (a.split_heads(z) for z in a.qkv(x).split(c, dim=-1))          # (B, H, T, D)
        if a.rope is not None:
            q, k = a.rope(q), a.rope(k)
        p = self.n_prefix
        k = torch.cat([self.prefix_k.expand(b, -1, -1, -1), k], dim=2)           # (B, H, P+T, D)
        v = torch.cat([self.prefix_v.expand(b, -1, -1, -1), v], dim=2)
        mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device)            # (T, P+T)
        if is_causal:
            mask[:, p:] = causal_mask(t, device=x.device)
        if key_padding_mask is not None:
            pad = torch.cat([key_padding_mask.new_zeros(b, p), key_padding_mask], dim=1)    # (B, P+T)
            mask = mask & ~pad[:, None, None, :]
        y = attention(q, k, v, mask, False, a.dropout if self.training else 0.0)            # (B, H, T, D)
        return a.proj(a.merge_heads(y))


def add_prefix(model: nn.Module, n_prefix: int, keep_trainable: Iterable[str] = (),
               init_std: float = 0.5) -> nn.Module:
    """Prefix tuning: wrap the self-attention of every ``TransformerBlock`` in ``PrefixAttention``.

    Freezes the rest of the model. Trainable parameters: 2 P C per layer (L layers: 2 L P C).

    Args:
        model: a model built from ``dlbook.transformer.TransformerBlock``; changed in place.
        n_prefix: P.
        keep_trainable: module names that stay trainable too.
        init_std: as in ``PrefixAttention``.

    Returns:
        ``model``.
    """
    blocks = _blocks(model)
    freeze(model, keep_trainable)
    for block in blocks:
        block.attn = PrefixAttention(block.attn, n_prefix, init_std)
    return model


class PromptTuning(nn.Module):
    """Prompt tuning: P trainable input embeddings before the tokens of a frozen GPT (Lester et al. 2021).

    The tokens keep their own positions 0..T-1 (the learned prompt vectors get none: being
    free vectors, they can absorb any position), the prompt goes in front, every token
    attends to it, and the logits of the prompt positions are dropped. Only ``prompt``
    (P, C) trains. (P-tuning, Liu et al. 2021, also learns input embeddings but produces
    them with a small network and may place them anywhere in the input; prefix tuning
    instead trains keys and values at every layer.)

    Args:
        model: a ``dlbook.transformer.GPT`` (or anything with ``tok_emb``, ``pos_emb``,
            ``pe``, ``drop``, ``blocks``, ``ln_f``, ``head``, ``block_size``); frozen here.
        n_prompt: P >= 1.
        init_std: the prompt is initialized from randomly chosen token embeddings
            when None (a common choice), else N(0, init_std).

    forward(idx (B, T), targets (B, T) or None) -> logits (B, T, V), loss or None, like ``GPT``.
    """

    def __init__(self, model: nn.Module, n_prompt: int, init_std: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        for attr in ("tok_emb", "blocks", "ln_f", "head"):
            if not hasattr(model, attr):
                raise TypeError(f"PromptTuning needs a GPT-like model with .{attr}; got {type(model).__name__}")
        _check_positive_int("n_prompt", n_prompt)
        self.model, self.n_prompt = model, n_prompt
        freeze(model)
        emb = model.tok_emb.weight
        if init_std is None:
            rows = torch.randint(0, emb.size(0), (n_prompt,), generator=generator).to(emb.device)
            init = emb.detach()[rows].clone()
        else:
            init = torch.randn(n_prompt, emb.size(1), generator=generator).to(emb) * init_std
        self.prompt = nn.Parameter(init)

    def forward(self, idx, targets=None):
        m, t = self.model, idx.size(1)
        if t > m.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size={m.block_size}")
        x = m.tok_emb(idx)                                                       # (B, T, C)
        if getattr(m, "pos_emb", None) is not None:
            x = x + m.pos_emb(torch.arange(t, device=idx.device))
        elif getattr(m, "pe", None) is not None:
            x = x + m.pe[:t]
        x = torch.cat([self.prompt.expand(idx.size(0), -1, -1), m.drop(x)], dim=1)   # (B, P+T, C)
        for i, block in enumerate(m.blocks):
            x = block(x, layer=i)
        logits = m.head(m.ln_f(x[:, self.n_prompt:]))                            # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss


def count_trainable(model: nn.Module) -> int:
    """Number of distinct trainable parameters (``requires_grad``; a tied weight counts once)."""
    return count_parameters(model, trainable_only=True)


# ----------------------------------------------------------------------------- preferences

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss on preference pairs: mean of -log sigma(r_chosen - r_rejected).

    Under the Bradley-Terry model P(y_w preferred to y_l) = sigma(r(y_w) - r(y_l)); this is
    its negative log-likelihood, averaged over the N pairs.

    Args:
        r_chosen, r_rejected: rewards of the preferred and the rejected response, shape (N,).

    Returns:
        A scalar tensor.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must have the same shape, got {tuple(r_chosen.shape)} and "
                         f"{tuple(r_rejected.shape)}")
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def sequence_logprob(model: nn.Module, prompt: torch.Tensor, response: torch.Tensor,
                     response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(response | prompt) = sum over response tokens of log p(y_t | prompt, y_<t).

    The prompt's own tokens are context only: their log-probabilities are not counted. The
    model sees prompt + response without its last token (Tp + Tr - 1 positions, so a model
    with block size T fits prompt and response of total length T + 1).

    Args:
        model: a causal LM, ``model(idx)`` -> logits (B, T, V) or a tuple whose first item they are.
        prompt: (B, Tp) token ids, Tp >= 1 (or (Tp,), shared by the batch).
        response: (B, Tr) token ids.
        response_mask: (B, Tr) bool, True for real response tokens (False for padding).

    Returns:
        (B,) summed log-probabilities (differentiable w.r.t. the model's parameters).
    """
    if response.dim() != 2:
        raise ValueError(f"response must have shape (B, Tr), got {tuple(response.shape)}")
    if prompt.dim() == 1:
        prompt = prompt.expand(response.size(0), -1)
    if prompt.dim() != 2 or prompt.size(0) != response.size(0) or prompt.size(1) < 1:
        raise ValueError(f"prompt must have shape (B, Tp) with Tp >= 1 and the response's B, got "
                         f"{tuple(prompt.shape)} for a response of shape {tuple(response.shape)}")
    tp, tr = prompt.size(1), response.size(1)
    out = model(torch.cat([prompt, response[:, :-1]], dim=1))                   # the last token predicts nothing
    logits = out[0] if isinstance(out, tuple) else out                           # (B, Tp+Tr-1, V)
    logits = logits[:, tp - 1:tp + tr - 1]                                      # predicts the response
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = logits.log_softmax(-1)
    token_logp = logp.gather(-1, response[..., None]).squeeze(-1)                # (B, Tr)
    if response_mask is not None:
        token_logp = token_logp * response_mask.to(token_logp.dtype)
    return token_logp.sum(-1)


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi(y``|x) - log pi_ref(y|``x)), same shape as the inputs."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Direct preference optimization (Rafailov et al. 2023), averaged over N pairs.

    .. math::

        -\\log \\sigma\\Big(\\beta\\big[(\\log\\pi(y_w|x) - \\log\\pi_{ref}(y_w|x))
                              - (\\log\\pi(y_l|x) - \\log\\pi_{ref}(y_l|x))\\big]\\Big)

    The reference log-probabilities come from a frozen copy of the starting policy;
    they are detached here so that no gradient can reach the reference. When the
    policy equals the reference the loss is log 2.

    Args:
        policy_chosen_logps, policy_rejected_logps: (N,) summed response log-probabilities
            under the policy (``sequence_logprob``).
        ref_chosen_logps, ref_rejected_logps: (N,) the same under the reference.
        beta: > 0, the strength of the implicit KL penalty.

    Returns:
        A scalar tensor.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-probability tensors must have one shape (N,), got {sorted(shapes)}")
    margin = (policy_chosen_logps - ref_chosen_logps.detach()) - (policy_rejected_logps - ref_rejected_logps.detach())
    return -F.logsigmoid(beta * margin).mean()


# ----------------------------------------------------------------------------- a toy suite of tasks

#: Token id of the separator between input and answer; digits are 0..9, task tokens start at 11.
SEP = 10
#: The suite of digit tasks as (reverse, shift) pairs; task i is named by token 11 + i.
DIGIT_TASKS = tuple((reverse, shift) for reverse in (False, True) for shift in range(5))


def digit_task(n: int, length: int = 4, reverse: bool = False, shift: int = 0, task_token: int = 11,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples of one digit-transformation task as language-model inputs and targets.

    A sequence is ``[task_token, x_1..x_L, SEP, y_1..y_L]`` with x uniform random digits and
    y = (x reversed if ``reverse``) + ``shift`` mod 10. Inputs are the sequence without its
    last token, targets the sequence shifted by one, with -100 (ignored by
    ``F.cross_entropy``, hence by ``GPT``'s loss) everywhere but on the answer digits.

    Args:
        n: number of examples.
        length: L, digits per input.
        reverse, shift: the task.
        task_token: the id that names the task (>= 11 by convention).
        generator: for the random digits.

    Returns:
        inputs (n, 2L + 1) and targets (n, 2L + 1), int64.
    """
    _check_positive_int("n", n)
    _check_positive_int("length", length)
    if isinstance(shift, bool) or not isinstance(shift, int):
        raise TypeError(f"shift must be an int, got {type(shift).__name__}")
    x = torch.randint(0, 10, (n, length), generator=generator)
    y = ((x.flip(1) if reverse else x) + shift) % 10
    seq = torch.cat([torch.full((n, 1), task_token), x, torch.full((n, 1), SEP), y], dim=1)   # (n, 2L + 2)
    targets = seq[:, 1:].clone()
    targets[:, :length + 1] = -100
    return seq[:, :-1], targets


def digit_mixture(tasks: Sequence[int], n: int, length: int = 4,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples drawn evenly at random from tasks of ``DIGIT_TASKS`` (indices), each named by token 11 + i.

    Returns inputs and targets (n, 2L + 1) as ``digit_task``.
    """
    tasks = list(tasks)
    if not tasks or any(not 0 <= i < len(DIGIT_TASKS) for i in tasks):
        raise ValueError(f"tasks must be indices into DIGIT_TASKS (0..{len(DIGIT_TASKS) - 1}), got {tasks}")
    which = torch.randint(0, len(tasks), (n,), generator=generator)
    xs, ys = zip(*(digit_task(n, length, *DIGIT_TASKS[i], task_token=11 + i, generator=generator) for i in tasks))
    rows = torch.arange(n)
    return torch.stack(xs)[which, rows], torch.stack(ys)[which, rows]


def pretrain_digit_gpt(tasks: Sequence[int], steps: int = 600, length: int = 4, n_embd: int = 64, n_layer: int = 2,
                       n_head: int = 4, lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                       device=None) -> nn.Module:
    """A small ``GPT`` trained from scratch on a mixture of digit tasks: the chapter's "pretrained model".

    Vocabulary: 10 digits, ``SEP`` and one token per task of ``DIGIT_TASKS`` (21 in all);
    block size 2L + 1. Initialized with std 0.125 (about 1/sqrt(width): GPT-2's 0.02 learns
    slowly at width 64). 600 steps take about 5 s of one CPU thread.

    Args:
        tasks: indices into ``DIGIT_TASKS`` to train on (leave some out to adapt to later).
        steps, lr, batch_size: ``train_steps`` on fresh random batches of ``digit_mixture``.
        seed: of the initialization and the data.
        device: where the model lives.

    Returns:
        The trained ``GPT`` (in train mode).
    """
    torch.manual_seed(seed)
    model = GPT(vocab_size=11 + len(DIGIT_TASKS), block_size=2 * length + 1, n_layer=n_layer, n_head=n_head,
                n_embd=n_embd).to(device)
    model.reset_parameters(std=0.125)
    g = torch.Generator().manual_seed(seed)

    def batches(step):
        x, y = digit_mixture(tasks, batch_size, length, generator=g)
        return x.to(device), y.to(device)

    train_steps(model, batches, steps, lr)
    return model


def train_steps(model: nn.Module, batches, steps: int, lr: float, weight_decay: float = 0.0,
                clip_grad_norm: float | None = 1.0) -> list[float]:
    """AdamW on the *trainable* parameters of a GPT-like model, one batch per step.

    Args:
        model: ``model(x, y)`` -> (logits, loss), like ``dlbook.transformer.GPT`` or ``PromptTuning``.
        batches: a callable ``batches(step)`` -> (x, y) on the model's device.
        steps: number of optimizer steps.
        lr: constant learning rate.
        weight_decay, clip_grad_norm: as in ``torch.optim.AdamW`` / ``clip_grad_norm_`` (None: no clipping).

    Returns:
        The training loss of every step.
    """
    _check_positive_int("steps", steps)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for step in range(steps):
        x, y = batches(step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def answer_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of examples whose every scored target (targets != -100) is the argmax prediction.

    Args:
        model: ``model(x)`` -> logits (B, T, V) or (logits, ...).
        inputs, targets: (N, T) as from ``digit_task`` (teacher forcing: each answer digit is
            predicted from the true earlier digits).
    """
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(inputs), batch_size):
        out = model(inputs[i:i + batch_size])
        logits = out[0] if isinstance(out, tuple) else out
        y = targets[i:i + batch_size]
        ok = (logits.argmax(-1) == y) | (y == -100)
        correct += int(ok.all(dim=1).sum())
    model.train(was_training)
    return correct / len(inputs)
