"""Freed heap memory goes back to the system: a burst of allocations in a thread, mostly freed,
leaves RSS behind until the heap is trimmed. Each check runs in a fresh interpreter, so that
nothing else in the process holds or frees memory meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from reverserd.heap import ARENAS

# A worker thread (its own glibc arena) allocates 80 MB in 2,000-byte objects (beyond Python's
# small-object allocator, so malloc's), keeps one in fifty, and ends: the rest is free memory
# in the arena, resident until trimmed. Prints RSS in MB before and after TRIM.
_BURST = """
import asyncio, threading
from reverserd import heap

def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

kept = []
def burst():
    blobs = [bytes(2000) for _ in range(40_000)]
    kept.extend(blobs[::50])
worker = threading.Thread(target=burst)
worker.start()
worker.join()
before = rss_mb()
TRIM
print(before, rss_mb())
"""


def run_burst(trim: str) -> tuple[int, int]:
    code = textwrap.dedent(_BURST).replace("TRIM", trim)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    before, after = (int(field) for field in result.stdout.split())
    return before, after


def test_trimming_returns_what_a_thread_freed() -> None:
    before, after = run_burst("assert heap.trim_heap()")
    assert before - after > 40, (before, after)


def test_the_periodic_trim_runs_within_its_interval() -> None:
    trim = (
        "async def main():\n"
        "    task = asyncio.create_task(heap.trim_heap_periodically())\n"
        "    await asyncio.sleep(heap.TRIM_INTERVAL_S + 1.0)\n"
        "    task.cancel()\n"
        "asyncio.run(main())"
    )
    before, after = run_burst(trim)
    assert before - after > 40, (before, after)


def test_without_trimming_the_memory_stays() -> None:
    """The control: the drop above is the trim's, not the allocator's own doing."""
    before, after = run_burst("pass")
    assert before - after < 10, (before, after)


# Eight threads take memory from malloc at once, so each would get an arena of its own; prints
# how many arenas the allocator then has (its malloc_info report has one <heap> per arena).
_ARENAS = """
import ctypes, ctypes.util, os, tempfile, threading
from reverserd import heap, cli
from reverserd.attribution import webhook_process

BEFORE

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]

together = threading.Barrier(8)
def allocate():
    kept = [bytes(2000) for _ in range(100)]
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()

handle, path = tempfile.mkstemp()
os.close(handle)
report = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, report)
libc.fclose(report)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def arenas_after_threads(before: str, user_limit: dict[str, str] | None = None) -> int:
    """Arenas after eight threads allocate at once, in a process that runs ``before`` first
    and has the user's own arena limit only as ``user_limit`` gives it."""
    code = textwrap.dedent(_ARENAS).replace("BEFORE", before)
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env, **(user_limit or {})},
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_a_limited_process_keeps_its_threads_to_the_arena_limit() -> None:
    assert arenas_after_threads("assert heap.limit_arenas()") == ARENAS


@pytest.mark.parametrize(
    "entry",
    [
        'assert cli.main(["run", "--shards", "99999"]) == 2',
        'try:\n    webhook_process.main(["", "{}"])\nexcept KeyError:\n    pass',
    ],
    ids=["reverserd run", "webhook process"],
)
def test_each_process_limits_the_arenas_before_it_starts_a_thread(entry: str) -> None:
    """Each stops at once on the arguments given, before it would start a thread; the limit is
    set by then."""
    assert arenas_after_threads(entry) == ARENAS


def test_without_the_limit_each_thread_takes_an_arena() -> None:
    """The control: the counts above are the limit's doing."""
    assert arenas_after_threads("pass") > ARENAS + 4


@pytest.mark.parametrize(
    "user_limit",
    [{"MALLOC_ARENA_MAX": "5"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=5"}],
    ids=["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"],
)
def test_a_limit_the_user_set_stands(user_limit: dict[str, str]) -> None:
    assert arenas_after_threads("assert not heap.limit_arenas()", user_limit) == 5
