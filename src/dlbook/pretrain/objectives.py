"""The pretraining objectives' corruptions (chapter 4, notebook 2).

``mask_tokens`` (BERT's 80/10/10 masking; ``IGNORE_INDEX`` marks positions without a target),
``span_corrupt`` / ``span_restore`` (T5's span corruption) and ``pad_sequences``.
"""

from __future__ import annotations

import torch

from dlbook._checks import check_int as _check_int
from dlbook.pretrain._checks import _check_long, _check_p

__all__ = [
    "mask_tokens", "span_corrupt", "span_restore", "pad_sequences", "IGNORE_INDEX",
]


IGNORE_INDEX = -100
"""Label value that ``F.cross_entropy(..., ignore_index=-100)`` skips: positions without a target."""


# ----------------------------------------------------------------------------- objectives

def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, special_ids=(), p: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption: select positions, then 80% [MASK], 10% random, 10% unchanged.

    Each position whose id is not in ``special_ids`` is selected independently with
    probability ``p``. Of the selected: 80% become ``mask_id``, 10% a token drawn uniformly
    from the ids that are neither special nor ``mask_id``, 10% keep their token. Why not
    always [MASK]: [MASK] never occurs at fine-tuning time, so the model must also build a
    good representation of tokens it sees unmasked (and cannot trust any input token).

    Args:
        ids: (..., T) integer token ids (any leading shape).
        mask_id: the [MASK] id, in [0, vocab_size) and not in ``special_ids``.
        vocab_size: V; random replacements are drawn from [0, V) minus specials and mask_id.
        special_ids: ids never selected and never drawn ([PAD], [CLS], [SEP], ...).
        p: selection probability, in (0, 1).

    Returns:
        ``(inputs, labels)``, both shaped like ``ids``: ``labels`` holds the original id at
        selected positions and ``IGNORE_INDEX`` (-100) everywhere else, so that
        ``F.cross_entropy(logits.flatten(0, -2), labels.flatten())`` averages over the selected
        positions only.

    Raises:
        ValueError: p outside (0, 1), mask_id outside the vocabulary or inside ``special_ids``.
    """
    ids = _check_long("ids", ids, (1, 2, 3))
    p = _check_p("p", p)
    _check_int("vocab_size", vocab_size, 2)
    special = {int(s) for s in special_ids}
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be in [0, vocab_size={vocab_size}), got {mask_id}")
    if mask_id in special:
        raise ValueError(f"mask_id={mask_id} is listed in special_ids; special_ids are the tokens never selected "
                         "([PAD], [CLS], ...), mask_id is what selected tokens become: keep it out of that list")
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special and i != mask_id], device=ids.device)
    if len(allowed) == 0:
        raise ValueError("no ordinary token left to draw random replacements from")
    can = torch.ones_like(ids, dtype=torch.bool)
    for s in special:
        can &= ids != s
    u = torch.rand(ids.shape, generator=generator).to(ids.device)
    action = torch.rand(ids.shape, generator=generator).to(ids.device)
    pick = torch.randint(len(allowed), ids.shape, generator=generator).to(ids.device)
    selected = can & (u < p)
    inputs = ids.clone()
    inputs[selected & (action < 0.8)] = mask_id
    rand = selected & (action >= 0.8) & (action < 0.9)
    inputs[rand] = allowed[pick[rand]].to(ids.dtype)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def _segments(n: int, k: int, generator) -> list[int]:
    """Random composition of n items into k non-empty parts (lengths summing to n)."""
    if k == 1:
        return [n]
    cuts = (torch.randperm(n - 1, generator=generator)[:k - 1] + 1).sort().values.tolist()
    edges = [0] + cuts + [n]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def span_corrupt(ids: torch.Tensor, sentinel_ids, p: float = 0.15, mean_span: float = 3.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's span corruption of one sequence: drop spans, mark each by a sentinel, predict them.

    With N = len(ids): n_noise = max(1, round(p N)) tokens are corrupted, in
    n_spans = max(1, round(n_noise / mean_span)) spans (so the mean span length is about
    ``mean_span``). The noise tokens and the kept tokens are each cut into n_spans
    non-empty runs at random, and the runs alternate kept, noise, kept, noise, ...

    Example (sentinels s0, s1)::

        ids     = a b c d e f g h
        inputs  = a b s0 e f s1 h        (each span replaced by the next sentinel)
        targets = s0 c d s1 g            (each sentinel followed by the span it replaced)

    Args:
        ids: (N,) token ids, N >= max(2, mean_span).
        sentinel_ids: distinct sentinel ids, at least n_spans of them.
        p: fraction of tokens corrupted, in (0, 1); mean_span: mean span length, >= 1.

    Returns:
        ``(inputs, targets)``: 1-D int64 tensors of lengths N - n_noise + n_spans and
        n_noise + n_spans. ``span_restore(inputs, targets, sentinel_ids)`` rebuilds ``ids``.

    Raises:
        ValueError: p outside (0, 1), mean_span < 1, a sequence shorter than one span, too few sentinels.
    """
    ids = _check_long("ids", ids, (1,))
    p = _check_p("p", p)
    if isinstance(mean_span, bool) or not isinstance(mean_span, (int, float)) or mean_span < 1:
        raise ValueError(f"mean_span must be a number >= 1, got {mean_span!r}")
    n = len(ids)
    if n < max(2, mean_span):
        raise ValueError(f"the sequence has {n} tokens, shorter than one span (mean_span={mean_span}) plus one "
                         "kept token; pass longer sequences")
    sentinel_ids = [int(s) for s in sentinel_ids]
    n_noise = min(n - 1, max(1, round(p * n)))
    n_spans = min(max(1, round(n_noise / mean_span)), n_noise, n - n_noise)
    if len(sentinel_ids) < n_spans:
        raise ValueError(f"{n_spans} spans need {n_spans} sentinels, got {len(sentinel_ids)}")
    if len(set(sentinel_ids)) != len(sentinel_ids):
        raise ValueError("sentinel_ids must be distinct")
    noise_len = _segments(n_noise, n_spans, generator)
    keep_len = _segments(n - n_noise, n_spans, generator)
    # Runs alternate kept, noise, kept, noise, ...; a coin flip starts with a noise span instead
    # (then the last kept run ends the sequence), so that a span may also open the sequence.
    noise_first = bool(torch.rand((), generator=generator) < 0.5)
    inputs, targets, pos = [], [], 0
    for i in range(n_spans):
        sentinel = ids.new_tensor([sentinel_ids[i]])
        for kind in (("noise", "keep") if noise_first else ("keep", "noise")):
            if kind == "keep":
                inputs.append(ids[pos:pos + keep_len[i]])
                pos += keep_len[i]
            else:
                inputs.append(sentinel)
                targets += [sentinel, ids[pos:pos + noise_len[i]]]
                pos += noise_len[i]
    return torch.cat(inputs).long(), torch.cat(targets).long()


