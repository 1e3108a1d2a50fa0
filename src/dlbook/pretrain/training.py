"""The pretraining loops: ``pretrain_mlm``, ``pretrain_clm`` and ``pretrain_span``, or ``pretrain(objective=...)``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.pretrain.objectives import IGNORE_INDEX, mask_tokens, pad_sequences, span_corrupt
from dlbook.pretrain.representations import MLMEncoder
from dlbook.pretrain.tokenizer import PretrainTokenizer
from dlbook.transformer import GPT, EncoderDecoder, _sampled_training, train_lm

__all__ = [
    "pretrain_mlm", "pretrain_clm", "pretrain_span", "pretrain",
]


def _windows(ids: torch.Tensor, length: int, batch_size: int, g) -> torch.Tensor:
    if len(ids) <= length:
        raise ValueError(f"need more than {length} tokens of pretraining text, got {len(ids)}")
    starts = torch.randint(len(ids) - length, (batch_size,), generator=g)
    return ids[starts[:, None] + torch.arange(length)]


def pretrain_mlm(model: MLMEncoder, ids: torch.Tensor, tokenizer: PretrainTokenizer, steps: int,
                 batch_size: int = 32, lr: float = 2e-3, p: float = 0.15, weight_decay: float = 0.01,
                 warmup: int | None = None, clip_grad_norm: float | None = 1.0, seed: int = 0,
                 amp: bool = False) -> list[float]:
    """Masked-LM pretraining on random windows of a token stream ``ids`` (N,).

    Each example is [CLS] + block_size - 1 consecutive tokens, corrupted by ``mask_tokens``
    (specials never selected); the loss is cross-entropy on the selected positions only.
    Returns the per-step losses.
    """
    device = next(model.parameters()).device

    def batch_loss(g):
        x = _windows(ids, model.block_size - 1, batch_size, g)
        x = torch.cat([torch.full((batch_size, 1), tokenizer.cls_id), x], dim=1)
        inputs, labels = mask_tokens(x, tokenizer.mask_id, tokenizer.vocab_size,
                                     [s for s in tokenizer.special_ids if s != tokenizer.mask_id], p, g)
        return model.mlm_loss(inputs.to(device), labels.to(device))

    return _sampled_training(model, batch_loss, steps, lr, weight_decay, warmup, clip_grad_norm, seed, amp)


def pretrain_clm(model: GPT, ids: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3,
                 weight_decay: float = 0.01, warmup: int | None = None, clip_grad_norm: float | None = 1.0,
                 seed: int = 0, amp: bool = False) -> list[float]:
    """Causal-LM pretraining (next token, causal mask): ``dlbook.transformer.train_lm``."""
    return train_lm(model, ids, steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                    clip_grad_norm=clip_grad_norm, seed=seed, amp=amp)


def pretrain_span(model: EncoderDecoder, ids: torch.Tensor, tokenizer: PretrainTokenizer, steps: int,
                  batch_size: int = 32, lr: float = 2e-3, p: float = 0.15, mean_span: float = 3.0,
                  weight_decay: float = 0.01, warmup: int | None = None, clip_grad_norm: float | None = 1.0,
                  seed: int = 0, amp: bool = False) -> list[float]:
    """T5 span-corruption pretraining of an encoder-decoder on random windows of ``ids``.

    Encoder input: a window with spans replaced by sentinels; decoder input: [PAD] (T5's start
    token) + targets[:-1]; loss: cross-entropy on every target token (padding ignored).
    """
    device = next(model.parameters()).device
    length = model.block_size

    def batch_loss(g):
        x = _windows(ids, length, batch_size, g)
        pairs = [span_corrupt(row, tokenizer.sentinel_ids, p, mean_span, g) for row in x]
        src = pad_sequences([a for a, _ in pairs], tokenizer.pad_id)
        tgt = pad_sequences([b for _, b in pairs], IGNORE_INDEX)
        dec_in = torch.cat([torch.full((batch_size, 1), tokenizer.pad_id), tgt[:, :-1]], dim=1)
        dec_in = dec_in.masked_fill(dec_in == IGNORE_INDEX, tokenizer.pad_id)
        logits = model(src.to(device), dec_in.to(device))
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt.to(device).flatten(), ignore_index=IGNORE_INDEX)

    return _sampled_training(model, batch_loss, steps, lr, weight_decay, warmup, clip_grad_norm, seed, amp)


def pretrain(model: nn.Module, ids: torch.Tensor, objective: str, steps: int,
             tokenizer: PretrainTokenizer | None = None, **kwargs) -> list[float]:
    """Dispatch to ``pretrain_mlm`` ("mlm"), ``pretrain_clm`` ("clm") or ``pretrain_span`` ("span")."""
    if objective == "clm":
        return pretrain_clm(model, ids, steps, **kwargs)
    if objective not in ("mlm", "span"):
        raise ValueError(f"objective must be 'mlm', 'clm' or 'span', got {objective!r}")
    if tokenizer is None:
        raise ValueError(f"objective {objective!r} needs the tokenizer (its [MASK], [CLS] or sentinel ids)")
    fn = pretrain_mlm if objective == "mlm" else pretrain_span
    return fn(model, ids, tokenizer, steps, **kwargs)
