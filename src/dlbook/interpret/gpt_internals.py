"""What a ``dlbook.transformer.GPT`` computes inside (chapter 7, notebooks 1 and 5).

``gpt_hidden_states`` collects the residual stream (the embeddings, then the output of each
block), ``gpt_attention`` the attention weights of every head, and ``gpt_head_outputs`` what each
head writes from each key position. All three run the model once in ``eval()`` with hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from dlbook.interpret._checks import _EvalMode

__all__ = [
    "gpt_hidden_states", "gpt_attention", "gpt_head_outputs",
]


def _run_hooked(model, idx: torch.Tensor, handles) -> None:
    """One forward pass of a GPT in eval mode without gradients, then remove the hooks."""
    try:
        with _EvalMode(model), torch.no_grad():
            model(idx)
    finally:
        for h in handles:
            h.remove()


def _check_gpt(model) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "blocks") or not hasattr(model, "drop"):
        raise TypeError(f"expected a dlbook.transformer.GPT (with .drop and .blocks), got {type(model).__name__}")


def gpt_hidden_states(model, idx: torch.Tensor) -> torch.Tensor:
    """The residual stream of a ``dlbook.transformer.GPT`` after every layer.

    Layer 0 is the input of the first block (token + position embedding), layer l
    the output of block l, so a model with L blocks gives L + 1 layers. The final
    LayerNorm and the head are not included. Runs in ``eval()`` without gradients.

    Args:
        model: a ``GPT`` (anything with ``.drop`` applied to the embeddings and ``.blocks``).
        idx: token ids (B, T), int64.

    Returns:
        Hidden states of shape (L + 1, B, T, C).
    """
    _check_gpt(model)
    states: list[torch.Tensor] = []

    def keep(module, args, output):
        states.append(output.detach())

    _run_hooked(model, idx, [model.drop.register_forward_hook(keep)]
                + [b.register_forward_hook(keep) for b in model.blocks])
    return torch.stack(states)


def gpt_attention(model, idx: torch.Tensor) -> torch.Tensor:
    """The causal self-attention weights of every head of a ``dlbook.transformer.GPT``.

    The model computes attention with a fused kernel that never stores the weights,
    so each layer's weights softmax(q k^T / sqrt(D)) are recomputed from the input of
    its attention module (``MultiHeadAttention.attention_weights``: q and k from the
    same ``qkv`` projection, rotated when the model uses RoPE). Row i of a map holds how query position i spreads its attention
    over key positions j <= i.

    Args:
        model: a ``GPT``; idx: token ids (B, T).

    Returns:
        Weights of shape (L, B, H, T, T), each row summing to 1 (zeros above the diagonal).
    """
    _check_gpt(model)
    maps: list[torch.Tensor] = []

    def record(module, args, kwargs):
        maps.append(module.attention_weights(args[0], is_causal=True).detach())

    _run_hooked(model, idx, [b.attn.register_forward_pre_hook(record, with_kwargs=True) for b in model.blocks])
    return torch.stack(maps)


def gpt_head_outputs(model, idx: torch.Tensor) -> torch.Tensor:
    """What each head of a ``dlbook.transformer.GPT`` writes from each key position.

    A head's output at query i is ``sum_j alpha_ij W_O^h v_j``: the attention weights
    (``gpt_attention``) mix the vectors ``W_O^h v_j``, the value of key j mapped through
    the head's own columns of the output projection. This returns those vectors, so that
    a weight can be compared with the size of what it multiplies (chapter 7, notebook 1).
    Weighted by ``gpt_attention`` and summed over keys and heads, plus the projection's
    bias, they give the attention module's output (up to rounding).

    Args:
        model: a ``GPT``; idx: token ids (B, T).

    Returns:
        Vectors of shape (L, B, H, T, C): layer, batch, head, key position, model width.
    """
    _check_gpt(model)
    outs: list[torch.Tensor] = []

    def record(module, args, kwargs):
        c, h = module.n_embd, module.n_head
        v = module.split_heads(module.qkv(args[0]).split(c, dim=-1)[2])                # (B, H, T, D)
        w_o = module.proj.weight.view(c, h, c // h)                                        # (C, H, D)
        outs.append(torch.einsum("bhtd,chd->bhtc", v, w_o).detach())

    _run_hooked(model, idx, [b.attn.register_forward_pre_hook(record, with_kwargs=True) for b in model.blocks])
    return torch.stack(outs)
