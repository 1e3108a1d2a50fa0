"""Transformers, from attention to a small GPT: a reference implementation.

Notation used in every shape comment: B batch, T (query) length, S key/value
length, C = ``n_embd`` model width, H = ``n_head`` heads, D = C // H head width,
V vocabulary size, L = ``n_layer``.

* ``attention_naive`` writes softmax(Q K^T / sqrt(D)) V out; ``attention`` calls
  ``F.scaled_dot_product_attention`` (fused flash / memory-efficient kernels on CUDA).
* ``MultiHeadAttention`` uses one fused qkv projection and reshapes into heads:
  no Python loop over heads or positions anywhere.
* ``TransformerBlock`` switches between pre-LN and post-LN. LayerNorm is torch's
  fused ``nn.LayerNorm``; chapter 2 (``dlbook.norm``) builds it from scratch.
* ``Encoder``, ``Decoder`` (with cross-attention), ``EncoderDecoder``, and ``GPT``
  with ``generate()`` and a ``KVCache``.
* ``count_parameters``, ``flops_per_token``, and ``train_lm`` / ``evaluate_lm``
  for language models trained on sampled windows of a token stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlbook.data import random_batch, windows
from dlbook.device import autocast

__all__ = [
    "causal_mask", "attention_naive", "attention", "sinusoidal_encoding", "RotaryEmbedding",
    "MultiHeadAttention", "TransformerBlock", "Encoder", "Decoder", "EncoderDecoder", "KVCache", "GPT",
    "gpt2_init_", "count_parameters", "flops_per_token", "train_lm", "evaluate_lm",
]


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def _check_width(n_embd: int, n_head: int) -> None:
    for name, value in (("n_embd", n_embd), ("n_head", n_head)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}: each head gets n_embd // n_head "
                         f"channels, so pick for example n_head in {[h for h in range(1, 17) if n_embd % h == 0]}")


# ----------------------------------------------------------------------------- attention

def causal_mask(t_q: int, t_k: int | None = None, device=None) -> torch.Tensor:
    """Boolean mask of shape (t_q, t_k), True where query i may attend to key j.

    Queries are the *last* t_q of the t_k positions (bottom-right aligned), so
    query i sees keys j <= i + (t_k - t_q); with t_k == t_q this is the lower triangle.
    """
    t_k = t_q if t_k is None else t_k
    if t_q > t_k:
        raise ValueError(f"more queries ({t_q}) than keys ({t_k}) in a causal mask")
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    return torch.arange(t_k, device=device)[None, :] <= i


def attention_naive(q, k, v, mask=None, is_causal=False, scale=None):
    """softmax(q k^T * scale) v, written out, also returning the weights.

    Args:
        q: (..., T, D); k: (..., S, D); v: (..., S, Dv).
        mask: boolean, broadcastable to (..., T, S), True = may attend.
        scale: default 1 / sqrt(D).

    Returns:
        out (..., T, Dv) and weights (..., T, S), each row summing to 1.
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale                  # (..., T, S)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)                            # (..., T, S)
    return weights @ v, weights                                 # (..., T, Dv)


def attention(q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
    """The same as ``attention_naive(...)[0]`` through ``F.scaled_dot_product_attention``.

    On CUDA this picks a fused kernel (flash or memory-efficient attention) that
    never stores the (T, S) weight matrix. Shapes as in ``attention_naive``.
    """
    if is_causal and q.size(-2) == 1:
        is_causal = False  # one new query (decoding with a cache) sees every key
    if is_causal and (mask is not None or q.size(-2) != k.size(-2)):
        # SDPA's own is_causal aligns top-left when T != S and cannot be combined with a mask;
        # we want bottom-right alignment (the queries are the newest positions).
        causal = causal_mask(q.size(-2), k.size(-2), q.device)                 # (T, S)
        mask, is_causal = (causal if mask is None else mask & causal), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale)


# ----------------------------------------------------------------------------- positions

