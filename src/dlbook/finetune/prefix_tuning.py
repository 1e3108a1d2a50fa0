"""Prefix tuning and prompt tuning: trainable vectors in front of the sequence, every other weight frozen.

``PrefixAttention`` / ``add_prefix``: P trainable key and value vectors per head at *every* layer,
attended to by every query. ``PromptTuning``: P trainable input embeddings in front of the tokens,
nothing else trained.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.finetune._shared import _blocks, _check_positive_int
from dlbook.finetune.trainable import freeze
from dlbook.transformer import MultiHeadAttention, attention, causal_mask

__all__ = [
    "PrefixAttention", "add_prefix", "PromptTuning",
]


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
