"""Giving freed heap memory back to the system, so the process's RSS follows what it uses.

glibc's allocator keeps what a thread frees in that thread's arena for the next allocation
and returns it to the system only from the top of the main heap. The daemon's threads (the
event loop, SQLite's connection threads, the executor's, the Git thread) each have an arena,
and a burst in one of them (a reconcile, a push, a read of many journal rows) leaves pages
there that stay resident until that same arena needs them again: in ``bench.steady`` (1,000
objects, 200 changes/s) 15-19 MB of the daemon's 103-115 MB peak was free memory inside the
arenas. ``malloc_trim(0)`` hands every free page of every arena back (``MADV_DONTNEED``); run
once a second it took the same benchmark's peak to 94 MB for no CPU that showed (a trim costs
about 2 ms with nothing to return, about 20 ms when it returns 75 MB).

Guarantee: :func:`trim_heap_periodically` trims at most once per :data:`TRIM_INTERVAL_S`, on a
worker thread (never blocking the event loop), and does nothing where the C library has no
``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_INTERVAL_S = 1.0
"""Pause between two trims: the load's bursts come and go within seconds."""


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name)
        trim = library.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


_MALLOC_TRIM = _find_malloc_trim()


def trim_heap() -> bool:
    """Return the allocator's free pages to the system; False where that is not possible."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


async def trim_heap_periodically() -> None:
    """Trim the heap every :data:`TRIM_INTERVAL_S` until cancelled (nothing to do without
    ``malloc_trim``)."""
    if _MALLOC_TRIM is None:
        return
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        await asyncio.to_thread(trim_heap)