def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need", shape (length, dim).

    PE[p, 2i] = sin(p / 10000^(2i/dim)) and PE[p, 2i+1] = cos(p / 10000^(2i/dim)).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encodings need an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float32)[:, None]                 # (length, 1)
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)   # (dim/2,)
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE): rotates query/key channel pairs by position.

    Channel i is paired with channel i + D/2 and the pair at position p is rotated
    by the angle p * base^(-2i/D). Then <rope(q, m), rope(k, n)> depends on m - n only.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)   # (D/2,)
        angle = torch.arange(max_len, dtype=torch.float32)[:, None] * freq               # (max_len, D/2)
        self.register_buffer("cos", angle.cos().repeat(1, 2), persistent=False)          # (max_len, D)
        self.register_buffer("sin", angle.sin().repeat(1, 2), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: (..., T, D) at positions offset .. offset+T-1 -> rotated, same shape."""
        t = x.size(-2)
        cos, sin = self.cos[offset:offset + t].to(x.dtype), self.sin[offset:offset + t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ----------------------------------------------------------------------------- layers

class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused (C -> 3C) projection for q, k and v.

    Self-attention uses all of ``qkv``; cross-attention takes q from ``x`` and k, v
    from ``memory`` through the slices of the same weight. The packed layout equals
    ``nn.MultiheadAttention``'s ``in_proj_weight`` (q, k, v rows).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 rope: RotaryEmbedding | None = None):
        super().__init__()
        _check_width(n_embd, n_head)
        self.n_embd, self.n_head, self.dropout, self.rope = n_embd, n_head, dropout, rope
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, H, T, D)."""
        b, t, c = x.shape
        return x.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) -> (B, T, H*D)."""
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def forward(self, x, memory=None, key_padding_mask=None, is_causal=False, cache=None, layer=0):
        """x: (B, T, C); memory: (B, S, C) for cross-attention, else None.

        key_padding_mask: (B, S) bool, True marks padding keys to ignore.
        cache: a ``KVCache`` (self-attention only): new keys/values are appended at
        ``cache.pos`` and the queries attend to every stored position. Returns (B, T, C).
        """
        q, k, v = self._heads(x, memory, cache.pos if cache is not None else 0)   # (B, H, T|S, D)
        if cache is not None:
            k, v = cache.append(layer, k, v)                                     # (B, H, pos+T, D)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]   # (B, 1, 1, S)
        y = attention(q, k, v, mask, is_causal, self.dropout if self.training else 0.0)   # (B, H, T, D)
        return self.proj(self.merge_heads(y))                                    # (B, T, C)

    def attention_weights(self, x, memory=None, key_padding_mask=None, is_causal=False) -> torch.Tensor:
        """The weights softmax(q k^T / sqrt(D)) that ``forward`` uses, as (B, H, T, S), each row summing to 1.

        The fused kernel of ``forward`` never stores them; this recomputes them from the same
        inputs (x, and memory for cross-attention), masks and rotary positions, without a cache.
        """
        q, k, v = self._heads(x, memory, 0)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return attention_naive(q, k, v, mask, is_causal)[1]

    def _heads(self, x, memory, offset: int):
        """Queries from x, keys and values from memory (or x), split into heads and rotated: 3 x (B, H, T|S, D)."""
        c = self.n_embd
        if memory is None:
            q, k, v = self.qkv(x).split(c, dim=-1)                              # 3 x (B, T, C)
        else:
            q = F.linear(x, self.qkv.weight[:c], None if self.qkv.bias is None else self.qkv.bias[:c])
            k, v = F.linear(memory, self.qkv.weight[c:],
                            None if self.qkv.bias is None else self.qkv.bias[c:]).split(c, dim=-1)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if self.rope is not None:
            q, k = self.rope(q, offset), self.rope(k, offset)
        return q, k, v


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) and a position-wise FFN, each residual.

    pre-LN:  x = x + f(LN(x))      (stable; used by GPT-2 and most models since)
    post-LN: x = LN(x + f(x))      (the original 2017 layout)
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, pre_ln: bool = True, causal: bool = False,
                 cross_attention: bool = False, ffn_mult: int = 4, bias: bool = True, rope=None):
        super().__init__()
        self.pre_ln, self.causal = pre_ln, causal
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout, bias, rope)
        self.ln_cross = nn.LayerNorm(n_embd) if cross_attention else None
        self.cross = MultiHeadAttention(n_embd, n_head, dropout, bias) if cross_attention else None
        self.ln2 = nn.LayerNorm(n_embd)
        self.ffn = nn.Sequential(nn.Linear(n_embd, ffn_mult * n_embd, bias=bias), nn.GELU(),
                                 nn.Linear(ffn_mult * n_embd, n_embd, bias=bias), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def _residual(self, x, ln, f):
        return x + self.drop(f(ln(x))) if self.pre_ln else ln(x + self.drop(f(x)))

    def forward(self, x, memory=None, padding_mask=None, memory_padding_mask=None, cache=None, layer=0):
        """x: (B, T, C); memory: (B, S, C) when the block has cross-attention. Returns (B, T, C)."""
        x = self._residual(x, self.ln1, lambda h: self.attn(h, key_padding_mask=padding_mask,
                                                            is_causal=self.causal, cache=cache, layer=layer))
        if self.cross is not None:
            if memory is None:
                raise ValueError("this block has cross-attention: pass the encoder output as memory")
            x = self._residual(x, self.ln_cross, lambda h: self.cross(h, memory, memory_padding_mask))
        return self._residual(x, self.ln2, self.ffn)


class Encoder(nn.Module):
    """A stack of bidirectional blocks. forward(x (B, S, C), padding_mask (B, S)) -> (B, S, C)."""

    def __init__(self, n_layer: int, n_embd: int, n_head: int, dropout: float = 0.0, pre_ln: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(n_embd, n_head, dropout, pre_ln) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd) if pre_ln else nn.Identity()

    def forward(self, x, padding_mask=None):
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask)
        return self.ln_f(x)


class Decoder(nn.Module):
    """Causal blocks with cross-attention. forward(x (B, T, C), memory (B, S, C)) -> (B, T, C)."""

    def __init__(self, n_layer: int, n_embd: int, n_head: int, dropout: float = 0.0, pre_ln: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(n_embd, n_head, dropout, pre_ln, causal=True,
                                                     cross_attention=True) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd) if pre_ln else nn.Identity()

    def forward(self, x, memory, memory_padding_mask=None):
        for block in self.blocks:
            x = block(x, memory, memory_padding_mask=memory_padding_mask)
        return self.ln_f(x)


def _check_ids(idx: torch.Tensor, vocab_size: int, block_size: int, offset: int = 0) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 2:
        raise TypeError(f"expected token ids as an int64 tensor of shape (B, T), got "
                        f"{getattr(idx, 'dtype', type(idx).__name__)} of shape {tuple(getattr(idx, 'shape', ()))}")
    if offset + idx.size(1) > block_size:
        raise ValueError(f"sequence of length {offset + idx.size(1)} is longer than block_size={block_size}; "
                         f"crop it to the last {block_size} tokens")
    if not _is_compiling() and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {int(idx.min())}..{int(idx.max())}")


class EncoderDecoder(nn.Module):
    """The original Transformer: embeddings + sinusoidal positions, Encoder, Decoder, output head.

    forward(src (B, S), tgt (B, T)) -> logits (B, T, tgt_vocab); ``src_pad_id`` marks padding.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, block_size: int, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64, dropout: float = 0.0, pre_ln: bool = True, src_pad_id: int | None = None):
        super().__init__()
        _check_width(n_embd, n_head)
        self.block_size, self.src_vocab, self.tgt_vocab, self.src_pad_id = block_size, src_vocab, tgt_vocab, src_pad_id
        self.src_emb, self.tgt_emb = nn.Embedding(src_vocab, n_embd), nn.Embedding(tgt_vocab, n_embd)
        self.register_buffer("pe", sinusoidal_encoding(block_size, n_embd), persistent=False)
        self.encoder = Encoder(n_layer, n_embd, n_head, dropout, pre_ln)
        self.decoder = Decoder(n_layer, n_embd, n_head, dropout, pre_ln)
        self.head = nn.Linear(n_embd, tgt_vocab)
        self.scale = math.sqrt(n_embd)

    def encode(self, src):
        """src (B, S) -> memory (B, S, C), padding mask (B, S) or None."""
        _check_ids(src, self.src_vocab, self.block_size)
        pad = None if self.src_pad_id is None else src == self.src_pad_id
        return self.encoder(self.src_emb(src) * self.scale + self.pe[:src.size(1)], pad), pad

    def decode(self, tgt, memory, pad=None):
        """tgt (B, T) -> logits (B, T, tgt_vocab)."""
        _check_ids(tgt, self.tgt_vocab, self.block_size)
        x = self.tgt_emb(tgt) * self.scale + self.pe[:tgt.size(1)]
        return self.head(self.decoder(x, memory, pad))

    def forward(self, src, tgt):
        memory, pad = self.encode(src)
        return self.decode(tgt, memory, pad)

    @torch.no_grad()
    def greedy_decode(self, src, bos_id: int, length: int):
        """Encode once, then emit ``length`` tokens by argmax. Returns (B, length) without the BOS."""
        memory, pad = self.encode(src)
        out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        for _ in range(length):
            out = torch.cat([out, self.decode(out, memory, pad)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return out[:, 1:]


# ----------------------------------------------------------------------------- GPT

class KVCache:
    """Keys and values of the positions seen so far, one preallocated buffer per layer.

    Buffers have shape (L, B, H, max_len, D) and are created on the first append
    (so they take the dtype autocast produced). ``pos`` counts stored positions.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.n_layer, self.max_len, self.pos, self.k, self.v = n_layer, max_len, 0, None, None

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, D) at pos..pos+T-1 of ``layer``; return all (B, H, pos+T, D)."""
        if self.k is None:
            shape = (self.n_layer,) + tuple(k.shape[:2]) + (self.max_len, k.size(-1))
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def gpt2_init_(model: nn.Module, n_layer: int, std: float) -> None:
    """GPT-2's initialization, in place: every weight matrix from N(0, std^2), the residual output
    projections (``attn.proj``, ``ffn.2``) scaled by 1/sqrt(2 n_layer), biases zero, LayerNorm gains one.

    ``GPT.reset_parameters`` calls it with its width-aware default; chapter 4's encoder and
    encoder-decoder (``dlbook.pretrain``) use it too, so all of the book's Transformers start alike.
    """
    if not std > 0:
        raise ValueError(f"std must be a positive number, got {std}")
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            scale = 1 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj.weight", "ffn.2.weight")) else 1
            nn.init.normal_(p, 0.0, std * scale)
        elif "ln" in name and name.endswith("weight"):
            nn.init.ones_(p)
        else:
            nn.init.zeros_(p)


class GPT(nn.Module):
    """A decoder-only Transformer language model (GPT-2 layout, pre-LN by default).

    Args:
        vocab_size, block_size: V and the longest context T the model accepts.
        pos: "learned" (GPT-2), "sinusoidal" (2017) or "rope" (rotary, on q and k).
        pre_ln: False gives the post-LN layout (no final LayerNorm).
        tie_weights: share the token embedding with the output head (as GPT-2).

    forward(idx (B, T), targets (B, T) or None) -> logits (B, T, V), loss or None.
    """

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0, pos: str = "learned", pre_ln: bool = True, bias: bool = True,
                 tie_weights: bool = True):
        super().__init__()
        _check_width(n_embd, n_head)
        if pos not in ("learned", "sinusoidal", "rope"):
            raise ValueError(f"pos must be 'learned', 'sinusoidal' or 'rope', got {pos!r}")
        self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd = (
            vocab_size, block_size, n_layer, n_head, n_embd)
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd) if pos == "learned" else None
        self.register_buffer("pe", sinusoidal_encoding(block_size, n_embd) if pos == "sinusoidal" else None,
                             persistent=False)
        rope = RotaryEmbedding(n_embd // n_head, block_size) if pos == "rope" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(n_embd, n_head, dropout, pre_ln, causal=True, bias=bias,
                                                     rope=rope) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd) if pre_ln else nn.Identity()
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Draw every weight matrix from N(0, std^2), biases to zero, LayerNorms to identity,
        and scale the residual output projections by 1/sqrt(2 L) so that the residual
        stream's variance does not grow with depth (GPT-2's recipe).

        std: default ``1 / sqrt(n_embd)``, a scale that tracks the width. After a LayerNorm
        each input has unit second moment, so a query or key entry has variance
        ``n_embd * std^2`` and an attention score (q . k / sqrt(D)) a standard deviation of
        about ``n_embd * std^2``: 1 at every width with the default. GPT-2's fixed 0.02 gives
        0.31 at its width 768 but 0.026 at width 64, where attention starts uniform and is
        slow to leave it (chapter 3, notebook 5). ``std=0.02`` reproduces GPT-2.
        """
        gpt2_init_(self, self.n_layer, 1 / math.sqrt(self.n_embd) if std is None else std)

    def forward(self, idx, targets=None, cache: KVCache | None = None):
        offset = cache.pos if cache is not None else 0
        _check_ids(idx, self.vocab_size, self.block_size, offset)
        t = idx.size(1)
        x = self.tok_emb(idx)                                                     # (B, T, C)
        if self.pos_emb is not None:
            # indexed per example, (B, T), not broadcast from (T,): the same sum, but per-example
            # gradients of the position table (DP-SGD's) exist only if each example has its own output
            x = x + self.pos_emb(torch.arange(offset, offset + t, device=idx.device).expand(idx.size(0), t))
        elif self.pe is not None:
            x = x + self.pe[offset:offset + t]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache, layer=i)
        if cache is not None:
            cache.pos += t
        logits = self.head(self.ln_f(x))                                          # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None):
        """Extend idx (B, T0) by ``max_new_tokens`` sampled tokens -> (B, T0 + max_new_tokens).

        temperature divides the logits (0 means greedy argmax); top_k keeps only the
        k likeliest tokens. With ``use_cache`` each step feeds one token and reuses the
        stored keys and values; once the text outgrows block_size, each step re-encodes
        the last block_size tokens (exactly what the cache-free path does).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.vocab_size:
            raise ValueError(f"top_k must be in [1, {self.vocab_size}], got {top_k}")
        cache, fed = None, 0  # fed: how many tokens of idx the cache already holds
        for _ in range(max_new_tokens):
            context = idx[:, -self.block_size:]
            if not use_cache:
                logits, _ = self(context)
            else:
                if cache is None or idx.size(1) > self.block_size:
                    cache, fed = KVCache(self.n_layer, self.block_size), idx.size(1) - context.size(1)
                logits, _ = self(idx[:, fed:], cache=cache)
                fed = idx.size(1)
            logits = logits[:, -1].float()                                        # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


