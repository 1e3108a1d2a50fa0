"""Representations of a pretrained model (chapter 4, notebook 3).

``MLMEncoder`` is a bidirectional encoder over ``dlbook.transformer.Encoder``'s blocks that
returns every layer's hidden states; ``hidden_states`` gives the same per-layer states from a
``GPT`` or an ``EncoderDecoder``'s encoder. ``pool`` ([CLS] or mask-aware mean) and
``combine_layers`` turn them into one vector per sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook._checks import check_int as _check_int
from dlbook.pretrain._checks import _check_long
from dlbook.pretrain.objectives import IGNORE_INDEX
from dlbook.transformer import GPT, Encoder, EncoderDecoder, gpt2_init_

__all__ = [
    "pool", "combine_layers", "MLMEncoder", "hidden_states",
]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, how: str = "cls") -> torch.Tensor:
    """One vector per sequence from per-token states.

    * ``"cls"``: the state of the first token, h[:, 0] (BERT puts [CLS] there).
    * ``"mean"``: the mean over real tokens only, sum_t m_t h_t / sum_t m_t, where
      m = ``attention_mask`` (1 for tokens, 0 for padding); padding never contributes.

    Args:
        hidden: (B, T, C); attention_mask: (B, T) of 0/1 or bool (None = all tokens).

    Returns:
        (B, C).
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise TypeError(f"hidden must be a (B, T, C) tensor, got shape {tuple(getattr(hidden, 'shape', ()))}")
    if how == "cls":
        return hidden[:, 0]
    if how != "mean":
        raise ValueError(f"how must be 'cls' or 'mean', got {how!r}")
    if attention_mask is None:
        return hidden.mean(dim=1)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask must have shape {tuple(hidden.shape[:2])}, got {tuple(attention_mask.shape)}")
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)                          # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def combine_layers(states, layers=(-1,), how: str = "sum") -> torch.Tensor:
    """Combine chosen layers' hidden states: BERT's feature-based recipes.

    Args:
        states: sequence of (B, T, C) tensors, index 0 = embeddings, i = after block i.
        layers: indices into ``states``, e.g. (-1,) last, (-2,) second-to-last,
            (-4, -3, -2, -1) the last four.
        how: ``"sum"`` -> (B, T, C) or ``"concat"`` -> (B, T, C * len(layers)).
    """
    if how not in ("sum", "concat"):
        raise ValueError(f"how must be 'sum' or 'concat', got {how!r}")
    layers = tuple(layers)
    if not layers or any(not -len(states) <= i < len(states) for i in layers):
        raise ValueError(f"layers must be non-empty indices into {len(states)} hidden states, got {layers}")
    chosen = [states[i] for i in layers]
    return torch.cat(chosen, dim=-1) if how == "concat" else torch.stack(chosen).sum(0)


def _run_blocks(x, blocks, ln_f, **kwargs) -> list[torch.Tensor]:
    """[x, after block 1, ..., ln_f(after block L)]: L + 1 tensors (B, T, C)."""
    states = [x]
    for block in blocks:
        x = block(x, **kwargs)
        states.append(x)
    states[-1] = ln_f(x)
    return states


