"""The ``reverserd`` command line as an operator switching from gitops-reverser types it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from reverserd.cli import ENV_PREFIX, _attribution_options, _drift_interval, build_parser
from reverserd.kube.client import kubeconfig_path
from reverserd.targets.drift import MIN_DRIFT_INTERVAL_S
from testbed.controlplane import make_pki


def run_parser() -> argparse.ArgumentParser:
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    parser: argparse.ArgumentParser = commands.choices["run"]
    return parser


def long_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if any(flag.startswith("--") for flag in action.option_strings)
        and action.dest not in ("help", "version")
    ]


@pytest.mark.parametrize(
    ("given", "level"),
    [("debug", "DEBUG"), ("Info", "INFO"), ("warn", "WARNING"), ("ERROR", "ERROR")],
)
def test_log_level_is_case_insensitive(given: str, level: str) -> None:
    assert build_parser().parse_args(["run", "--log-level", given]).log_level == level


def test_unknown_log_level_is_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--log-level", "verbose"])


@pytest.mark.parametrize("given", ["0", "-5", "0.5", "nan"])
def test_a_drift_interval_below_the_shortest_is_refused_with_the_bound(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--drift-interval", given])
    error = capsys.readouterr().err
    assert "--drift-interval" in error
    assert f"below the shortest drift interval, {MIN_DRIFT_INTERVAL_S:g} seconds" in error


def test_the_shortest_drift_interval_is_accepted() -> None:
    given = str(MIN_DRIFT_INTERVAL_S)
    assert (
        build_parser().parse_args(["run", "--drift-interval", given]).drift_interval
        == MIN_DRIFT_INTERVAL_S
    )


# Flags that take seconds: plain floats, and intervals with a lower bound.
FLOAT_TYPES = (float, _drift_interval)


def sample_value(action: argparse.Action) -> tuple[str, object]:
    """A value for the flag's variable that differs from its default, and what it parses to."""
    if isinstance(action, argparse._StoreTrueAction):
        return "true", True
    if action.choices is not None:
        choice = next(choice for choice in action.choices if choice != action.default)
        return str(choice).lower(), choice
    if action.type is Path:
        return "/srv/from-env", Path("/srv/from-env")
    if action.type is int:
        return "7", 7
    if action.type in FLOAT_TYPES:
        return "7.5", 7.5
    return "from-env", "from-env"


def test_every_flag_of_every_command_is_settable_by_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flags = long_flags(run_parser())
    assert len(flags) >= 10
    for action in flags:
        name = ENV_PREFIX + action.option_strings[0][2:].upper().replace("-", "_")
        raw, expected = sample_value(action)
        monkeypatch.setenv(name, raw)
        parsed = vars(build_parser().parse_args(["run"]))
        assert parsed[action.dest] == expected, name
        # The command line still wins over the variable.
        if not isinstance(action, argparse._StoreTrueAction) and action.choices is None:
            given = "9.25" if action.type in (int, *FLOAT_TYPES) else "cli"
            given = "9" if action.type is int else given
            parsed = vars(build_parser().parse_args(["run", action.option_strings[0], given]))
            assert str(parsed[action.dest]) == given, name
        monkeypatch.delenv(name)


def test_state_dir_variable_reaches_the_journal_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVERSERD_STATE_DIR", "/srv/state")
    arguments = build_parser().parse_args(["journal", "stats"])
    assert arguments.state_dir == Path("/srv/state")


@pytest.mark.parametrize(
    ("name", "value"),
    [("REVERSERD_LOG_FORMAT", "yaml"), ("REVERSERD_LEADER_ELECT", "maybe")],
)
def test_invalid_environment_value_is_refused_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        build_parser()
    assert name in capsys.readouterr().err


def test_run_help_groups_the_flags_and_names_their_variables() -> None:
    parser = run_parser()
    titles = [group.title for group in parser._action_groups]
    for title in ("cluster", "state and HTTP", "logging", "git", "secrets", "leader election"):
        assert title in titles
    text = parser.format_help()
    for action in long_flags(parser):
        name = ENV_PREFIX + action.option_strings[0][2:].upper().replace("-", "_")
        assert name in text, name


