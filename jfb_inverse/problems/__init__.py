"""Typed problem definitions and their registry (provisional: filled by the imaging layer)."""

from __future__ import annotations


def list_problems() -> dict[str, str]:
    """Registered problem names with a one-line description."""
    return {}
