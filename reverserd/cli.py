"""The ``reverserd`` command line: ``run``, ``status``, ``journal`` and ``render``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from reverserd import __version__, logs
from reverserd.attribution.identity import DEFAULT_EMAIL_DOMAIN
from reverserd.attribution.peers import MIN_SECRET_BYTES, read_secret
from reverserd.attribution.peers import peer_server_name as peer_server_name_of
from reverserd.attribution.resolver import DEFAULT_GRACE_S, SOURCES
from reverserd.attribution.webhooks import DEFAULT_AUDIT_CLIENT_NAME
from reverserd.config.pins import parse_pins
from reverserd.config.plane import MAX_TARGETS_PER_NAMESPACE
from reverserd.heap import limit_arenas
from reverserd.journal import JournalEvent, JournalReader
from reverserd.journal.writer import MAX_CURSOR_LAG_EVENTS
from reverserd.kube.lease import LEASE_DURATION_S
from reverserd.kube.shards import MAX_BUCKETS
from reverserd.targets.drift import DEFAULT_DRIFT_INTERVAL_S, MIN_DRIFT_INTERVAL_S

if TYPE_CHECKING:
    from reverserd.daemon import AttributionOptions

DEFAULT_STATE_DIR = Path("/var/lib/reverserd")
DEFAULT_HTTP_LISTEN = ":8080"
# Every long flag --some-flag of every command can be set by REVERSERD_SOME_FLAG instead, the
# way a Deployment or a systemd unit sets its configuration; a flag on the command line wins.
ENV_PREFIX = "REVERSERD_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Spellings of other log libraries (zap's "warn", as gitops-reverser took it) for our levels.
LOG_LEVEL_ALIASES = {"WARN": "WARNING"}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
DEFAULT_STATUS_URL = "http://127.0.0.1:8080"
# `status` gives up on a daemon that does not answer within this long and reads the journal.
STATUS_TIMEOUT_S = 5.0
# Exit statuses of `status`: scripts and probes tell healthy, unhealthy and unknown apart.
EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_UNKNOWN = 0, 1, 3
# A server that accepts and never answers is given up after this long; long enough for a large
# push over a slow link, since it bounds each read or write, not the whole transfer.
GIT_IO_TIMEOUT_S = 60.0
# The Lease API counts whole seconds, and the renew deadline and retry period are fractions of
# a duration: below 3 s a retry would come before a loaded API server answers; above an hour a
# dead replica's branches would wait longer than anyone would accept.
MIN_LEASE_DURATION_S, MAX_LEASE_DURATION_S = 3, 3600
# `journal tail -f` polls the journal at this pace; SQLite has no change notification.
TAIL_POLL_S = 0.5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverserd", description="Mirror live Kubernetes objects into Git, journal first."
    )
    parser.add_argument("--version", action="version", version=f"reverserd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the daemon",
        description=f"Run the daemon. Every flag can also be set by {ENV_PREFIX}<FLAG>.",
    )
    cluster = run.add_argument_group("cluster")
    cluster.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )
    cluster.add_argument("--context", help="kubeconfig context")
    storage = run.add_argument_group("state and HTTP")
    storage.add_argument(
        "--state-dir",
        type=Path,
        default=_env_path("REVERSERD_STATE_DIR"),
        help="journal and Git clones",
    )
    storage.add_argument(
        "--journal-max-lag-events",
        type=int,
        default=MAX_CURSOR_LAG_EVENTS,
        help="a target whose cursor falls this many events behind the newest stops holding"
        " back journal compaction and re-syncs from the latest state when it runs again",
    )
    storage.add_argument(
        "--http-listen",
        default=os.environ.get("REVERSERD_HTTP_LISTEN", DEFAULT_HTTP_LISTEN),
        help="address of /healthz, /readyz, /metrics and /status",
    )
    storage.add_argument(
        "--no-status-auth",
        action="store_true",
        help="serve /metrics, /status and / to anyone who reaches the port; by default a"
        " request needs a bearer token that Kubernetes authorizes to get that path"
        " (TokenReview and SubjectAccessReview), except from the loopback interface",
    )
    storage.add_argument(
        "--status-auth-on-loopback",
        action="store_true",
        help="ask loopback clients for a token too: for hosts where other users share the"
        " loopback interface (in a pod only kubectl port-forward and exec reach it)",
    )
    logging_group = run.add_argument_group("logging")
    logging_group.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="json lines or text"
    )
    logging_group.add_argument(
        "--log-level",
        type=_log_level,
        choices=LOG_LEVELS,
        default="INFO",
        help="any case; warn means WARNING",
    )
    git = run.add_argument_group("git")
    git.add_argument("--git-author-name", default="reverserd", help="author and committer name")
    git.add_argument(
        "--git-author-email", default="reverserd@localhost", help="author and committer e-mail"
    )
    git.add_argument(
        "--git-timeout",
        type=float,
        default=GIT_IO_TIMEOUT_S,
        help="seconds a Git connection may wait for the server before it is given up"
        f" (connect, and each read or write; default {GIT_IO_TIMEOUT_S:.0f})",
    )
    git.add_argument(
        "--allow-local-remotes",
        action="store_true",
        help="accept file:// URLs, local paths, plain http:// and loopback or link-local hosts"
        " as GitProvider URLs (tests, demos); off because a custom resource could otherwise"
        " point at any repository on this machine, or at services only the pod can reach",
    )
    git.add_argument(
        "--max-targets-per-namespace",
        type=int,
        default=MAX_TARGETS_PER_NAMESPACE,
        help="GitTargets served per namespace; the newest beyond it get Validated=False"
        " (TargetLimitExceeded); 0 means no cap",
    )
    git.add_argument(
        "--repository-pins",
        default="",
        metavar="PREFIX=NS[,NS...][;...]",
        help="reserve repositories under each URL prefix for the listed namespaces: GitTargets"
        " of any other namespace are refused there, whatever credentials they hold",
    )
    git.add_argument(
        "--drift-interval",
        type=_drift_interval,
        default=DEFAULT_DRIFT_INTERVAL_S,
        help="seconds between two comparisons of an idle target's folder on the remote with"
        " what it writes (spec.drift.mode; a reconcile request checks at once;"
        f" default {DEFAULT_DRIFT_INTERVAL_S:.0f}, at least {MIN_DRIFT_INTERVAL_S:g})",
    )
    secrets = run.add_argument_group("secrets")
    secrets.add_argument(
        "--sops-path", default=os.environ.get("REVERSERD_SOPS", "sops"), help="sops binary"
    )
    secrets.add_argument(
        "--age-keygen-path",
        default=os.environ.get("REVERSERD_AGE_KEYGEN", "age-keygen"),
        help="age-keygen binary (derives recipients, generates keys)",
    )
    election = run.add_argument_group("leader election")
    election.add_argument(
        "--leader-elect", action="store_true", help="hold a Lease; only the holder writes"
    )
    election.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE or default)",
    )
    election.add_argument("--leader-election-id", default="reverserd", help="name of the Lease")
    sharding = run.add_argument_group(
        "sharding", "several active replicas, each writing the branches of its bucket Leases"
    )
    sharding.add_argument(
        "--shards",
        type=int,
        default=0,
        help="number of bucket Leases branches hash into (0: one replica writes everything);"
        " the Leases live in --leader-election-namespace, named after --leader-election-id",
    )
    sharding.add_argument(
        "--replica-id",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's stable identity (a StatefulSet pod name: a replica that returns"
        " with its state dir gets its buckets back); default $POD_NAME, else the host name",
    )
    sharding.add_argument(
        "--shard-lease-duration",
        type=int,
        default=LEASE_DURATION_S,
        help="seconds a dead replica's buckets wait before others take them; a replica starts"
        " no push, and stops one under way, at seven fifteenths of it without a renewal",
    )

    attribution = run.add_argument_group(
        "attribution", "who made each change (field managers are always used)"
    )
    attribution.add_argument(
        "--attribution",
        default=os.environ.get("REVERSERD_ATTRIBUTION", ""),
        help="comma-separated sources: audit, admission (default: none)",
    )
    attribution.add_argument(
        "--attribution-grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds a change waits for its audit fact before it is committed unresolved",
    )
    attribution.add_argument(
        "--attribution-email-domain",
        default=DEFAULT_EMAIL_DOMAIN,
        help="domain of author e-mails for users whose name is not an address",
    )
    attribution.add_argument("--webhook-listen", default=":9443", help="HTTPS host:port")
    attribution.add_argument("--webhook-tls-cert", type=Path, help="serving certificate (PEM)")
    attribution.add_argument("--webhook-tls-key", type=Path, help="its private key (PEM)")
    attribution.add_argument(
        "--webhook-client-ca",
        type=Path,
        help="CA of the API server's webhook client certificates (required for audit)",
    )
    attribution.add_argument(
        "--webhook-audit-client-name",
        default=DEFAULT_AUDIT_CLIENT_NAME,
        help="subject (common name or DNS name) /audit requires of the client certificate"
        f" (default {DEFAULT_AUDIT_CLIENT_NAME})",
    )
    attribution.add_argument(
        "--peer-address",
        default=os.environ.get("REVERSERD_PEER_ADDRESS", ""),
        help="sharded mode (or --leader-elect with --peer-secret-file): host:port at which the"
        " other replicas reach this one's webhook port to forward attribution facts, written in"
        " its membership Lease (the leader Lease while it leads) (default"
        " $REVERSERD_PEER_ADDRESS, else $POD_IP with the --webhook-listen port)",
    )
    attribution.add_argument(
        "--peer-secret-file",
        type=Path,
        default=os.environ.get("REVERSERD_PEER_SECRET_FILE") or None,
        help="sharded mode, required with --attribution: file holding the secret (at least"
        f" {MIN_SECRET_BYTES} bytes) every replica of the group shares; forwarded facts are"
        " signed with it and only facts signed with it are stored; with --leader-elect, the"
        " standby forwards the facts it receives to the leader",
    )
    attribution.add_argument(
        "--peer-ca",
        type=Path,
        help="when forwarding facts (see --peer-secret-file): the root certificates trusted"
        " when forwarding to another replica, e.g. the CA of the serving certificate every"
        " replica shares (default: the --webhook-tls-cert file, which must then hold its chain"
        " up to a self-signed root)",
    )
    attribution.add_argument(
        "--peer-server-name",
        default=os.environ.get("REVERSERD_PEER_SERVER_NAME", ""),
        help="when forwarding facts (see --peer-secret-file): the name a replica's certificate"
        " must carry to be sent facts (default: the first DNS name, else IP address, of the"
        " --webhook-tls-cert certificate, which every replica shares; the chart's names the"
        " webhook Service)",
    )
    attribution.add_argument(
        "--webhook-admission-client-name",
        default="",
        help="when set, /admission hears only a client certificate signed by"
        " --webhook-client-ca with this subject (the API server's admission kubeConfigFile)",
    )

    status = commands.add_parser(
        "status",
        help="what / shows, as a table; exit 0 healthy, 1 not healthy, 3 daemon not answering",
    )
    status.add_argument(
        "--url",
        default=os.environ.get("REVERSERD_URL", DEFAULT_STATUS_URL),
        help=f"the daemon's HTTP address (default {DEFAULT_STATUS_URL}, $REVERSERD_URL)",
    )
    status.add_argument(
        "--state-dir",
        type=Path,
        default=_env_path("REVERSERD_STATE_DIR"),
        help="journal read (read-only) when the daemon does not answer",
    )
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.add_argument("--timeout", type=float, default=STATUS_TIMEOUT_S, help="seconds")

    journal = commands.add_parser("journal", help="read the journal (safe while running)")
    journal.add_argument("--state-dir", type=Path, default=_env_path("REVERSERD_STATE_DIR"))
    views = journal.add_subparsers(dest="view", required=True)
    views.add_parser("stats", help="row counts, sequence range and size")
    tail = views.add_parser("tail", help="the newest events")
    tail.add_argument("-n", type=int, default=20, help="how many events")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    views.add_parser("cursors", help="each target's cursor")
    views.add_parser("streams", help="each watch's resume point and seed state")
    show = views.add_parser("show", help="one event with its object")
    show.add_argument("seq", type=int)

    render = commands.add_parser("render", help="print a manifest as reverserd writes it")
    render.add_argument("-f", "--filename", type=Path, required=True)
    render.add_argument("--path", default="", help="target folder (spec.path)")
    environment_defaults(parser, os.environ)
    return parser


def environment_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Take each long flag's default from ``REVERSERD_<FLAG>`` when that variable is set.

    Applied once, after every flag of every command is added, so a flag added later is covered
    without further code. A value is checked as if it came from the command line.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                environment_defaults(command, environ)
            continue
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if not flags or action.dest in ("help", "version"):
            continue
        name = ENV_PREFIX + flags[0][2:].upper().replace("-", "_")
        if action.help is not None:
            action.help += f" [{name}]"
        if name not in environ:
            continue
        raw = environ[name]
        if isinstance(action, argparse._StoreTrueAction):
            word = raw.strip().lower()
            if word not in TRUE_WORDS | FALSE_WORDS:
                parser.error(f"{name}={raw!r}: expected true or false")
            action.default = word in TRUE_WORDS
            continue
        try:
            value = action.type(raw) if callable(action.type) else raw
        except ValueError:
            parser.error(f"{name}={raw!r}: not a valid value for {flags[0]}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{name}={raw!r}: expected one of {', '.join(map(str, action.choices))}")
        action.default = value


def _log_level(text: str) -> str:
    level = text.strip().upper()
    return LOG_LEVEL_ALIASES.get(level, level)


def _drift_interval(text: str) -> float:
    seconds = float(text)
    if not seconds >= MIN_DRIFT_INTERVAL_S:
        raise argparse.ArgumentTypeError(
            f"{text} is below the shortest drift interval, {MIN_DRIFT_INTERVAL_S:g} seconds"
        )
    return seconds


def _env_path(name: str) -> Path:
    return Path(os.environ.get(name, str(DEFAULT_STATE_DIR)))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "run":
        return _run(arguments)
    if arguments.command == "status":
        return _status(arguments)
    if arguments.command == "journal":
        try:
            return asyncio.run(_journal(arguments))
        except FileNotFoundError as error:
            print(f"reverserd: {error}", file=sys.stderr)
            return 1
    return _render(arguments)


def _run(arguments: argparse.Namespace) -> int:
    from reverserd.daemon import Daemon, RunOptions

    limit_arenas()
    logs.configure(arguments.log_format, arguments.log_level)
    try:
        pins = parse_pins(arguments.repository_pins)
    except ValueError as error:
        print(f"reverserd run: --repository-pins: {error}", file=sys.stderr)
        return 2
    if not 0 <= arguments.shards <= MAX_BUCKETS:
        print(f"reverserd run: --shards: expected 0 to {MAX_BUCKETS}", file=sys.stderr)
        return 2
    if not MIN_LEASE_DURATION_S <= arguments.shard_lease_duration <= MAX_LEASE_DURATION_S:
        print(
            "reverserd run: --shard-lease-duration: expected"
            f" {MIN_LEASE_DURATION_S} to {MAX_LEASE_DURATION_S} seconds",
            file=sys.stderr,
        )
        return 2
    options = RunOptions(
        kubeconfig=arguments.kubeconfig,
        context=arguments.context,
        state_dir=arguments.state_dir,
        http_listen=arguments.http_listen,
        git_author_name=arguments.git_author_name,
        git_author_email=arguments.git_author_email,
        sops_path=arguments.sops_path,
        age_keygen_path=arguments.age_keygen_path,
        leader_elect=arguments.leader_elect,
        leader_election_namespace=arguments.leader_election_namespace,
        leader_election_id=arguments.leader_election_id,
        shards=arguments.shards,
        replica_id=arguments.replica_id,
        shard_lease_duration_s=arguments.shard_lease_duration,
        git_timeout_s=arguments.git_timeout,
        allow_local_remotes=arguments.allow_local_remotes,
        repository_pins=pins,
        journal_max_lag_events=arguments.journal_max_lag_events,
        max_targets_per_namespace=arguments.max_targets_per_namespace,
        drift_interval_s=arguments.drift_interval,
        no_status_auth=arguments.no_status_auth,
        status_auth_on_loopback=arguments.status_auth_on_loopback,
        attribution=_attribution_options(arguments),
        log_format=arguments.log_format,
        log_level=arguments.log_level,
    )
    return asyncio.run(Daemon(options).run())


def _status(arguments: argparse.Namespace) -> int:
    from reverserd.web.table import render_table

    picture = _fetch_status(arguments.url, arguments.timeout)
    answered = isinstance(picture, dict)
    if not isinstance(picture, dict):
        try:
            picture = asyncio.run(_journal_status(arguments.state_dir, picture))
        except FileNotFoundError as error:
            print(f"reverserd status: {picture}; {error}", file=sys.stderr)
            return EXIT_UNKNOWN
    if arguments.output == "json":
        print(json.dumps(picture, indent=2))
    else:
        sys.stdout.write(render_table(picture))
    if not answered:
        return EXIT_UNKNOWN
    return EXIT_HEALTHY if picture.get("healthy") else EXIT_UNHEALTHY


def _fetch_status(url: str, timeout: float) -> dict[str, Any] | str:
    """The daemon's /status, or why it could not be read."""
    address = url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            picture: dict[str, Any] = json.loads(response.read())
            return picture
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"no answer from {address}: {reason}"