def test_kubeconfig_precedence_flag_then_env_then_in_cluster_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("{}")
    token = tmp_path / "token"
    token.write_text("t")
    flag = tmp_path / "flag.kubeconfig"
    from_env = tmp_path / "env.kubeconfig"
    in_cluster = {"HOME": str(home), "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    everything = {**in_cluster, "KUBECONFIG": f"{from_env}:{tmp_path / 'second'}"}

    assert kubeconfig_path(flag, everything, token) == flag
    assert kubeconfig_path(None, everything, token) == from_env
    assert kubeconfig_path(None, in_cluster, token) is None
    assert kubeconfig_path(None, in_cluster, tmp_path / "no-token") == home / ".kube" / "config"
    assert kubeconfig_path(None, {"HOME": str(home), "KUBECONFIG": ""}, token) == (
        home / ".kube" / "config"
    )
    assert kubeconfig_path(None, {"HOME": str(tmp_path / "nobody")}, token) is None


# Flags of gitops-reverser v0.17's manager binary; reverserd has its own (the migration guide's
# flags table), and refuses these rather than ignoring them.
GITOPS_REVERSER_FLAGS = (
    "--metrics-bind-address=:8080",
    "--health-probe-bind-address=:8081",
    "--metrics-insecure",
    "--webhook-insecure",
    "--audit-insecure",
    "--audit-port=9444",
    "--enable-http2",
    "--zap-log-level=debug",
    "--zap-encoder=console",
    "--zap-devel",
    "--zap-stacktrace-level=error",
)


@pytest.mark.parametrize("flag", GITOPS_REVERSER_FLAGS)
def test_gitops_reverser_flags_are_refused_not_ignored(flag: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", flag])


def sharded_attribution(tmp_path: Path, *more: str) -> argparse.Namespace:
    """``run`` arguments of a sharded replica with attribution, serving the test bed's webhook
    certificate (its names: IP 127.0.0.1, DNS localhost, DNS kubernetes.default.svc)."""
    if not (tmp_path / "webhook.crt").exists():
        make_pki(tmp_path)
    cert = tmp_path / "webhook.crt"
    return build_parser().parse_args(
        [
            "run", "--shards=4", "--attribution=admission", f"--webhook-tls-cert={cert}",
            f"--webhook-tls-key={cert}", "--webhook-listen=:9443", *more,
        ]
    )  # fmt: skip


def test_sharded_attribution_needs_a_peer_secret_of_at_least_32_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    with pytest.raises(SystemExit, match="--peer-secret-file"):
        _attribution_options(sharded_attribution(tmp_path))
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    with pytest.raises(SystemExit, match="at least 32 bytes"):
        _attribution_options(sharded_attribution(tmp_path, f"--peer-secret-file={short}"))
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 32 + b"\n")
    options = _attribution_options(sharded_attribution(tmp_path, f"--peer-secret-file={secret}"))
    assert options.peer_address == "10.1.2.3:9443"
    assert options.peer_secret_file == secret
    # A peer must present a certificate for the first DNS name the shared one carries.
    assert options.peer_server_name == "localhost"
    named = sharded_attribution(
        tmp_path, f"--peer-secret-file={secret}", "--peer-server-name=r.ops.svc"
    )
    assert _attribution_options(named).peer_server_name == "r.ops.svc"


def test_the_peer_address_is_the_pod_ip_else_the_webhook_host_else_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 40)
    flag = f"--peer-secret-file={secret}"
    monkeypatch.setenv("POD_IP", "fd00::7")
    assert (
        _attribution_options(sharded_attribution(tmp_path, flag)).peer_address == "[fd00::7]:9443"
    )
    monkeypatch.delenv("POD_IP")
    with pytest.raises(SystemExit, match="--peer-address"):
        _attribution_options(sharded_attribution(tmp_path, flag))
    given = sharded_attribution(tmp_path, flag, "--webhook-listen=10.0.0.5:9443")
    assert _attribution_options(given).peer_address == "10.0.0.5:9443"
    named = sharded_attribution(tmp_path, flag, "--peer-address=r-0.r.ops.svc:9443")
    assert _attribution_options(named).peer_address == "r-0.r.ops.svc:9443"


def test_under_leader_election_facts_are_forwarded_only_with_a_peer_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standby forwards to the leader once a peer secret is given; without one nothing is
    asked of the peer flags, as before."""
    make_pki(tmp_path)
    cert = tmp_path / "webhook.crt"

    def leader_elected(*more: str) -> argparse.Namespace:
        return build_parser().parse_args(
            [
                "run", "--leader-elect", "--attribution=admission", f"--webhook-tls-cert={cert}",
                f"--webhook-tls-key={cert}", "--webhook-listen=:9443", *more,
            ]
        )  # fmt: skip

    monkeypatch.setenv("POD_IP", "10.1.2.3")
    alone = _attribution_options(leader_elected())
    assert alone.peer_secret_file is None and alone.peer_address == ""
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 40)
    forwarding = _attribution_options(leader_elected(f"--peer-secret-file={secret}"))
    assert forwarding.peer_secret_file == secret
    assert forwarding.peer_address == "10.1.2.3:9443"
    assert forwarding.peer_server_name == "localhost"
