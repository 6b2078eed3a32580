"""Errors the CLI turns into one-line messages (exit code 2) instead of tracebacks."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""


class ConfigError(UserError):
    """An invalid problem definition or config file."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, corrupted, untrusted, or of another problem)."""


class OperatorError(UserError):
    """A custom forward operator that does not import, construct, or pass the adjointness test."""
