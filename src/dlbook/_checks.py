"""Argument checks shared by dlbook's modules (private: each public function documents its own errors)."""

from __future__ import annotations


def check_int(name: str, value, low: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``low``; else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value
