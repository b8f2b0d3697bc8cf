"""Freed heap memory goes back to the system: a burst of allocations in a thread, mostly freed,
leaves RSS behind until the heap is trimmed. Each check runs in a fresh interpreter, so that
nothing else in the process holds or frees memory meanwhile."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