# ----------------------------------------------------------------------------- counting

def count_parameters(model: nn.Module, trainable_only: bool = False, non_embedding: bool = False) -> int:
    """Number of distinct parameters (a tied weight counts once).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.
        non_embedding: leave out the vocabulary and position embeddings, as Kaplan et al. (2020)
            do for the N of their scaling laws: the weights of every ``nn.Embedding`` and, for a
            model with an output ``head`` (``GPT``), the head's weights, which are the token
            embedding when tied and the "unembedding" otherwise. For a GPT this leaves the blocks
            and the final norm, about ``12 * n_layer * n_embd**2``, the book's N.
    """
    skip: set[int] = set()
    if non_embedding:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                skip.update(id(p) for p in module.parameters())
        head = getattr(model, "head", None)
        if isinstance(head, nn.Module):
            skip.update(id(p) for p in head.parameters())
    return sum(p.numel() for p in model.parameters()
               if (p.requires_grad or not trainable_only) and id(p) not in skip)


def flops_per_token(model: nn.Module, seq_len: int, training: bool = True) -> int:
    """Matmul FLOPs per token of a Transformer with context ``seq_len``.

    ::

        forward = 2 * (weights of every nn.Linear, the tied head included)
                + 4 * seq_len * n_embd per attention module (q k^T and weights @ v, full square)

    training = 3 * forward (the backward pass costs about twice the forward), the
    "6N + 12 L T C" rule. Embedding lookups, norms and softmax are left out.
    """
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attn = sum(4 * seq_len * m.n_embd for m in model.modules() if isinstance(m, MultiHeadAttention))
    return (3 if training else 1) * (2 * linear + attn)


