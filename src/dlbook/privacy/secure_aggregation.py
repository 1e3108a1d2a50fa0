"""Secure aggregation with pairwise additive masks, on fixed-point integers modulo 2^k.

Each client encodes its update as integers modulo 2^bits (``encode_fixed_point``; the server
decodes the sum with ``decode_fixed_point``) and adds its ``pairwise_mask``: every pair of clients
shares a pseudo-random mask that one adds and the other subtracts, so the masks cancel in the
server's ``secure_sum`` while each masked update alone is uniformly random. ``recover_dropouts``
removes the masks a dropped client leaves behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from dlbook.privacy._checks import _check_int, _check_positive

__all__ = [
    "encode_fixed_point", "decode_fixed_point", "pairwise_mask", "mask_update", "secure_sum", "recover_dropouts",
]


def encode_fixed_point(x: torch.Tensor, scale: float, bits: int = 32) -> torch.Tensor:
    """Fixed point modulo 2^bits: ``round(x * scale) mod 2^bits`` as int64 (negatives wrap around).

    Sums of up to 2^(bits-1) / max``|round(x * scale)|`` such values decode correctly.
    """
    bits = _check_int("bits", bits, 2)
    if bits > 62:
        raise ValueError(f"bits must be <= 62 (int64 arithmetic), got {bits}")
    _check_positive("scale", scale)
    v = torch.round(x.double() * scale).long()
    if v.abs().max() >= 2 ** (bits - 1):
        raise ValueError(f"values times scale must stay below 2^{bits - 1} in magnitude")
    return torch.remainder(v, 2 ** bits)


def decode_fixed_point(v: torch.Tensor, scale: float, bits: int = 32) -> torch.Tensor:
    """Inverse of ``encode_fixed_point``: values >= 2^(bits-1) are negative; returns float64 ``v / scale``."""
    v = torch.remainder(v.long(), 2 ** bits)
    v = torch.where(v >= 2 ** (bits - 1), v - 2 ** bits, v)
    return v.double() / scale


def _pair_seed(seed: int, i: int, j: int) -> int:
    # Stand-in for the key the two clients would agree on with Diffie-Hellman.
    return int.from_bytes(hashlib.sha256(f"{seed}:{min(i, j)}:{max(i, j)}".encode()).digest()[:8], "little") >> 1


def _pair_mask(seed: int, i: int, j: int, shape, bits: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_pair_seed(seed, i, j))
    return torch.randint(0, 2 ** bits, tuple(shape), generator=g, dtype=torch.int64)


def pairwise_mask(client: int, n_clients: int, shape, bits: int = 32, seed: int = 0) -> torch.Tensor:
    """Client i's mask: :math:`\\sum_{j>i} m_{ij} - \\sum_{j<i} m_{ji} \\bmod 2^{bits}`.

    Each pair (i, j) shares a pseudo-random m_ij (uniform on [0, 2^bits), from a seed both know);
    i adds it and j subtracts it, so the masks of all clients sum to 0 modulo 2^bits exactly,
    while each mask alone is uniformly random and hides the client's update.

    Returns:
        int64 tensor of ``shape`` with values in [0, 2^bits).
    """
    n_clients = _check_int("n_clients", n_clients, 2)
    client = _check_int("client", client, 0)
    if client >= n_clients:
        raise ValueError(f"client must be in [0, {n_clients}), got {client}")
    total = torch.zeros(tuple(shape), dtype=torch.int64)
    for j in range(n_clients):
        if j != client:
            m = _pair_mask(seed, client, j, shape, bits)
            total = total + m if j > client else total - m
    return torch.remainder(total, 2 ** bits)


def mask_update(update: torch.Tensor, client: int, n_clients: int, bits: int = 32, seed: int = 0) -> torch.Tensor:
    """``(update + pairwise_mask(client, ...)) mod 2^bits`` for an int64 update from ``encode_fixed_point``."""
    if not isinstance(update, torch.Tensor) or update.dtype != torch.int64:
        raise TypeError("update must be an int64 tensor (encode it with encode_fixed_point first)")
    return torch.remainder(update + pairwise_mask(client, n_clients, update.shape, bits, seed), 2 ** bits)


def secure_sum(masked: Sequence[torch.Tensor], bits: int = 32) -> torch.Tensor:
    """The server's aggregate: the masked updates summed modulo 2^bits (the masks cancel)."""
    if len(masked) == 0:
        raise ValueError("masked must hold at least one update")
    return torch.remainder(torch.stack(list(masked)).sum(0), 2 ** bits)


def recover_dropouts(total: torch.Tensor, dropped: Sequence[int], n_clients: int, bits: int = 32,
                     seed: int = 0) -> torch.Tensor:
    """Remove from a sum of survivors' masked updates the masks they share with dropped clients.

    A survivor i's mask contains +m_id (i < d) or -m_id (i > d) for each dropped d, which no
    longer cancels. With the pair seeds revealed (in a real protocol, reconstructed from secret
    shares the survivors hold), the server subtracts them and gets the survivors' plain sum.
    """
    dropped = sorted(set(int(d) for d in dropped))
    out = total.clone()
    for d in dropped:
        for i in range(n_clients):
            if i == d or i in dropped:
                continue
            m = _pair_mask(seed, i, d, total.shape, bits)
            out = out - m if i < d else out + m
    return torch.remainder(out, 2 ** bits)
