"""Replies as text: the cluster client hands back bytes, or str where it decodes, depending on the client."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A reply's value (bytes, str, or a number) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)
