"""bench journal_append: how fast JournalWriter journals watch events.

The writer is driven the way the watchers drive it: several streams at once, each awaiting one
``record_changes`` call of up to 500 events (a watcher's batch) before sending the next, so the
writer's group commit folds the concurrent batches into one transaction. Objects are realistic
ConfigMaps as the API server serves them (1-2 KB journaled, plus managedFields, which the
journal drops). Two phases per run: CREATE (objects new to the journal) and UPDATE (a new
resourceVersion of each). An informational run with one event per call shows what group commit
buys when watchers deliver events one by one.

Target: >= 50,000 events/s with batches of 500.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Result,
    add_common_arguments,
    as_served,
    benchmark_main,
    command_line,
    configmap_manifest,
    say,
    workdir,
)

TARGET_EVENTS_PER_S = 50_000


@dataclass
class Phase:
    name: str
    events: int
    seconds: float
    transactions: int
    write_seconds: float
    build_seconds: float
    loop_cpu_seconds: float
    """CPU time of the event loop's thread (the writer's Python work, most of it)."""
    other_cpu_seconds: float
    """CPU time of the process's other threads (SQLite on aiosqlite's thread, most of it)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def _drive(
    state_dir: Path,
    streams: int,
    per_stream: int,
    batch: int,
    phases: Sequence[str],
    profiler: cProfile.Profile | None,
) -> tuple[list[Phase], dict[str, Any]]:
    from reverserd.journal import JOURNAL_FILE, JournalWriter, StreamSpec
    from reverserd.journal.writer import journal_body
    from reverserd.kube.resources import ResourceType

    class MeasuredWriter(JournalWriter):
        """Counts transactions and measures SQL and computing the batch (they overlap)."""

        transactions = 0
        write_seconds = 0.0
        build_seconds = 0.0

        def _prepare(self, first: Any) -> Any:
            started = time.perf_counter()
            prepared = super()._prepare(first)
            self.build_seconds += time.perf_counter() - started
            return prepared

        async def _write(self, batch: Any) -> bool:
            started = time.perf_counter()
            changed = await super()._write(batch)
            self.write_seconds += time.perf_counter() - started
            self.transactions += 1
            return changed

    rtype = ResourceType("", "v1", "configmaps", "ConfigMap", True)
    specs = [StreamSpec(rtype, f"bench-{k}") for k in range(streams)]
    manifests = [
        [
            configmap_manifest(spec.namespace, f"cm-{i:05d}", k * per_stream + i)
            for i in range(per_stream)
        ]
        for k, spec in enumerate(specs)
    ]
    # Bodies are built before the clock starts: parsing them is the watch client's cost.
    version = 1000
    bodies: dict[str, list[list[dict[str, Any]]]] = {}
    for phase in phases:
        per_phase = []
        for k, stream_manifests in enumerate(manifests):
            served = []
            for i, manifest in enumerate(stream_manifests):
                version += 1
                served.append(as_served(manifest, version, k * per_stream + i))
            per_phase.append(served)
        bodies[phase] = per_phase
    # The prepared bodies (hundreds of MB of dicts) stay out of the collector's full passes,
    # which would otherwise scan them all and be charged to the writer: a daemon holds none.
    gc.collect()
    gc.freeze()
    sample = bodies[phases[0]][0][: min(200, per_stream)]
    journaled = [
        len(json.dumps(journal_body("", "configmaps", b), separators=(",", ":"))) for b in sample
    ]
    served_sizes = [len(json.dumps(b, separators=(",", ":"))) for b in sample]

    writer = await MeasuredWriter.open(state_dir)
    assert isinstance(writer, MeasuredWriter)
    runner = asyncio.create_task(writer.run())
    results: list[Phase] = []
    try:
        for spec in specs:
            await writer.register_stream(spec)

        async def stream_load(spec: StreamSpec, items: list[dict[str, Any]], kind: str) -> None:
            for first in range(0, len(items), batch):
                chunk = items[first : first + batch]
                changes: list[tuple[Any, dict[str, Any]]] = [(kind, body) for body in chunk]
                resume = chunk[-1]["metadata"]["resourceVersion"]
                await writer.record_changes(spec, changes, resume)

        for phase in phases:
            kind = "ADDED" if phase == "create" else "MODIFIED"
            transactions, write_s, build_s = (
                writer.transactions,
                writer.write_seconds,
                writer.build_seconds,
            )
            if profiler is not None:
                profiler.enable()
            started = time.perf_counter()
            process_cpu, loop_cpu = time.process_time(), time.thread_time()
            await asyncio.gather(
                *(stream_load(spec, bodies[phase][k], kind) for k, spec in enumerate(specs))
            )
            elapsed = time.perf_counter() - started
            loop_cpu = time.thread_time() - loop_cpu
            process_cpu = time.process_time() - process_cpu
            if profiler is not None:
                profiler.disable()
            results.append(
                Phase(
                    phase,
                    streams * per_stream,
                    elapsed,
                    writer.transactions - transactions,
                    writer.write_seconds - write_s,
                    writer.build_seconds - build_s,
                    loop_cpu,
                    process_cpu - loop_cpu,
                )
            )
        events = await (await writer.connection.execute("SELECT COUNT(*) FROM events")).fetchone()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await writer.close()
    facts = {
        "journaled_bytes_avg": sum(journaled) / len(journaled),
        "journaled_bytes_min": min(journaled),
        "journaled_bytes_max": max(journaled),
        "served_bytes_avg": sum(served_sizes) / len(served_sizes),
        "event_rows": int(events[0]) if events else 0,
        "database_mb": (state_dir / JOURNAL_FILE).stat().st_size / 2**20,
    }
    return results, facts


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    result = Result("journal_append", command_line("bench.journal_append", argv))
    profiler = cProfile.Profile() if args.profile else None
    with workdir(args.workdir, args.keep, "journal") as work:
        say(
            f"{args.streams} streams x {args.objects} objects, batches of {args.batch}:"
            " CREATE then UPDATE"
        )
        phases, facts = asyncio.run(
            _drive(
                work / "main",
                args.streams,
                args.objects,
                args.batch,
                ("create", "update"),
                profiler,
            )
        )
        small: list[Phase] = []
        if args.small_objects > 0:
            say(f"{args.streams} streams x {args.small_objects} objects, one event per call")
            small, _ = asyncio.run(
                _drive(work / "small", args.streams, args.small_objects, 1, ("update",), None)
            )
    expected = sum(p.events for p in phases)
    result.add(
        "object size (journaled JSON)",
        f"avg {facts['journaled_bytes_avg']:.0f} B"
        f" ({facts['journaled_bytes_min']}-{facts['journaled_bytes_max']} B);"
        f" as served {facts['served_bytes_avg']:.0f} B",
    )
    for phase in phases:
        per_txn = phase.events / max(1, phase.transactions)
        result.add(
            f"{phase.name}: events/s ({args.streams} streams, batch {args.batch})",
            f"{phase.rate:,.0f} ({phase.events:,} in {phase.seconds:.2f} s)",
            f">= {TARGET_EVENTS_PER_S:,}",
            phase.rate >= TARGET_EVENTS_PER_S,
        )
        result.add(
            f"{phase.name}: transactions, events per transaction",
            f"{phase.transactions}, {per_txn:,.0f}",
        )
        result.add(
            f"{phase.name}: time in SQL / building batches (overlapping) / wall",
            f"{phase.write_seconds:.2f} s / {phase.build_seconds:.2f} s / {phase.seconds:.2f} s",
        )
        result.add(
            f"{phase.name}: CPU per event, event loop / other threads (SQLite)",
            f"{phase.loop_cpu_seconds / phase.events * 1e6:.1f} us"
            f" / {phase.other_cpu_seconds / phase.events * 1e6:.1f} us",
        )
    for phase in small:
        result.add(
            f"{phase.name}: events/s ({args.streams} streams, batch 1; informational)",
            f"{phase.rate:,.0f} ({phase.events:,} in {phase.seconds:.2f} s,"
            f" {phase.events / max(1, phase.transactions):.1f} events per transaction)",
        )
    result.add(
        "event rows in the journal",
        f"{facts['event_rows']:,} of {expected:,}",
        "all",
        facts["event_rows"] == expected,
    )
    result.add("journal file size", f"{facts['database_mb']:.0f} MB")
    result.add(
        "peak RSS of the benchmark process (holds every prepared body)",
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
    )
    result.note(
        "'building batches' is the writer's own Python work per transaction (index lookups,"
        " managedFields stripping, json.dumps); 'SQL' is the aiosqlite round trips and SQLite"
        " itself; the writer builds the next batch while SQLite writes the previous one, so"
        " the two overlap and can add up to more than the wall time. CPU per event holds on a"
        " shared machine: the rate on two idle CPUs is bounded by the larger of the two."
    )
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(15)
        if args.profile != "-":
            stats.dump_stats(args.profile)
            result.note(f"profile of the timed phases written to {args.profile}")
        print(out.getvalue(), file=sys.stderr)
    return result.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.journal_append", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams (default 4)")
    parser.add_argument(
        "--objects", type=int, default=10_000, help="objects per stream (default 10000)"
    )
    parser.add_argument("--batch", type=int, default=500, help="events per call (default 500)")
    parser.add_argument(
        "--small-objects",
        type=int,
        default=1_000,
        help="objects per stream for the one-event-per-call run (0 skips it; default 1000)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the timed phases (event loop thread); '-' prints the top functions only",
    )
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
