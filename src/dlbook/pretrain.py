"""Pretraining objectives and transfer: one model trained on unlabelled text, then adapted.

Notation as in ``dlbook.transformer``: B batch, T length, C = ``n_embd`` width, L layers,
V vocabulary size.

* ``PretrainTokenizer``: characters plus the special tokens the objectives need
  ([PAD], [CLS], [SEP], [MASK], [UNK] and T5-style sentinels).
* ``docstring_task`` / ``pretraining_text``: the chapter's downstream task (which module a
  standard-library docstring comes from), split by docstring *before* pretraining, and an
  unlabelled pretraining corpus that holds none of the validation or test docstrings.
* ``mask_tokens`` (BERT's 80/10/10 masking), ``span_corrupt`` / ``span_restore`` (T5's span
  corruption) and ``pad_sequences``.
* ``MLMEncoder``: a bidirectional encoder over ``dlbook.transformer.Encoder``'s blocks with
  every layer's hidden states; ``pool`` ([CLS] or mask-aware mean) and ``combine_layers``.
* ``hidden_states``: the same per-layer states from a ``GPT`` or an ``EncoderDecoder``'s encoder.
* ``SequenceClassifier`` (pooling + layer choice + head, frozen or not) and
  ``finetune_classifier``, which trains through ``dlbook.train.fit``.
* ``pretrain_mlm`` / ``pretrain_clm`` / ``pretrain_span`` (or ``pretrain(objective=...)``) and
  ``pretrained``, which trains once and caches the weights (written atomically).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook._checks import check_int as _check_int
from dlbook.data import cache_dir, pydoc_text, tensor_loader
from dlbook.train import History, fit
from dlbook.transformer import GPT, Encoder, EncoderDecoder, _sampled_training, gpt2_init_, train_lm

__all__ = [
    "PretrainTokenizer", "DocTask", "docstring_task", "pretraining_text", "mask_tokens", "span_corrupt",
    "span_restore", "pad_sequences", "module_docstrings", "TASK_GROUPS", "pool", "combine_layers", "MLMEncoder", "hidden_states",
    "SequenceClassifier", "finetune_classifier", "pretrain_mlm", "pretrain_clm", "pretrain_span", "pretrain",
    "pretrained", "IGNORE_INDEX",
]

IGNORE_INDEX = -100
"""Label value that ``F.cross_entropy(..., ignore_index=-100)`` skips: positions without a target."""


# ----------------------------------------------------------------------------- checks

def _check_p(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {p!r}")
    return float(p)


def _check_long(name: str, ids, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() not in dims:
        shape = tuple(getattr(ids, "shape", ()))
        raise TypeError(f"{name} must be an integer tensor of token ids with {' or '.join(map(str, dims))} "
                        f"dimension(s), got {getattr(ids, 'dtype', type(ids).__name__)} of shape {shape}")
    return ids


# ----------------------------------------------------------------------------- tokenizer

_WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


class PretrainTokenizer:
    """Character- or word-level tokenizer with the special tokens of BERT and T5 in front.

    Ids: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK], 4 [UNK], then ``n_sentinels`` sentinels
    ``<s0>``, ``<s1>``, ... (T5's ``<extra_id_i>``), then the vocabulary learned from ``text``:

    * ``level="char"``: every character of ``text``, in sorted order;
    * ``level="word"``: the text is lower-cased and split into words, numbers and single
      punctuation marks; the ``max_vocab`` most frequent of those seen at least twice are kept
      (by count, ties alphabetically). A word vocabulary lets a small model learn what words
      mean from their contexts within seconds; characters would first have to be assembled
      into words, which takes far longer than a notebook's budget.

    Anything not in the vocabulary maps to [UNK], so a vocabulary learned from the
    pretraining corpus alone can encode any downstream text.

    Args:
        text: the text the vocabulary is learned from.
        n_sentinels: number of sentinel tokens (>= 1).
        level: ``"char"`` or ``"word"``.
        max_vocab: word level only: how many words to keep (default 4000).
    """

    SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")

    def __init__(self, text: str, n_sentinels: int = 16, level: str = "char", max_vocab: int | None = None):
        if not isinstance(text, str) or not text:
            raise ValueError("PretrainTokenizer needs a non-empty string to learn its vocabulary from")
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        _check_int("n_sentinels", n_sentinels)
        if level == "char":
            vocab = sorted(set(text))
        else:
            counts: dict[str, int] = {}
            for w in _WORD.findall(text.lower()):
                counts[w] = counts.get(w, 0) + 1
            ranked = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
            vocab = ranked[:_check_int("max_vocab", 4000 if max_vocab is None else max_vocab)]
        self.level = level
        self.itos = list(self.SPECIALS) + [f"<s{i}>" for i in range(n_sentinels)] + vocab
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id = range(5)
        self.sentinel_ids = tuple(range(5, 5 + n_sentinels))
        self.n_special = 5 + n_sentinels

    def tokens(self, text: str) -> list[str]:
        """The text split into tokens: its characters, or its lower-cased words and marks."""
        return list(text) if self.level == "char" else _WORD.findall(text.lower())

    @property
    def vocab_size(self) -> int:
        """The number of tokens V, special tokens included (ids run from 0 to V - 1)."""
        return len(self.itos)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The ids that are not characters or words (never selected for masking, never drawn as random tokens)."""
        return tuple(range(self.n_special))

    def encode(self, text: str) -> torch.Tensor:
        """A string -> int64 ids of shape (T,), one per token; unknown tokens -> [UNK]."""
        return torch.tensor([self.stoi.get(t, self.unk_id) for t in self.tokens(text)], dtype=torch.long)

    def decode(self, ids) -> str:
        """Ids (any 1-D sequence) -> string; special tokens are written by name, e.g. ``[MASK]``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {min(ids)}..{max(ids)}")
        return ("" if self.level == "char" else " ").join(self.itos[i] for i in ids)

    def encode_batch(self, texts, max_len: int, cls: bool = True) -> torch.Tensor:
        """Texts -> (B, max_len) ids: [CLS] (if ``cls``) + the first characters, then [PAD]s."""
        _check_int("max_len", max_len, 2)
        out = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text[:max_len] if self.level == "char" else text)[:max_len]
            if cls:
                ids = torch.cat([torch.tensor([self.cls_id]), ids])
            ids = ids[:max_len]
            out[i, :len(ids)] = ids
        return out

    def state_dict(self) -> dict:
        """A plain dict (the vocabulary, the number of specials, the level) that ``from_state_dict`` restores."""
        return {"itos": list(self.itos), "n_special": self.n_special, "level": self.level}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PretrainTokenizer":
        """The tokenizer that ``state_dict`` described."""
        tok = cls.__new__(cls)
        tok.itos, tok.level = list(state["itos"]), state.get("level", "char")
        tok.stoi = {s: i for i, s in enumerate(tok.itos)}
        tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id = range(5)
        tok.n_special = int(state["n_special"])
        tok.sentinel_ids = tuple(range(5, tok.n_special))
        return tok

    def __repr__(self) -> str:
        return f"PretrainTokenizer(vocab_size={self.vocab_size}, sentinels={len(self.sentinel_ids)})"


# ----------------------------------------------------------------------------- data

TASK_GROUPS = {
    "text": ("re", "string", "textwrap", "difflib", "html", "html.parser", "codecs", "csv", "unicodedata",
             "shlex", "tokenize"),
    "containers": ("collections", "heapq", "bisect", "queue", "enum", "dataclasses", "array", "weakref", "copy",
                   "contextlib"),
    "files": ("os", "pathlib", "shutil", "glob", "tempfile", "zipfile", "tarfile", "io", "gzip", "fnmatch"),
    "numbers": ("random", "statistics", "math", "decimal", "fractions", "cmath", "numbers", "operator"),
}
"""The default module families of the downstream task (a docstring's label is its module's family)."""

_EXTRA_MODULES = ("abc", "argparse", "ast", "asyncio", "base64", "calendar", "datetime", "email.message",
                  "functools", "hashlib", "hmac", "http.client", "inspect", "ipaddress", "itertools", "json",
                  "logging", "pickle", "pprint", "socket", "sqlite3", "string.templatelib", "struct",
                  "subprocess", "threading", "time", "traceback", "typing", "unittest", "urllib.parse",
                  "urllib.request", "uuid", "warnings", "xml.dom.minidom", "zlib")
"""Modules whose docstrings join the unlabelled pretraining text (none is in the downstream task)."""


def _own_doc(obj) -> bool:
    """False for a data value (a list, an enum member) whose docstring is only its type's."""
    return isinstance(obj, type) or getattr(obj, "__doc__", None) != getattr(type(obj), "__doc__", None)


def module_docstrings(name: str, min_length: int = 100, methods: bool = True, data_values: bool = True) -> list[str]:
    """Distinct docstrings (``inspect.getdoc``) of a module's own functions and classes and, with
    ``methods``, of the classes' methods, of at least ``min_length`` characters, in a stable order.

    ``data_values=False`` leaves out values (a list, an enum member) whose docstring is only their
    type's: such values come and go with what else was imported (pytest and Jupyter's kernel add
    some), so without them the result is the same in any process."""
    module = importlib.import_module(name)
    found: dict[str, None] = {}
    keep = (lambda v: True) if data_values else _own_doc
    for attr in sorted(dir(module)):
        obj = getattr(module, attr, None)
        # submodules are skipped: which of them are attributes depends on what else was imported
        if obj is None or inspect.ismodule(obj) or getattr(obj, "__module__", None) not in (name, f"_{name}", None):
            continue
        if not keep(obj):
            continue
        members = [obj] + ([v for _, v in sorted(vars(obj).items()) if not isinstance(v, (str, int, float))
                            and keep(v)] if methods and isinstance(obj, type) else [])
        for member in members:
            doc = inspect.getdoc(member)
            if doc and len(doc) >= min_length:
                found.setdefault(doc)
    return list(found)


@dataclass(frozen=True)
class DocTask:
    """The downstream task, split by docstring: lists of texts and int labels per split.

    Attributes:
        classes: label names, index = label id.
        train: ``(texts, labels)`` of the training split.
        val: the same for the validation split.
        test: the same for the test split; no docstring text is in two splits.
    """

    classes: tuple[str, ...]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]

    def tensors(self, tokenizer: PretrainTokenizer, max_len: int, split: str = "train"):
        """``(X (N, max_len) ids with [CLS] first, y (N,) labels)`` of one split."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        texts, labels = getattr(self, split)
        return tokenizer.encode_batch(texts, max_len), torch.tensor(labels, dtype=torch.long)


def docstring_task(groups: dict | None = None, val_frac: float = 0.15, test_frac: float = 0.35, seed: int = 0,
                   min_length: int = 100) -> DocTask:
    """Which module family a standard-library docstring comes from, split before any pretraining.

    Each distinct docstring text appears once (a text found in two modules is dropped, its
    label being ambiguous); the texts are shuffled with ``seed`` and split per class
    (stratified) into train / val / test.

    Args:
        groups: ``{class name: module names}``; default ``TASK_GROUPS`` (4 families of 39 modules).
            Docstrings come from ``module_docstrings`` (functions, classes and methods).
        val_frac, test_frac: fractions of each class for validation and test.
    """
    groups = TASK_GROUPS if groups is None else groups
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"groups must be a non-empty dict {{class name: module names}}, got {groups!r}")
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac and test_frac must be in (0, 1) with a sum below 1, got {val_frac}, {test_frac}")
    classes = tuple(groups)
    owner: dict[str, set] = {}
    for label, name in enumerate(classes):
        for module in groups[name]:
            for doc in module_docstrings(module, min_length):
                owner.setdefault(doc, set()).add(label)
    g = torch.Generator().manual_seed(seed)
    splits = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label in range(len(classes)):
        docs = sorted(d for d, o in owner.items() if o == {label})
        docs = [docs[i] for i in torch.randperm(len(docs), generator=g).tolist()]
        n_test, n_val = round(len(docs) * test_frac), round(len(docs) * val_frac)
        for split, part in (("test", docs[:n_test]), ("val", docs[n_test:n_test + n_val]),
                            ("train", docs[n_test + n_val:])):
            splits[split][0].extend(part)
            splits[split][1].extend([label] * len(part))
    for split in splits.values():  # interleave the classes in a seeded order
        order = torch.randperm(len(split[0]), generator=g).tolist()
        split[0][:], split[1][:] = [split[0][i] for i in order], [split[1][i] for i in order]
    return DocTask(classes, *(tuple(splits[s]) for s in ("train", "val", "test")))


def pretraining_text(task: DocTask, extra_modules=_EXTRA_MODULES, include_train: bool = True) -> str:
    """Unlabelled pretraining text: Python's reference prose, docstrings of other modules and
    (``include_train``) the task's training docstrings *without* their labels.

    Paragraphs that contain a validation or test docstring, or equal one, are removed, so the
    downstream evaluation never sees text the model was pretrained on. Deterministic.
    """
    held_out = set(task.val[0]) | set(task.test[0])
    extra = [d for m in extra_modules if _importable(m) for d in module_docstrings(m, 50, data_values=False)]
    parts = [p for p in pydoc_text().split("\n\n")] + extra + (list(task.train[0]) if include_train else [])
    kept = [p for p in parts if p not in held_out and not any(h in p for h in held_out if len(h) <= len(p))]
    return "\n\n".join(kept)


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001 - an optional module (e.g. sqlite3) may be missing
        return False


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


# ----------------------------------------------------------------------------- representations

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


class SequenceClassifier(nn.Module):
    """Backbone + layer choice + pooling + head: the BERT fine-tuning recipe, every choice a knob.

    logits = head(pool(combine_layers(hidden_states(backbone, idx), layers, combine), mask, how))

    Args:
        backbone: an ``MLMEncoder``, ``GPT`` or ``EncoderDecoder``.
        n_classes: number of classes K.
        how: ``"cls"`` or ``"mean"`` pooling (``pool``).
        layers, combine: which hidden states and how to combine them (``combine_layers``).
        head: ``"linear"`` (C' -> K) or ``"mlp"`` (C' -> C' -> K with a tanh, as BERT's pooler).
        freeze: keep the backbone fixed (feature-based transfer / linear probe): its parameters
            get ``requires_grad=False`` (in place: pass ``copy.deepcopy(backbone)`` to keep the
            original trainable) and it runs in eval mode without a graph. ``freeze=False`` leaves
            every ``requires_grad`` as it is (so adapters can freeze what they choose).
        pad_id: padding id used to build the attention mask.

    forward(idx (B, T)) -> logits (B, K); padding (``idx == pad_id``) is masked out.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, how: str = "mean", layers=(-1,), combine: str = "sum",
                 head: str = "linear", freeze: bool = False, pad_id: int = 0):
        super().__init__()
        if how not in ("cls", "mean"):
            raise ValueError(f"how must be 'cls' or 'mean', got {how!r}")
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        _check_int("n_classes", n_classes, 2)
        width = backbone.n_embd if hasattr(backbone, "n_embd") else backbone.src_emb.embedding_dim
        width *= len(tuple(layers)) if combine == "concat" else 1
        self.backbone, self.how, self.layers, self.combine, self.freeze, self.pad_id = (
            backbone, how, tuple(layers), combine, freeze, getattr(backbone, "pad_id", pad_id))
        self.head = (nn.Linear(width, n_classes) if head == "linear" else
                     nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, n_classes)))
        if freeze:
            backbone.requires_grad_(False)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, C') before the head."""
        mask = idx != self.pad_id
        if self.freeze:
            self.backbone.eval()
            with torch.no_grad():
                states = hidden_states(self.backbone, idx, mask, self.pad_id)
        else:
            states = hidden_states(self.backbone, idx, mask, self.pad_id)
        return pool(combine_layers(states, self.layers, self.combine), mask, self.how)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(idx))


