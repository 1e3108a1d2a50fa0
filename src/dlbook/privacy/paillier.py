"""A toy Paillier cryptosystem: additively homomorphic encryption (small keys: NOT for real use)."""

from __future__ import annotations

import math
import random

import numpy as np

from dlbook.privacy._checks import _check_int

__all__ = [
    "Paillier",
]


def _is_probable_prime(n: int, rng: random.Random, rounds: int = 32) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int, rng: random.Random) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        if _is_probable_prime(n, rng):
            return n


class Paillier:
    """A toy Paillier cryptosystem: additively homomorphic public-key encryption. NOT for real use.

    Keys: primes p, q, n = p q, g = n + 1, lambda = lcm(p - 1, q - 1), mu = lambda^{-1} mod n.
    Encrypt m in [0, n): :math:`c = g^m r^n \\bmod n^2` with a random r coprime to n.
    Decrypt: :math:`m = L(c^\\lambda \\bmod n^2)\\,\\mu \\bmod n` with L(u) = (u - 1) / n.
    Homomorphisms: :math:`E(a) E(b) = E(a + b \\bmod n)` and :math:`E(a)^k = E(k a \\bmod n)`.
    Real numbers travel as fixed-point integers (``encode``/``decode``), negatives as n - ``|m|``.

    The keys here are tiny (default 256-bit n) and drawn from Python's ``random`` seeded
    generator: fine to learn the arithmetic, trivially breakable. Real systems use n of
    2048 bits or more and a cryptographic random source.

    Args:
        bits: size of n in bits (>= 32). seed: seeds key generation and encryption randomness.
    """

    def __init__(self, bits: int = 256, seed: int = 0):
        bits = _check_int("bits", bits, 32)
        self._rng = random.Random(seed)
        while True:
            p, q = _random_prime(bits // 2, self._rng), _random_prime(bits - bits // 2, self._rng)
            if p != q and math.gcd(p * q, (p - 1) * (q - 1)) == 1:
                break
        self.n = p * q
        self.n2 = self.n * self.n
        self.g = self.n + 1
        self._lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        self._mu = pow(self._lam, -1, self.n)

    def _check_plain(self, m) -> int:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise TypeError(f"plaintext must be an int, got {type(m).__name__} (use encode() for reals)")
        if not 0 <= m < self.n:
            raise ValueError(f"plaintext must be in [0, n) = [0, {self.n}), got {m} (encode negatives with encode())")
        return int(m)

    def _check_cipher(self, c) -> int:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 < c < self.n2:
            raise ValueError("ciphertext must be an int in (0, n^2)")
        return c

    def encrypt(self, m: int, r: int | None = None) -> int:
        """E(m) = g^m r^n mod n^2 for an int m in [0, n)."""
        m = self._check_plain(m)
        while r is None or math.gcd(r, self.n) != 1:
            r = self._rng.randrange(1, self.n)
        # g^m = (1 + n)^m = 1 + m n (mod n^2): no exponentiation needed for g.
        return (1 + m * self.n) * pow(r, self.n, self.n2) % self.n2

    def decrypt(self, c: int) -> int:
        """m = L(c^lambda mod n^2) mu mod n."""
        c = self._check_cipher(c)
        return (pow(c, self._lam, self.n2) - 1) // self.n * self._mu % self.n

    def add(self, c1: int, c2: int) -> int:
        """E(a) * E(b) mod n^2 = E(a + b mod n)."""
        return self._check_cipher(c1) * self._check_cipher(c2) % self.n2

    def mul_plain(self, c: int, k: int) -> int:
        """E(a)^k mod n^2 = E(k a mod n) for a plaintext int k (negative k allowed)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        return pow(self._check_cipher(c), int(k) % self.n, self.n2)

    def encode(self, x: float, scale: int = 2 ** 16) -> int:
        """Fixed point: round(x * scale), negatives as n - ``|.|``, so that sums wrap correctly mod n."""
        v = int(round(float(x) * scale))
        if abs(v) >= self.n // 2:
            raise ValueError(f"{x} * {scale} does not fit in the plaintext space (|value| < n/2)")
        return v % self.n

    def decode(self, m: int, scale: int = 2 ** 16) -> float:
        """Inverse of ``encode``: values above n/2 are negative."""
        m = self._check_plain(m)
        return (m - self.n if m > self.n // 2 else m) / scale