async def _journal_status(state_dir: Path, why: str) -> dict[str, Any]:
    from reverserd.web.view import journal_picture

    reader = await JournalReader.open(state_dir, read_only=True)
    try:
        return await journal_picture(reader, why)
    finally:
        await reader.close()


def _attribution_options(arguments: argparse.Namespace) -> AttributionOptions:
    from reverserd.daemon import AttributionOptions

    sources = tuple(s.strip() for s in arguments.attribution.split(",") if s.strip())
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise SystemExit(f"reverserd: unknown attribution source {', '.join(unknown)}")
    if sources and (arguments.webhook_tls_cert is None or arguments.webhook_tls_key is None):
        raise SystemExit("reverserd: --attribution needs --webhook-tls-cert and --webhook-tls-key")
    if "audit" in sources and arguments.webhook_client_ca is None:
        raise SystemExit("reverserd: the audit source needs --webhook-client-ca")
    if arguments.webhook_admission_client_name and arguments.webhook_client_ca is None:
        raise SystemExit("reverserd: --webhook-admission-client-name needs --webhook-client-ca")
    if not arguments.webhook_audit_client_name:
        raise SystemExit("reverserd: --webhook-audit-client-name must not be empty")
    if arguments.attribution_grace < 0:
        raise SystemExit("reverserd: --attribution-grace must not be negative")
    peer_address = peer_server_name = ""
    # Sharded, every replica forwards its facts to the others (required); with --leader-elect,
    # the standby forwards to the leader once a peer secret is given.
    forwarding = arguments.shards or (
        arguments.leader_elect and arguments.peer_secret_file is not None
    )
    if sources and forwarding:
        if arguments.peer_secret_file is None:
            raise SystemExit("reverserd: --attribution with --shards needs --peer-secret-file")
        try:
            read_secret(arguments.peer_secret_file)
        except (OSError, ValueError) as error:
            raise SystemExit(f"reverserd: --peer-secret-file: {error}") from None
        peer_address = arguments.peer_address or _own_peer_address(arguments.webhook_listen)
        peer_server_name = arguments.peer_server_name
        if not peer_server_name and arguments.webhook_tls_cert is not None:
            try:
                peer_server_name = peer_server_name_of(arguments.webhook_tls_cert)
            except (OSError, ValueError) as error:
                raise SystemExit(f"reverserd: --peer-server-name: {error}") from None
    return AttributionOptions(
        sources=sources,
        grace_s=arguments.attribution_grace,
        email_domain=arguments.attribution_email_domain,
        listen=arguments.webhook_listen,
        tls_cert=arguments.webhook_tls_cert,
        tls_key=arguments.webhook_tls_key,
        client_ca=arguments.webhook_client_ca,
        audit_client_name=arguments.webhook_audit_client_name,
        admission_client_name=arguments.webhook_admission_client_name or None,
        peer_address=peer_address,
        peer_secret_file=arguments.peer_secret_file if peer_address else None,
        peer_ca=arguments.peer_ca,
        peer_server_name=peer_server_name,
    )


