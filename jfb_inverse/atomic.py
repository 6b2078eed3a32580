"""Atomic file writes: write a temporary file in the target's folder, then rename it over the target.

An error or a kill never leaves a half-written file under the target's name, and an existing
symbolic link at that name is replaced, not followed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` for the caller to write; rename it over ``path``
    on success, remove it on any error. It keeps ``path``'s suffix (lower case), so writers that choose the format
    by suffix (numpy, image libraries) work on it; files get the usual umask permissions."""
    path = Path(path)
    # The suffix lower-cased: numpy appends ".npy" to a name ending in ".NPY" (the rename would
    # then miss the file it wrote and leave it behind).
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix.lower()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        if exc.filename is not None and str(exc.filename) == str(tmp):
            # Name the file the caller asked for, not the hidden temporary one.
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file if it is there; never let that hide the error being handled."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write(fh)`` into a temporary file, fsync it, then rename it over ``path`` (folders are made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("xb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
