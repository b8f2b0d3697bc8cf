"""What the push makes of a server's answers, hostile ones included (the receive-pack
conversation of ``pack_protocol``, and smart HTTP's advertisement around it).

The exchange with a real ``git http-backend`` is tested in
``tests/integration/test_pack_push.py``; here the advertisement and the push report are fed as
bytes, as a broken or hostile server could send them: each must end in one of the module's own
errors (so the push fails as an unreachable remote, is refused, or falls back to libgit2),
never in another exception.
"""

from __future__ import annotations

import pytest

from reverserd.git import GitCredentials, pack_protocol, smart_http
from reverserd.git.pack_protocol import Refused, Unreachable, Unsupported

TIP = "1" * 40


def pkt(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b"%04x" % (len(data) + 4) + data


SERVICE = pkt("# service=git-receive-pack\n") + b"0000"


def test_an_advertisement_gives_the_refs_and_capabilities() -> None:
    body = (
        SERVICE
        + pkt(f"{TIP} refs/heads/main\0report-status side-band-64k ofs-delta quiet\n")
        + pkt(f"{'2' * 40} refs/heads/other\n")
        + pkt(f"shallow {'3' * 40}\n")
        + b"0000"
    )

    advertised = smart_http._advertisement(body)

    assert advertised.refs == {
        "refs/heads/main": bytes.fromhex(TIP),
        "refs/heads/other": bytes.fromhex("2" * 40),
    }
    assert {"report-status", "ofs-delta", "side-band-64k"} <= advertised.capabilities


def test_an_empty_repository_advertises_no_ref() -> None:
    body = SERVICE + pkt(f"{'0' * 40} capabilities^{{}}\0report-status ofs-delta\n") + b"0000"
    assert smart_http._advertisement(body).refs == {}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not a pkt-line at all", Unreachable),
        (pkt("# service=git-upload-pack\n") + b"0000", Unsupported),
        (SERVICE + b"zzzz", Unreachable),
        (SERVICE + b"0003", Unreachable),
        (SERVICE + b"00ff" + b"short", Unreachable),
        (SERVICE + pkt(f"{'g' * 40} refs/heads/main\0report-status\n"), Unreachable),
        (SERVICE + pkt(f"{TIP}\n"), Unreachable),
        (SERVICE + pkt("ERR access denied\n"), Unreachable),
    ],
)
def test_a_malformed_advertisement_is_one_of_the_module_errors(
    body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        smart_http._advertisement(body)


def _report(*lines: str, band: bool = True) -> bytes:
    inner = b"".join(pkt(line + "\n") for line in lines) + b"0000"
    if not band:
        return inner
    return pkt(b"\2" + b"remote: resolving deltas\n") + pkt(b"\1" + inner) + b"0000"


def test_a_report_of_the_ref_updated_passes() -> None:
    lines = pack_protocol.report_lines(_report("unpack ok", "ok refs/heads/main"), True)
    pack_protocol.check_report(lines, "refs/heads/main")
    plain = pack_protocol.report_lines(
        _report("unpack ok", "ok refs/heads/main", band=False), False
    )
    pack_protocol.check_report(plain, "refs/heads/main")


@pytest.mark.parametrize(
    ("lines", "reason", "short"),
    [
        (("unpack ok", "ng refs/heads/main pre-receive hook declined"), "hook declined", False),
        (("unpack ok", "ng refs/heads/main missing necessary objects"), "missing", True),
        (("unpack index-pack abnormal exit", "ng refs/heads/main unpacker error"), "unpack", True),
        (("unpack ok", "ng refs/heads/main fetch first"), "fetch first", False),
    ],
)
def test_a_refusal_in_the_report_says_why_and_whether_the_pack_was_short(
    lines: tuple[str, ...], reason: str, short: bool
) -> None:
    with pytest.raises(Refused, match=reason) as refused:
        pack_protocol.check_report(
            pack_protocol.report_lines(_report(*lines), True), "refs/heads/main"
        )
    assert refused.value.short is short


@pytest.mark.parametrize(
    "body",
    [
        pkt(b"\3fatal: the remote end hung up\n") + b"0000",
        pkt(b"") + b"0000",
        pkt(b"\7what") + b"0000",
        _report("ok refs/heads/main"),
        _report("unpack ok", "ok refs/heads/other"),
        b"",
    ],
)
def test_a_broken_report_is_unreachable(body: bytes) -> None:
    with pytest.raises(Unreachable):
        pack_protocol.check_report(pack_protocol.report_lines(body, True), "refs/heads/main")


def test_a_url_http_cannot_request_fails_without_quoting_its_token() -> None:
    url = "http://127.0.0.1:1/repo.git?private_token=s3cret\x01"
    with pytest.raises(Unreachable) as caught:
        smart_http.push(
            url,
            GitCredentials(),
            "refs/heads/main",
            bytes(20),
            lambda _: pack_protocol.ZERO_ID,
            lambda: (0, iter(())),
            None,
        )
    assert "s3cret" not in str(caught.value)
