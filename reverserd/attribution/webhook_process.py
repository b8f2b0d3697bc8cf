"""The attribution webhooks in a process of their own, started and supervised by the daemon.

Why: the API server stores an admitted change only after reverserd answered its admission
review. Served from the daemon's event loop, that answer queued behind journal batches,
rendering and the Git thread (which share one interpreter lock): at 500 writes/s the API
server's write latency rose from a few milliseconds to about half a second, and it accepted
fewer writes. The webhook process has its own event loop, interpreter and SQLite connection,
so an answer costs parsing the review, a digest and a group commit.

The journal database thereby has a second writer, against the daemon's rule of one writer
connection, for one table: the process only appends rows to ``attribution_facts``, in
transactions of a few milliseconds, and the daemon's journal writer (which keeps no index of
that table) only deletes old ones. Measured with ``bench.steady --rate 500 --attribution``:
facts handed to the daemon's writer instead (a pipe round trip through its busy event loop)
made the API server's write latency p50 about 470-520 ms; written here, 74-83 ms.

Guarantees:

- A fact is committed to the journal database (:class:`~reverserd.attribution.store.FactWriter`)
  before the webhook that brought it answers, exactly as before: restarts lose nothing.
- The daemon hears of every committed batch on the process's stdout (one JSON line), so a
  consumer waiting for a fact wakes at once. These lines are only wake-ups (the resolver reads
  facts from the database), so the process never waits for the daemon to read them: a daemon
  that stops reading (stalled, or stopped with SIGSTOP) costs lines beyond
  :data:`WAKEUP_BUFFER_BYTES`, never an answer to the API server. Each line holds at most
  :data:`FACTS_PER_LINE` facts and the number of old facts the commit dropped; a line the
  daemon cannot read (longer than :data:`LINE_LIMIT`, or not JSON) is skipped, never a reason
  to restart the process.
- On SIGTERM from a daemon shutting down it stops listening, finishes the requests in flight
  and exits. It ends with a daemon that died too, even by SIGKILL: it reads its stdin, and end
  of file does the same.
- It is listening before the daemon answers ``/healthz``, and a process that dies later is started
  again with the backoff of every supervised task; while it is down, admission requests are
  allowed without a fact (``failurePolicy: Ignore``) and audit batches are resent by the API
  server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reverserd import logs
from reverserd.attribution.facts import Fact
from reverserd.attribution.peers import read_secret
from reverserd.attribution.store import FactWriter, open_fact_connection
from reverserd.attribution.webhooks import SHUTDOWN_S, build_webhook_app, serve_webhooks, server_tls
from reverserd.heap import limit_arenas
from reverserd.metrics import ATTRIBUTION_FACTS_DROPPED

if TYPE_CHECKING:
    # The daemon's side only: the webhook process imports this module too, and must not load
    # libgit2 through the resolver.
    from reverserd.attribution.resolver import Resolver

# By name: run as ``python -m``, this module is ``__main__``.
log = logging.getLogger("reverserd.attribution.webhook_process")

# Facts per wake-up line: each fact's fields are bounded, so a line stays far below LINE_LIMIT.
FACTS_PER_LINE = 64
# Longest wake-up line the daemon reads; a longer one (which the process never writes) is
# skipped, never a reason to stop relaying.
LINE_LIMIT = 2**20
# Binding the port and loading certificates take milliseconds; a slow machine gets far more.
START_TIMEOUT_S = 30.0
READY = "listening"
# Wake-up lines waiting for the daemon to read them; more are dropped.
WAKEUP_BUFFER_BYTES = 4 * 2**20


class WebhookProcessError(RuntimeError):
    """The webhook process could not start, or exited while the daemon still runs."""


@dataclass(frozen=True)
class WebhookSettings:
    state_dir: str
    listen: str
    sources: tuple[str, ...]
    tls_cert: str
    tls_key: str
    client_ca: str | None
    audit_client_name: str
    admission_client_name: str | None
    log_format: str
    log_level: str
    # Sharded mode: the file holding the group's secret, which forwarded facts are signed with.
    peer_secret_file: str | None = None
    # Sharded mode: this replica's identity, the only recipient of forwards it stores.
    replica_id: str = ""


class WebhookProcess:
    """The daemon's side: starts the process, relays its facts to the resolver, stops it."""

    def __init__(
        self,
        settings: WebhookSettings,
        resolver: Resolver,
        on_facts: Callable[[], None] | None = None,
    ) -> None:
        """``on_facts``: called whenever the process committed facts (the forwarder's wake-up)."""
        self.settings = settings
        self.resolver = resolver
        self.on_facts = on_facts
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the process and return once it listens; raises :class:`WebhookProcessError`."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            json.dumps(asdict(self.settings)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        self._process = process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                first = await process.stdout.readline()
        except TimeoutError:
            first = b""
        if first.strip() != json.dumps(READY).encode():
            await self._end(process)
            raise WebhookProcessError(
                f"the webhook process did not start listening on {self.settings.listen}"
                f" (exit code {process.returncode}); its log says why"
            )

    async def run(self) -> None:
        """Relay facts until the process ends; restarts it first if it is not running."""
        process = self._process
        if process is None or process.returncode is not None:
            await self.start()
            process = self._process
        assert process is not None and process.stdout is not None
        try:
            async for line in _lines(process.stdout):
                await self._relay(line)
            code = await process.wait()
        finally:
            if not self._stopping:
                await self._end(process)
        if not self._stopping:
            raise WebhookProcessError(f"the webhook process exited with code {code}")

    async def _relay(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            facts = [Fact.from_row(row) for row in message["facts"]]
            dropped = int(message["dropped"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable line from the webhook process skipped")
            return
        if dropped:
            ATTRIBUTION_FACTS_DROPPED.inc(dropped)
        if self.on_facts is not None and any(fact.origin is None for fact in facts):
            self.on_facts()
        await self.resolver.recorded(facts)

    async def stop(self) -> None:
        """SIGTERM, time for the requests in flight to finish, then make sure it is gone."""
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(SHUTDOWN_S + 2):
                await process.wait()
        except TimeoutError:
            await self._end(process)

    @staticmethod
    async def _end(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Lines of ``stream`` until end of file; a line over its limit is skipped whole."""
    skipping = False
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:
            if end.partial and not skipping:
                yield end.partial
            return
        except asyncio.LimitOverrunError as overrun:
            # Drop what is buffered of the long line and the rest of it up to its end.
            await stream.readexactly(overrun.consumed)
            skipping = True
            log.warning("over-long line from the webhook process skipped")
            continue
        if not skipping:
            yield line
        skipping = False


class _Wakeups:
    """Lines to the daemon on stdout, written without ever blocking the event loop."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport

    @classmethod
    async def open(cls) -> _Wakeups:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, sys.stdout)
        return cls(transport)

    def say(self, message: Any) -> None:
        if self.transport.is_closing():
            return  # the daemon is gone; end of file on stdin follows
        if self.transport.get_write_buffer_size() > WAKEUP_BUFFER_BYTES:
            return  # the daemon is not reading: it finds these facts in the database anyway
        self.transport.write(json.dumps(message).encode() + b"\n")

    def announce(self, facts: Sequence[Fact], dropped: int) -> None:
        for start in range(0, max(len(facts), 1), FACTS_PER_LINE):
            chunk = facts[start : start + FACTS_PER_LINE]
            self.say({"facts": [fact.row() for fact in chunk], "dropped": dropped})
            dropped = 0


async def _until_told_to_stop() -> None:
    """Until SIGTERM or SIGINT, or end of file on stdin (the daemon is gone)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def until_end_of_file() -> None:
        while await reader.read(4096):
            pass

    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(until_end_of_file())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _serve(settings: WebhookSettings) -> None:
    connection = await open_fact_connection(Path(settings.state_dir))
    wakeups = await _Wakeups.open()
    try:
        writer = FactWriter(connection, wakeups.announce)
        tls = server_tls(
            Path(settings.tls_cert),
            Path(settings.tls_key),
            Path(settings.client_ca) if settings.client_ca else None,
        )
        runner = await serve_webhooks(
            build_webhook_app(
                writer.record,
                settings.sources,
                settings.audit_client_name,
                settings.admission_client_name,
                read_secret(Path(settings.peer_secret_file)) if settings.peer_secret_file else None,
                settings.replica_id,
            ),
            settings.listen,
            tls,
        )
        try:
            log.info(
                "webhooks listening",
                extra={"listen": settings.listen, "sources": list(settings.sources)},
            )
            wakeups.say(READY)
            await _until_told_to_stop()
        finally:
            await runner.cleanup()
    finally:
        wakeups.transport.close()
        await connection.close()


def main(argv: Sequence[str]) -> int:
    limit_arenas()
    fields = json.loads(argv[1])
    settings = WebhookSettings(**{**fields, "sources": tuple(fields["sources"])})
    logs.configure(settings.log_format, settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except Exception:
        log.exception("webhook process failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
