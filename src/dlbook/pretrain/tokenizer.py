"""``PretrainTokenizer``: characters (or words) plus the special tokens the objectives need.

[PAD], [CLS], [SEP], [MASK], [UNK] and T5-style sentinels come first, then the symbols of the
text, most frequent first.
"""

from __future__ import annotations

import re

import torch

from dlbook._checks import check_int as _check_int

__all__ = [
    "PretrainTokenizer",
]


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