# ----------------------------------------------------------------------------- training

def evaluate_lm(model: GPT, ids: torch.Tensor, batch_size: int = 64, max_windows: int | None = None) -> float:
    """Mean next-token cross-entropy (nats per token) over non-overlapping windows of ``ids`` (N,)."""
    X, Y = windows(ids, model.block_size)
    if max_windows is not None:
        X, Y = X[:max_windows], Y[:max_windows]
    device = next(model.parameters()).device
    was_training, total = model.training, 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            _, loss = model(X[i:i + batch_size].to(device), Y[i:i + batch_size].to(device))
            total += loss.item() * len(X[i:i + batch_size])
    model.train(was_training)
    return total / len(X)


def _adamw_warmup_cosine(model: nn.Module, steps: int, lr: float, weight_decay: float, warmup: int | None):
    """AdamW (no decay on biases and norms) with linear warmup, then cosine decay to lr/10.

    Shared by ``train_lm`` and ``dlbook.pretrain``'s loops. warmup defaults to steps // 20."""
    warmup = max(1, steps // 20) if warmup is None else warmup
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.45 * (
        1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    return opt, sched


def _sampled_training(model: nn.Module, batch_loss, steps: int, lr: float, weight_decay: float,
                      warmup: int | None, clip_grad_norm: float | None, seed: int, amp: bool) -> list[float]:
    """``steps`` AdamW steps (warmup + cosine) on ``batch_loss(generator)`` -> per-step losses.

    The loop of ``train_lm``, shared with ``dlbook.pretrain``'s objectives: each step samples its
    own batch from one generator seeded with ``seed``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    opt, sched = _adamw_warmup_cosine(model, steps, lr, weight_decay, warmup)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        with autocast(device, enabled=amp):
            loss = batch_loss(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def train_lm(model: GPT, ids: torch.Tensor, steps: int, batch_size: int = 12, lr: float = 3e-3,
             weight_decay: float = 0.01, warmup: int | None = None, clip_grad_norm: float | None = 1.0,
             seed: int = 0, amp: bool = False, compile: bool = False) -> list[float]:
    """Train a language model on random windows of a token stream (N,); returns per-step losses.

    AdamW with linear warmup then cosine decay to lr/10. Token streams are sampled
    (``dlbook.data.random_batch``), not walked epoch by epoch, hence this loop
    rather than ``dlbook.train.fit``. amp: bf16 autocast on CUDA; compile: torch.compile.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    step_fn = torch.compile(model) if compile else model

    def batch_loss(g):
        return step_fn(*random_batch(ids, model.block_size, batch_size, generator=g, device=device))[1]

    return _sampled_training(model, batch_loss, steps, lr, weight_decay, warmup, clip_grad_norm, seed, amp)
