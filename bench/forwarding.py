"""bench forwarding: how long an attribution fact takes to reach another replica of a sharded group.

The sending replica's side runs in this process as the daemon runs it: facts are committed to its
journal by the :class:`~reverserd.attribution.store.FactWriter` (as its webhook process commits
them before answering) at ``--rate`` per second for ``--duration`` seconds, and a
:class:`~reverserd.attribution.peers.FactForwarder` sends them over TLS, signed, to a real
webhook process (``python -m reverserd.attribution.webhook_process`` with the peer path on) that
stores them in its own journal and announces each commit on its stdout, as it does to its
daemon. A fact's delay is the time from its receipt by the sender to that announcement. The
webhook's answer is not measured: forwarding starts after it, in another process.

Target: every fact delivered, p99 delay under 1 s (the default grace window a change waits for
its fact is 5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    Result,
    add_common_arguments,
    benchmark_main,
    command_line,
    cpu_seconds,
    fmt_mb,
    fmt_s,
    peak_rss_mb,
    percentile,
    say,
    workdir,
)

DELAY_TARGET_S = 1.0
# Facts still on their way after the load get this long to arrive.
DRAIN_TIMEOUT_S = 60.0


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    result = Result("forwarding", command_line("bench.forwarding", argv))
    with workdir(args.workdir, args.keep, "forwarding") as work:
        asyncio.run(_measure(args, work, result))
    return result.finish()


async def _measure(args: argparse.Namespace, work: Path, result: Result) -> None:
    from reverserd.attribution.facts import Fact
    from reverserd.attribution.peers import FactForwarder, peer_client_tls, peer_server_name
    from reverserd.attribution.store import FactWriter, open_fact_connection
    from reverserd.attribution.webhook_process import LINE_LIMIT, READY, WebhookSettings
    from reverserd.journal import JournalReader, JournalWriter
    from testbed.controlplane import free_port, make_pki

    pki = work / "pki"
    make_pki(pki)
    sender, receiver = work / "sender", work / "receiver"
    for state in (sender, receiver):
        state.mkdir(parents=True, exist_ok=True)
        await (await JournalWriter.open(state)).close()
    secret = work / "peer-secret"
    secret.write_bytes(uuid.uuid4().hex.encode() * 2)
    port = free_port()
    settings = WebhookSettings(
        str(receiver), f"127.0.0.1:{port}", ("admission",), str(pki / "webhook.crt"),
        str(pki / "webhook.key"), None, "kube-apiserver-audit", None, "json", "WARNING",
        str(secret), "bench-receiver",
    )  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reverserd.attribution.webhook_process",
        json.dumps(settings.__dict__),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
    )
    assert process.stdout is not None
    if (await process.stdout.readline()).strip() != json.dumps(READY).encode():
        raise SystemExit("bench: the receiving webhook process did not start")
    total = int(args.rate * args.duration)
    delays: list[float] = []
    everything = asyncio.Event()

    async def announced() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            now = time.time()
            delays.extend(now - row[13] for row in json.loads(line)["facts"])
            if len(delays) >= total:
                everything.set()

    listening = asyncio.create_task(announced())
    connection = await open_fact_connection(sender)
    reader = await JournalReader.open(sender)
    forwarder = FactForwarder(
        reader.connection,
        "bench-sender",
        secret.read_bytes(),
        peer_client_tls(pki / "ca.crt"),
        peer_server_name(pki / "webhook.crt"),
        lambda: {"bench-receiver": f"127.0.0.1:{port}"},
    )
    writer = FactWriter(connection, lambda facts, dropped: forwarder.wake())
    forwarding = asyncio.create_task(forwarder.run())
    say(f"{total} facts at {args.rate:g}/s")
    started = time.monotonic()
    cpu_before = time.process_time()
    writes = []
    for index in range(total):
        await asyncio.sleep(max(0.0, started + index / args.rate - time.monotonic()))
        fact = Fact(
            "admission", "UPDATE", "", "configmaps", "team-a", f"cm-{index}", str(uuid.uuid4()),
            None, str(1000 + index), "0123456789abcdef" * 4,
            "system:serviceaccount:team-a:deployer",
            ("system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"),
            str(uuid.uuid4()), time.time(),
        )  # fmt: skip
        writes.append(asyncio.create_task(writer.record([fact])))
    await asyncio.gather(*writes)
    load_s = time.monotonic() - started
    try:
        await asyncio.wait_for(everything.wait(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        pass
    sender_cpu = time.process_time() - cpu_before
    receiver_cpu = cpu_seconds(process.pid)
    receiver_rss = peak_rss_mb(process.pid)
    forwarding.cancel()
    listening.cancel()
    await asyncio.gather(forwarding, listening, return_exceptions=True)
    process.terminate()
    await process.wait()
    await reader.close()
    await connection.close()

    result.add("facts delivered", f"{len(delays)} of {total}", f"{total}", len(delays) >= total)
    if delays:
        p99 = percentile(delays, 0.99)
        result.add("delay p50", fmt_s(percentile(delays, 0.5)))
        result.add("delay p99", fmt_s(p99), f"<= {DELAY_TARGET_S:g} s", p99 <= DELAY_TARGET_S)
        result.add("delay max", fmt_s(max(delays)))
    result.add("facts written per second (sender)", f"{total / load_s:.0f}")
    result.add("CPU of this process (writer and forwarder)", fmt_s(sender_cpu))
    result.add("CPU of the receiving webhook process", fmt_s(receiver_cpu))
    result.add("peak RSS of the receiving webhook process", fmt_mb(receiver_rss))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.forwarding", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=500.0, help="facts per second (500)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