def finetune_classifier(model: nn.Module, train: tuple, val: tuple | None = None, epochs: int = 10,
                        lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.01, seed: int = 0,
                        head_lr: float | None = None, progress: bool = False) -> History:
    """Train a classifier (usually a ``SequenceClassifier``) with ``dlbook.train.fit``.

    AdamW over the parameters that require gradients (a frozen backbone's do not), cross-entropy,
    shuffled mini-batches from ``dlbook.data.tensor_loader`` seeded with ``seed``.

    Args:
        train, val: ``(X (N, T) ids, y (N,) labels)``; val is evaluated after every epoch.
        head_lr: a separate learning rate for parameters outside ``model.backbone`` (default ``lr``).

    Returns:
        fit's History (``history.epochs[-1]["val_accuracy"]`` with a val set).
    """
    _check_int("epochs", epochs)
    X, y = train
    if len(X) != len(y):
        raise ValueError(f"train X and y differ in length: {len(X)} vs {len(y)}")
    device = next(model.parameters()).device
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) in in_backbone]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    groups = [{"params": rest, "lr": lr if head_lr is None else head_lr}] + ([{"params": body, "lr": lr}] if body else [])
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    train_loader = tensor_loader(X.to(device), y.to(device), batch_size=batch_size, seed=seed)
    val_loader = None if val is None else tensor_loader(val[0].to(device), val[1].to(device), batch_size=256,
                                                        shuffle=False)
    return fit(model, nn.CrossEntropyLoss(), opt, train_loader, val_loader, epochs=epochs, progress=progress)


