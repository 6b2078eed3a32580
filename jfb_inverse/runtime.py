"""Process-level runtime tuning for CPU runs: glibc's allocator thresholds.

Why: PyTorch frees and re-allocates the same few large tensors (conv activations of 0.1-10 MB) at
every fixed-point iteration. With glibc's defaults, freed memory above a dynamic threshold is
handed back to the kernel (``munmap`` / heap trimming) and the next allocation page-faults it
back in, zero-filled, page by page. On inference-only forwards that costs ~1.5x in wall time
(measured by ``benchmarks/malloc_env.py``; hundreds of thousands of minor page faults per
forward). Raising the mmap and trim thresholds keeps freed memory in the process for re-use.

Clean fix: :func:`tune_malloc` calls ``mallopt`` through ``ctypes`` at start-up, so no environment
variable and no re-exec are needed; it takes effect for every later allocation. The equivalent
environment variables (:data:`MALLOC_ENV`) must be set before the process starts. The cost: the
process keeps up to ``trim_threshold`` bytes of freed memory resident after a peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MIB = 1 << 20
# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

DEFAULT_MMAP_THRESHOLD = 256 * MIB
DEFAULT_TRIM_THRESHOLD = 512 * MIB

#: The same setting as environment variables (only effective when set before the process starts).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(DEFAULT_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(DEFAULT_TRIM_THRESHOLD),
}

_applied = False


def tune_malloc(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
    force: bool = False,
) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; return whether it was applied.

    A no-op (returns False) off Linux/glibc, when ``JFB_INVERSE_MALLOC=0`` opts out, or when the
    user already set any ``MALLOC_*`` threshold variable (their setting wins), unless ``force``.
    Safe to call more than once and at any time; it affects allocations made after the call.
    """
    global _applied
    if not force:
        if _applied:
            return True
        if os.environ.get("JFB_INVERSE_MALLOC", "") == "0":
            return False
        if any(key in os.environ for key in (*MALLOC_ENV, "MALLOC_TOP_PAD_")):
            return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    _applied = _applied or ok
    return ok


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` was applied in this process (or the environment variables were set)."""
    return _applied or all(key in os.environ for key in MALLOC_ENV)


def release_memory() -> bool:
    """Hand freed heap memory back to the kernel now (glibc ``malloc_trim(0)``); False where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _glibc_mallopt():
    libc = _libc()
    # musl and other libcs have no (working) mallopt; gnu_get_libc_version identifies glibc.
    if libc is None or not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
