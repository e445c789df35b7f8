"""Page sizes for every listing RPC: the caller's wish, within the server's bounds."""

from __future__ import annotations


def page_size(requested: int, default: int = 50, maximum: int = 500) -> int:
    """``default`` when the caller names none (or nonsense, like a negative size); never above ``maximum``."""
    if requested <= 0:
        return default
    return min(requested, maximum)