def _own_peer_address(listen: str) -> str:
    """$POD_IP with the webhook port, else the webhook address when it names a host."""
    host, _, port = listen.rpartition(":")
    pod_ip = os.environ.get("POD_IP", "")
    if pod_ip:
        return f"[{pod_ip}]:{port}" if ":" in pod_ip else f"{pod_ip}:{port}"
    if host.strip("[]") not in ("", "0.0.0.0", "::"):
        return listen
    raise SystemExit(
        "reverserd: forwarding attribution facts (--shards, or --leader-elect with"
        " --peer-secret-file) needs --peer-address (or $POD_IP): where the other replicas reach"
        " this one's webhook port"
    )


def _event_line(event: JournalEvent) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.journaled_at))
    where = "/".join(part for part in (event.namespace, event.name) if part)
    return f"{event.seq:>8}  {when}  {event.kind.value:<10} {event.stream:<40} {where}"


async def _journal(arguments: argparse.Namespace) -> int:
    reader = await JournalReader.open(arguments.state_dir, read_only=True)
    try:
        if arguments.view == "stats":
            print(json.dumps(await reader.stats(), indent=2))
        elif arguments.view == "cursors":
            last = await reader.last_seq()
            for cursor in await reader.cursors():
                print(f"{cursor.target:<40} seq {cursor.seq:>8}  lag {last - cursor.seq}")
        elif arguments.view == "streams":
            for stream in await reader.streams():
                print(
                    f"{stream.stream:<50} {stream.seed_state.value:<9}"
                    f" rv {stream.resource_version}  relists {stream.relists}"
                )
        elif arguments.view == "show":
            event = await reader.event(arguments.seq)
            if event is None:
                print(f"no event {arguments.seq} (compacted or never written)", file=sys.stderr)
                return 1
            print(_event_line(event))
            if event.body is not None:
                print(yaml.safe_dump(event.body, sort_keys=False), end="")
        else:
            last = await reader.last_seq()
            seq = max(0, last - arguments.n)
            while True:
                for event in await reader.events_after(seq, 1000):
                    print(_event_line(event), flush=True)
                    seq = event.seq
                if not arguments.follow:
                    break
                await asyncio.sleep(TAIL_POLL_S)
    finally:
        await reader.close()
    return 0


def _render(arguments: argparse.Namespace) -> int:
    from reverserd.manifest.offline import render_file

    try:
        for path, content in render_file(arguments.filename, arguments.path):
            print(f"# {path}")
            sys.stdout.write(content.decode())
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"reverserd render: {error}", file=sys.stderr)
        return 1
    return 0