def span_restore(inputs: torch.Tensor, targets: torch.Tensor, sentinel_ids) -> torch.Tensor:
    """Undo ``span_corrupt``: put each sentinel's span from ``targets`` back into ``inputs``.

    Args:
        inputs, targets: 1-D ids as returned by ``span_corrupt`` (targets may be a model's output).

    Returns:
        The original (N,) sequence.
    """
    inputs, targets = _check_long("inputs", inputs, (1,)), _check_long("targets", targets, (1,))
    sentinels = {int(s) for s in sentinel_ids}
    spans, current = {}, None
    for t in targets.tolist():
        if t in sentinels:
            current = t
            spans[current] = []
        elif current is None:
            raise ValueError("targets must start with a sentinel")
        else:
            spans[current].append(t)
    out = []
    for t in inputs.tolist():
        if t in sentinels:
            if t not in spans:
                raise ValueError(f"sentinel {t} in inputs has no span in targets")
            out += spans[t]
        else:
            out.append(t)
    return torch.tensor(out, dtype=torch.long)


def pad_sequences(seqs, pad_value: int, length: int | None = None) -> torch.Tensor:
    """Stack 1-D tensors of different lengths into (B, length), padded on the right with ``pad_value``."""
    seqs = list(seqs)
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    length = max(len(s) for s in seqs) if length is None else length
    out = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has length {len(s)} > length={length}")
        out[i, :len(s)] = s
    return out