class MLMEncoder(nn.Module):
    """A BERT-style bidirectional encoder: token + learned position embeddings,
    ``dlbook.transformer.Encoder`` (pre-LN blocks and a final LayerNorm), and a masked-LM head
    tied to the token embedding.

    Args:
        vocab_size, block_size: V and the longest input T.
        n_layer, n_head, n_embd, dropout: as in ``dlbook.transformer.GPT``.
        pad_id: the [PAD] id; ``attention_mask`` defaults to ``idx != pad_id``.
        std: init scale; default 1/sqrt(n_embd) (GPT-2's 0.02 suits width 768, and leaves a
            width-64 model's attention uniform for a long time; see chapter 4).

    ``forward(idx (B, T), attention_mask=None, labels=None) -> (logits (B, T, V), loss or None)``;
    the loss is cross-entropy over positions whose label is not -100.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 64,
                 dropout: float = 0.0, pad_id: int = 0, std: float | None = None):
        super().__init__()
        _check_int("vocab_size", vocab_size, 2)
        _check_int("block_size", block_size, 1)
        self.vocab_size, self.block_size, self.n_layer, self.n_embd, self.pad_id = (
            vocab_size, block_size, n_layer, n_embd, pad_id)
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.encoder = Encoder(n_layer, n_embd, n_head, dropout, pre_ln=True)
        self.head_bias = nn.Parameter(torch.zeros(vocab_size))
        self.reset_parameters(std)

    def reset_parameters(self, std: float | None = None) -> None:
        """N(0, std) weights (default 1/sqrt(n_embd)), zero biases, unit LayerNorm gains."""
        gpt2_init_(self, self.n_layer, 1 / math.sqrt(self.n_embd) if std is None else std)

    def attention_mask(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) bool, True for real tokens (``idx != pad_id``)."""
        return idx != self.pad_id

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every layer's states: L + 1 tensors of shape (B, T, C).

        ``states[0]`` are the embeddings, ``states[i]`` the residual stream after block i, and
        the last one has the final LayerNorm applied (it is what the MLM head reads).
        """
        _check_long("idx", idx, (2,))
        if idx.size(1) > self.block_size:
            raise ValueError(f"sequence of length {idx.size(1)} is longer than block_size={self.block_size}")
        mask = self.attention_mask(idx) if attention_mask is None else attention_mask.bool()
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(idx.size(1), device=idx.device)))
        return _run_blocks(x, self.encoder.blocks, self.encoder.ln_f, padding_mask=~mask)

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden states (B, T, C)."""
        return self.hidden_states(idx, attention_mask)[-1]

    def forward(self, idx, attention_mask=None, labels=None):
        h = self.encode(idx, attention_mask)
        logits = F.linear(h, self.tok_emb.weight, self.head_bias)               # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss

    def mlm_loss(self, idx: torch.Tensor, labels: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """The same loss as ``forward(idx, labels=labels)[1]``, computing the (V-wide) output layer only
        at the selected positions (labels != -100): cheaper with a large vocabulary."""
        h = self.encode(idx, attention_mask)
        sel = labels != IGNORE_INDEX
        logits = F.linear(h[sel], self.tok_emb.weight, self.head_bias)          # (n_selected, V)
        return F.cross_entropy(logits.float(), labels[sel])

    pool = staticmethod(pool)


def hidden_states(model: nn.Module, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  pad_id: int = 0) -> list[torch.Tensor]:
    """Per-layer states (L + 1 tensors (B, T, C)) of an ``MLMEncoder``, a ``GPT`` or an
    ``EncoderDecoder``'s encoder; the last has the final LayerNorm applied.

    For a causal GPT each state at position t depends on tokens <= t only, so right padding
    never changes the states of real tokens (the mask is used for pooling only).
    """
    if isinstance(model, MLMEncoder):
        return model.hidden_states(idx, attention_mask)
    _check_long("idx", idx, (2,))
    mask = (idx != pad_id) if attention_mask is None else attention_mask.bool()
    if isinstance(model, GPT):
        x = model.tok_emb(idx)
        if model.pos_emb is not None:
            x = x + model.pos_emb(torch.arange(idx.size(1), device=idx.device))
        elif model.pe is not None:
            x = x + model.pe[:idx.size(1)]
        return _run_blocks(x, model.blocks, model.ln_f)
    if isinstance(model, EncoderDecoder):
        x = model.src_emb(idx) * model.scale + model.pe[:idx.size(1)]
        return _run_blocks(x, model.encoder.blocks, model.encoder.ln_f, padding_mask=~mask)
    raise TypeError(f"hidden_states supports MLMEncoder, GPT and EncoderDecoder, got {type(model).__name__}")
