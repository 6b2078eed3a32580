"""Errors the CLI turns into one-line messages (exit code 2) instead of tracebacks."""

from __future__ import annotations

# Characters that str.splitlines() breaks on: escaped in messages so that an error is always one line,
# even when it quotes a user's value (a config key, a file name) that holds a line break.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix, on one line."""

    #: The CLI's exit code for it.
    exit_code: int = 2

    def __str__(self) -> str:
        return super().__str__().translate(_LINE_BREAKS)


class ConfigError(UserError):
    """An invalid problem definition or config file."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, corrupted, untrusted, or of another problem)."""


class OperatorError(UserError):
    """A custom forward operator that does not import, construct, or pass the adjointness test."""
