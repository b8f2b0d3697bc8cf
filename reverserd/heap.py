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

Between two trims a burst still lands in whichever arena its thread has, and glibc gives each
new thread its own arena up to eight per CPU: the peak is then the sum of several arenas'
bursts, each with its own free space. :func:`limit_arenas` caps them at :data:`ARENAS` for the
whole process (what ``MALLOC_ARENA_MAX`` does, without asking the user to set it): the same
benchmark then peaked at 86-89 MB where it peaked at 91-92 MB, for the same CPU per commit. Python
holds the GIL for most allocations anyway, so threads rarely wait on a shared arena's lock.
A limit the user set (``MALLOC_ARENA_MAX``, or ``glibc.malloc.arena_max`` in
``GLIBC_TUNABLES``) is theirs to keep: the process then leaves glibc's setting as it is.

Guarantees: :func:`limit_arenas`, called before the process starts its threads, leaves it at
most :data:`ARENAS` arenas unless the user's own limit is set; :func:`trim_heap_periodically`
trims at most once per :data:`TRIM_INTERVAL_S`, on a worker thread (never blocking the event
loop). Both do nothing where the C library lacks ``mallopt`` or ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

TRIM_INTERVAL_S = 1.0
"""Pause between two trims: the load's bursts come and go within seconds."""

ARENAS = 2
"""Most malloc arenas of the process: the main thread's, and one its other threads share."""

_M_ARENA_MAX = -8
"""``mallopt``'s parameter number for the arena limit (glibc's ``malloc.h``)."""


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


_LIBC = _load_libc()


def _find_libc_function(name: str, *argtypes: type[ctypes.c_int | ctypes.c_size_t]) -> Any:
    function = getattr(_LIBC, name, None)
    if function is None:
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM: Callable[[int], int] | None = _find_libc_function("malloc_trim", ctypes.c_size_t)
_MALLOPT: Callable[[int, int], int] | None = _find_libc_function(
    "mallopt", ctypes.c_int, ctypes.c_int
)


def user_arena_limit_set() -> bool:
    """Whether the environment sets glibc's arena limit, which then stands."""
    return "MALLOC_ARENA_MAX" in os.environ or "glibc.malloc.arena_max" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


def limit_arenas() -> bool:
    """Cap the process at :data:`ARENAS` malloc arenas; False where that is not possible, or
    where the user's own limit stands (:func:`user_arena_limit_set`).

    Threads that already have an arena keep it: call this before the process starts any."""
    if _MALLOPT is None or user_arena_limit_set():
        return False
    return bool(_MALLOPT(_M_ARENA_MAX, ARENAS) == 1)


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
