"""The count syntax every command and `--set` accept: 3B, 100M, 50k, 1_000, 1e6."""

from __future__ import annotations


def parse_count(text: str) -> int:
    """'3B' -> 3_000_000_000; ValueError naming the examples for anything else."""
    t = text.strip().replace("_", "").upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise ValueError(f"not a count: {text!r} (examples: 3B, 100M, 50k, 1000)") from None
    if value < 0 or value != int(value):
        raise ValueError(f"not a whole non-negative count: {text!r}")
    return int(value)
