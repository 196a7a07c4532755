"""Small shared helpers for layers."""
from __future__ import annotations


def to_2tuple(x) -> tuple[int, int]:
    """7 -> (7, 7); (7, 5) -> (7, 5)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected one int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)
