"""Shared pieces of the benchmarks: import checks, realistic objects, process probes, tables.

Every benchmark measures the code of *this* checkout. ``reverserd`` may also be installed
elsewhere (an editable install of another checkout), so :func:`use_this_checkout` puts the
checkout first on ``PYTHONPATH`` for this process and every child, and refuses to run when
``import reverserd`` would resolve anywhere else.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# Data bytes per ConfigMap; with metadata the journaled JSON lands between about 1 and 2 KB.
DATA_BYTES_RANGE = (700, 1550)
# The ConfigMap resource as discovery reports it; the stream key of a namespace's watch.
CONFIGMAPS_STREAM = "v1/configmaps@{namespace}"
# Probes of files and the journal: fine enough for sub-second figures, cheap on the CPU.
PROBE_INTERVAL_S = 0.02


# -- the code under test -------------------------------------------------------------------


def use_this_checkout() -> None:
    """Make ``import reverserd`` resolve to this checkout here and in every child process."""
    root = str(REPO_ROOT)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != root:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in parts if p != root]])
    if sys.path[0] != root:
        sys.path.insert(0, root)
    import reverserd

    here = Path(reverserd.__file__).resolve()
    child = subprocess.run(
        [sys.executable, "-c", "import reverserd; print(reverserd.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()
    for where, found in (("this process", here), ("a child process", Path(child).resolve())):
        if not found.is_relative_to(REPO_ROOT):
            raise SystemExit(
                f"bench: in {where} `import reverserd` resolves to {found}, not to {REPO_ROOT};"
                f" run with PYTHONPATH={REPO_ROOT}"
            )


# -- realistic objects ---------------------------------------------------------------------

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november"
    " oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def configmap_data(index: int) -> dict[str, str]:
    """Deterministic, varied ConfigMap data of DATA_BYTES_RANGE bytes: properties, YAML, flags."""
    rng = random.Random(index)
    budget = rng.randint(*DATA_BYTES_RANGE)
    properties: list[str] = []
    size = 0
    while size < budget * 0.6:
        line = (
            f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}.{rng.randint(0, 99)}={rng.choice(_WORDS)}"
        )
        properties.append(line)
        size += len(line) + 1
    settings: list[str] = []
    while size < budget * 0.9:
        line = f"  {rng.choice(_WORDS)}_{rng.randint(0, 999)}: {rng.choice(_WORDS)}"
        settings.append(line)
        size += len(line) + 1
    data = {
        "application.properties": "\n".join(properties) + "\n",
        "settings.yaml": "settings:\n" + "\n".join(settings) + "\n",
        "LOG_LEVEL": rng.choice(("debug", "info", "warn")),
        "REPLICA_HINT": str(rng.randint(1, 9)),
    }
    filler = budget - sum(len(k) + len(v) for k, v in data.items())
    if filler > 0:
        data["NOTES"] = " ".join(rng.choice(_WORDS) for _ in range(filler // 6 + 1))[:filler]
    return data


def configmap_manifest(namespace: str, name: str, index: int) -> dict[str, Any]:
    """A ConfigMap as a user would apply it: labels, an annotation and 1-2 KB in total."""
    rng = random.Random(-index - 1)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": f"svc-{index % 97}",
                "app.kubernetes.io/part-of": rng.choice(_WORDS),
                "tier": rng.choice(("frontend", "backend", "batch")),
            },
            "annotations": {"owner": f"team-{rng.choice(_WORDS)}@example.com"},
        },
        "data": configmap_data(index),
    }


def as_served(manifest: dict[str, Any], resource_version: int, seed: int) -> dict[str, Any]:
    """What the API server returns for ``manifest``: uid, resourceVersion, managedFields..."""
    rng = random.Random(seed)
    metadata = dict(manifest["metadata"])
    metadata.update(
        uid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        resourceVersion=str(resource_version),
        creationTimestamp="2025-01-01T00:00:00Z",
        managedFields=[
            {
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2025-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:data": {f"f:{key}": {} for key in manifest["data"]},
                    "f:metadata": {
                        "f:labels": {f"f:{key}": {} for key in metadata.get("labels", {})}
                    },
                },
            }
        ],
    )
    return {**manifest, "metadata": metadata}


def configmap_names(count: int) -> list[str]:
    return [f"cm-{index:05d}" for index in range(count)]


# -- processes -----------------------------------------------------------------------------


def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    kb = proc_status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def children_peak_rss_mb(pid: int) -> float | None:
    """Summed peak RSS of the processes ``pid`` started (the daemon's webhook process)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    peaks = [peak_rss_mb(int(child)) for child in children]
    found = [peak for peak in peaks if peak is not None]
    return sum(found) if found else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def cpu_seconds_with_children(pid: int) -> float | None:
    """User + system CPU time of a process and of the children it has waited for (a Git
    server's ``git http-backend`` and ``git receive-pack`` runs, say)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(field) for field in fields[11:15]) / ticks


def load_average() -> float:
    """The machine's 1-minute load average: other work on the machine skews every figure."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_stall_us() -> int | None:
    """Total microseconds in which some task waited for a CPU (/proc/pressure/cpu), if known."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first.rpartition("total=")[2])


def descendant_pids(name: str) -> list[int]:
    """PIDs of this process's descendants whose command is ``name`` (e.g. kube-apiserver)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        commands[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        parents[pid] = int(stat.rpartition(")")[2].split()[1])
    me = os.getpid()
    found = []
    for pid, command in commands.items():
        if not command.startswith(name[:15]):
            continue
        ancestor = parents.get(pid, 0)
        while ancestor not in (0, 1, me):
            ancestor = parents.get(ancestor, 0)
        if ancestor == me:
            found.append(pid)
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process it started, and they started, still running."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


class GroupPeak(threading.Thread):
    """The peak of the summed RSS of a process and all it starts, sampled every ``interval``.

    What a cgroup's memory limit or an outside observer sees: the daemon with the ``git``
    processes it runs (``git repack`` while a flush merges packs) and its webhook process. A
    child that lives shorter than ``interval`` may be missed; each process's own peak
    (``VmHWM``) is kept too, so the sum of the daemon's and the largest child's peaks bounds it
    from above.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.peaks_kb: dict[int, tuple[str, int]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            total = 0
            for pid in process_tree(self.pid):
                rss, hwm = proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")
                total += rss or 0
                if hwm is not None and hwm > self.peaks_kb.get(pid, ("", 0))[1]:
                    self.peaks_kb[pid] = (_command(pid), hwm)
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def largest_child(self) -> tuple[str, float] | None:
        """The command and peak RSS in MB of the largest process other than ``pid`` seen."""
        children = [found for pid, found in self.peaks_kb.items() if pid != self.pid]
        if not children:
            return None
        command, kb = max(children, key=lambda found: found[1])
        return command, kb / 1024


def _command(pid: int) -> str:
    """The program's name and its first argument that is no option: ``git repack``."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    shown = [word.decode(errors="replace") for word in words if word]
    if not shown:
        return "?"
    operands = [word for word in shown[1:] if not word.startswith("-") and "=" not in word]
    return " ".join([Path(shown[0]).name, *operands[:1]])


class FirstTrue(threading.Thread):
    """Polls ``probe`` in the background; remembers the monotonic time it first held.

    A probe that raises counts as not yet (the file it reads may not exist yet).
    """

    def __init__(self, probe: Callable[[], bool], interval: float = PROBE_INTERVAL_S) -> None:
        super().__init__(daemon=True)
        self.probe = probe
        self.interval = interval
        self.at: float | None = None
        self._done = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                held = self.probe()
            except Exception:
                held = False
            if held:
                self.at = time.monotonic()
                self._done.set()
                return
            self._halt.wait(self.interval)

    def wait(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> float | None:
        """The time the probe first held, or None after ``timeout`` or when ``alive()`` fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if self._done.wait(0.1):
                return self.at
        return self.at

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# -- the journal and the daemon's log ------------------------------------------------------


def read_journal(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One read-only query of a journal that a running daemon may be writing."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
        return list(connection.execute(sql, params).fetchall())


def seed_complete(db: Path, stream: str) -> bool:
    if not db.exists():
        return False
    rows = read_journal(db, "SELECT seed_state FROM streams WHERE stream = ?", (stream,))
    return bool(rows) and rows[0][0] == "complete"


def log_time(line: dict[str, Any]) -> float | None:
    """Unix time of a JSON log line (``time`` is RFC 3339 UTC with milliseconds)."""
    text = line.get("time")
    if not isinstance(text, str) or len(text) < 23:
        return None
    whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole + int(text[20:23]) / 1000


def first_log(
    lines: Sequence[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]
) -> tuple[float, dict[str, Any]] | None:
    for line in lines:
        if predicate(line):
            at = log_time(line)
            if at is not None:
                return at, line
    return None


def message_starts(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: str(line.get("message", "")).startswith(prefix)


# -- results -------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Result:
    name: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_before: float = field(default_factory=load_average)
    load_after: float | None = None
    stall_before: int | None = field(default_factory=cpu_stall_us)
    started: float = field(default_factory=time.monotonic)
    cpu_pressure: float | None = None

    def finish(self) -> Result:
        """Call when the measurement is over: records how busy the machine was meanwhile."""
        self.load_after = load_average()
        stall = cpu_stall_us()
        if stall is not None and self.stall_before is not None:
            elapsed_us = (time.monotonic() - self.started) * 1e6
            self.cpu_pressure = (stall - self.stall_before) / elapsed_us
        return self

    def add(self, metric: str, value: str, target: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(metric, value, target, met))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def missed(self) -> list[Row]:
        return [row for row in self.rows if row.met is False]

    def render(self) -> str:
        headers = ("metric", "measured", "target", "")
        cells = [
            (row.metric, row.value, row.target, {True: "ok", False: "MISSED", None: ""}[row.met])
            for row in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        rule = "  ".join("-" * w for w in widths)
        lines = [f"== bench {self.name} ==", f"command: {self.command}", rule]
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        lines.append(rule)
        for cell in cells:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())
        lines.append(rule)
        verdict = (
            "all targets met"
            if not self.missed
            else "TARGET MISSED: " + ", ".join(row.metric for row in self.missed)
        )
        lines.append(verdict)
        after = self.load_after if self.load_after is not None else load_average()
        pressure = (
            ""
            if self.cpu_pressure is None
            else f"; some task waited for a CPU {self.cpu_pressure:.0%} of the time"
        )
        lines.append(
            f"machine: {os.cpu_count()} CPUs; 1-min load average {self.load_before:.2f} at the"
            f" start, {after:.2f} at the end{pressure}"
        )
        lines += [f"note: {text}" for text in self.notes]
        return "\n".join(lines)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([f"PYTHONPATH={REPO_ROOT}", "python", "-m", module, *args])


def fmt_s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def fmt_mb(megabytes: float | None) -> str:
    return "n/a" if megabytes is None else f"{megabytes:.0f} MB"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(fraction * len(ordered) + 0.999999)))
    return ordered[rank - 1]


def add_common_arguments(parser: argparse.ArgumentParser, daemon_profile: bool = False) -> None:
    """--workdir and --keep; with ``daemon_profile``, --profile for a cProfiled daemon too."""
    if daemon_profile:
        parser.add_argument(
            "--profile",
            type=Path,
            metavar="FILE",
            help="run the daemon under cProfile and write its profile here (a separate run:"
            " profiling slows the daemon down)",
        )
    parser.add_argument(
        "--workdir", type=Path, help="keep state, logs and journals here (default: a temp dir)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary work directory afterwards"
    )


@contextmanager
def workdir(requested: Path | None, keep: bool, name: str) -> Iterator[Path]:
    """The benchmark's scratch directory; a temporary one is removed unless ``keep``."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        yield requested
        return
    directory = Path(tempfile.mkdtemp(prefix=f"reverserd-bench-{name}-"))
    try:
        yield directory
    finally:
        if keep:
            print(f"bench: kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def dump_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def benchmark_main(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace, Sequence[str] | None], Result],
    argv: Sequence[str] | None,
) -> int:
    """Parse arguments, run one benchmark, print its table; exit 1 when a target is missed."""
    use_this_checkout()
    args = build_parser().parse_args(argv)
    result = run(args, argv)
    print(result.render(), flush=True)
    return 1 if result.missed else 0