# ----------------------------------------------------------------------------- pretraining loops

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


# ----------------------------------------------------------------------------- cached weights

def build_model(objective: str, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4,
                n_embd: int = 64, std: float | None = None) -> nn.Module:
    """A fresh model for an objective: ``MLMEncoder`` (mlm), ``GPT`` (clm) or ``EncoderDecoder`` (span),
    all with the same width and depth (the encoder-decoder has n_layer // 2 layers on each side,
    so the three have a similar parameter count), one vocabulary matrix shared by input and output
    embeddings, and the same init scale (default 1/sqrt(C))."""
    std = 1 / math.sqrt(n_embd) if std is None else std
    if objective == "mlm":
        return MLMEncoder(vocab_size, block_size, n_layer, n_head, n_embd, pad_id=0, std=std)
    if objective == "clm":
        model = GPT(vocab_size, block_size, n_layer, n_head, n_embd)
        model.reset_parameters(std)
        return model
    if objective == "span":
        model = EncoderDecoder(vocab_size, vocab_size, block_size, max(1, n_layer // 2), n_head, n_embd,
                               src_pad_id=0)
        model.tgt_emb.weight = model.src_emb.weight            # one shared vocabulary matrix, as T5
        model.head.weight = model.src_emb.weight
        gpt2_init_(model, max(1, n_layer // 2), std)
        return model
    raise ValueError(f"objective must be 'mlm', 'clm' or 'span', got {objective!r}")


__all__.append("build_model")


def pretrained(objective: str = "mlm", steps: int = 600, block_size: int = 64, n_layer: int = 2,
               n_embd: int = 64, batch_size: int = 32, lr: float = 2e-3, level: str = "word", seed: int = 0,
               cache: bool = True, root: str | Path | None = None, verbose: bool = True):
    """Pretrain a model on ``pretraining_text(docstring_task())`` once and cache its weights.

    The models chapter 4 uses ship with dlbook (``dlbook.weights.RECIPES``): with ``cache`` and
    those arguments, the shipped float16 weights are loaded (``info["shipped"]``), provided this Python
    builds the very pretraining text they were trained on; otherwise the model is trained here.
    Any other model's file lives in ``root`` (default ``dlbook.data.cache_dir() / "pretrain"``), named by a hash
    of every argument and the running torch version; when it is missing it is re-created
    (deterministically, on the CPU, one thread-count independent seed) and written to a
    temporary file that is then renamed, so two processes doing this at once never read a
    half-written file.

    Returns:
        ``(model, tokenizer, info)`` with the model on the CPU in eval mode and ``info`` a dict
        with ``"losses"`` (per-step pretraining losses), ``"seconds"`` and ``"cached"``.
    """
    import time

    from dlbook import weights

    config = dict(objective=objective, steps=steps, block_size=block_size, n_layer=n_layer, n_embd=n_embd,
                  batch_size=batch_size, lr=lr, level=level, seed=seed, torch=torch.__version__.split("+")[0], v=2)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root) if root is not None else cache_dir() / "pretrain"
    path = folder / f"{objective}-{key}.pt"
    task = docstring_task()
    if cache and (name := weights.recipe_for(config)) is not None:
        shipped = weights.load(name, pretraining_text(task))
        if shipped is not None:
            model, tok, info = shipped
            return model, tok, {**info, "seconds": 0.0, "cached": True, "shipped": True}
    if cache and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            tok = PretrainTokenizer.from_state_dict(state["tokenizer"])
            model = build_model(objective, tok.vocab_size, block_size, n_layer, 4, n_embd)
            model.load_state_dict(state["model"])
            return model.eval(), tok, {"losses": state["losses"], "seconds": 0.0, "cached": True, "path": path,
                                       "shipped": False}
        except Exception:  # noqa: BLE001 - a corrupt or stale file is simply re-created
            pass
    text = pretraining_text(task)
    tok = PretrainTokenizer(text, level=level)
    ids = tok.encode(text)
    torch.manual_seed(seed)
    model = build_model(objective, tok.vocab_size, block_size, n_layer, 4, n_embd)
    t0 = time.perf_counter()
    if verbose:
        print(f"pretraining {objective} for {steps} steps (cached afterwards in {folder})", file=sys.stderr)
    losses = pretrain(model, ids, objective, steps, tokenizer=None if objective == "clm" else tok,
                      batch_size=batch_size, lr=lr, seed=seed)
    seconds = time.perf_counter() - t0
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        torch.save({"model": model.state_dict(), "tokenizer": tok.state_dict(), "losses": losses,
                    "config": config}, tmp)
        os.replace(tmp, path)
    return model.eval(), tok, {"losses": losses, "seconds": seconds, "cached": False, "path": path, "shipped": False}
