"""Keep freed CPU memory in the process instead of handing it back to the kernel every step.

A meta-step on full MNIST allocates and frees tensors of 5-15 MB (the rule MLP's ``(E, 64)``
activations and their bf16 copies) dozens of times. With glibc's default settings such blocks
are mapped fresh with ``mmap`` and unmapped when freed (or the top of the heap is trimmed back),
so the next step faults every page in again: 5,000-30,000 minor page faults and 0.01-0.07 s of
kernel time per meta-step on configs/mnist_long.yaml (docs/performance.md). :func:`keep_heap`
tells glibc's ``malloc`` to serve blocks up to 32 MiB from the heap and never to trim it, so
after the first steps the same pages are reused. Values are unchanged (only where the bytes live
changes); the price is that the process keeps its peak heap until it exits.

The command line calls it at start-up on Linux with glibc; ``GNCA_KEEP_HEAP=0`` turns it off.
Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

#: glibc's largest allowed mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
MMAP_THRESHOLD = 32 * 2**20
#: Grow the heap by this much beyond each request, so that ``brk`` is called rarely.
TOP_PAD = 64 * 2**20
#: Never trim the heap (the largest value the ``int`` argument holds).
TRIM_THRESHOLD = 2**31 - 1

_applied = False


def enabled_by_env(environ: dict[str, str] | None = None) -> bool:
    """False when ``GNCA_KEEP_HEAP`` is ``0``, ``false``, ``no`` or ``off``; True otherwise."""
    value = (os.environ if environ is None else environ).get("GNCA_KEEP_HEAP", "1")
    return value.strip().lower() not in {"0", "false", "no", "off"}


def is_glibc() -> bool:
    """True where this process runs on glibc (Linux distributions other than musl ones)."""
    return platform.libc_ver()[0] == "glibc"


def keep_heap() -> bool:
    """Set glibc's ``malloc`` to reuse freed memory (see the module docstring).

    Returns True when the settings were applied (now or by an earlier call), False where the
    C library is not glibc or ``GNCA_KEEP_HEAP=0``. Safe to call more than once.
    """
    global _applied
    if _applied:
        return True
    if not enabled_by_env() or not is_glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    _applied = ok
    return ok
