"""The receive-pack conversation of a push, whichever transport carries it.

Git's ``pack-protocol`` document describes one exchange for pushing over smart HTTP(S) and over
SSH: the server advertises its refs and capabilities, the client sends its update commands and
a pack, and the server reports on each command. Both of reverserd's own push transports
(:mod:`reverserd.git.smart_http`, :mod:`reverserd.git.ssh_push`) speak it through this module,
so what a server's answer means is decided in one place.

Guarantees:

- **One compare-and-swap command.** :func:`update_command` names the old tip the caller's
  ``choose_old`` picked from the advertisement; the server moves the branch only from there.
- **Hostile answers end in this module's errors.** A malformed, oversized or unexpected
  advertisement or report raises :class:`Unreachable` (or :class:`Unsupported` where another
  way to push may work, :class:`Refused` where the server reported a refusal), never another
  exception, and never a message longer than what the server sent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from reverserd.git.credentials import GitCredentials

ZERO_ID = bytes(20)
"""The ID a command names as the old tip of a branch the server does not have."""

MAX_ADVERTISEMENT = 64 * 2**20
"""Largest ref advertisement read: a hosting service's repository with many thousands of refs
fits; a server that sends without end does not hold the daemon's memory."""

MAX_REPORT = 4 * 2**20
"""Largest push report read (the status of one ref, and the server's progress messages)."""

REQUIRED = frozenset({"report-status", "ofs-delta"})
"""Capabilities a server must advertise: the report tells whether the update happened, and the
packs sent hold offset deltas."""

_HEX = frozenset("0123456789abcdef")
_BAND_DATA, _BAND_PROGRESS, _BAND_ERROR = 1, 2, 3
# What receive-pack reports when its connectivity check finds an object missing.
_MISSING_OBJECTS = "missing necessary objects"


class Unreachable(Exception):
    """The push failed before the server reported on it; ``reason`` is secret-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Refused(Exception):
    """The server refused the update; ``reason`` is what it reported. ``short`` is True when
    the pack was: the server could not unpack it, or the branch needs objects it lacks."""

    def __init__(self, reason: str, short: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.short = short


class Unsupported(Exception):
    """This transport does not handle the server; nothing was sent. Push another way."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    refs: dict[str, bytes]
    """Ref name -> 20-byte ID, as the server advertised them."""
    capabilities: frozenset[str]


PackSource = Callable[[], tuple[int, Iterator[bytes]]]
"""Makes the pack to send: its length and its pieces (called again if the body is resent)."""

ChooseOld = Callable[[Advertisement], bytes]
"""Given the advertisement, the ID the command names as the branch's old tip (or raises)."""

PackPush = Callable[
    [str, GitCredentials, str, bytes, ChooseOld, PackSource, Callable[[], None] | None], bool
]
"""A transport's push: ``(url, credentials, ref, new, choose_old, pack, fence)``, True once the
server moved ``ref`` to ``new``, False when it had it already (nothing sent)."""


def update_command(
    advertisement: Advertisement, ref: str, new: bytes, choose_old: ChooseOld
) -> tuple[bytes, bool] | None:
    """The pkt-lines (commands and their flush) moving ``ref`` to ``new``, and whether the
    report comes in side bands; None when the server has ``new`` already (nothing to send).

    Raises :class:`Unsupported` when the server lacks a :data:`REQUIRED` capability, and
    whatever ``choose_old`` raises."""
    missing = REQUIRED - advertisement.capabilities
    if missing:
        raise Unsupported(f"the server lacks {', '.join(sorted(missing))}")
    old = choose_old(advertisement)
    if old == new:
        return None
    requested = ["report-status"]
    requested += [c for c in ("side-band-64k", "quiet") if c in advertisement.capabilities]
    command = f"{old.hex()} {new.hex()} {ref}\0{' '.join(requested)}\n".encode()
    return pkt_line(command) + b"0000", "side-band-64k" in requested


def pkt_line(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


def pkt_lines(data: bytes) -> Iterator[bytes | None]:
    """The pkt-lines of ``data``; None for a flush packet."""
    position = 0
    while position < len(data):
        try:
            length = int(data[position : position + 4], 16)
        except ValueError:
            raise Unreachable("malformed pkt-line from the server") from None
        if length == 0:
            position += 4
            yield None
            continue
        if length < 4 or position + length > len(data):
            raise Unreachable("malformed pkt-line from the server")
        yield data[position + 4 : position + length]
        position += length


def advertised_refs(lines: Iterable[bytes | None]) -> Advertisement:
    """The refs and capabilities of an advertisement's pkt-lines, up to its flush."""
    refs: dict[str, bytes] = {}
    capabilities: frozenset[str] = frozenset()
    for line in lines:
        if line is None:
            break
        if line.startswith(b"ERR "):
            raise Unreachable(line[4:].decode(errors="replace").strip())
        if line.startswith(b"shallow "):
            continue
        text, _, extra = line.rstrip(b"\n").partition(b"\0")
        if extra:
            capabilities = frozenset(extra.decode(errors="replace").split())
        sha, _, name = text.decode(errors="replace").partition(" ")
        if len(sha) != 40 or not name or not all(c in _HEX for c in sha):
            raise Unreachable("malformed ref advertisement from the server")
        if name != "capabilities^{}":
            refs[name] = bytes.fromhex(sha)
    return Advertisement(refs, capabilities)


def report_lines(body: bytes, side_band: bool) -> list[str]:
    """The report-status lines of ``body``, out of side band 1 when side bands were asked."""
    if side_band:
        data = bytearray()
        for packet in pkt_lines(body):
            if packet is None:
                break
            if not packet:
                raise Unreachable("an empty side-band packet from the server")
            band, payload = packet[0], packet[1:]
            if band == _BAND_DATA:
                data += payload
            elif band == _BAND_ERROR:
                raise Unreachable(payload.decode(errors="replace").strip())
            elif band != _BAND_PROGRESS:
                raise Unreachable(f"unknown side band {band} from the server")
        body = bytes(data)
    lines: list[str] = []
    for line in pkt_lines(body):
        if line is None:
            break
        lines.append(line.decode(errors="replace").rstrip("\n"))
    return lines


def check_report(lines: Collection[str], ref: str) -> None:
    """Return if the report says ``ref`` was updated; raise :class:`Refused` or
    :class:`Unreachable` otherwise."""
    statuses = iter(lines)
    unpack = next(statuses, "")
    if not unpack.startswith("unpack "):
        raise Unreachable("the server sent no push report")
    unpack_status = unpack.removeprefix("unpack ")
    for line in statuses:
        verdict, _, rest = line.partition(" ")
        name, _, reason = rest.partition(" ")
        if name != ref:
            continue
        if verdict == "ok" and unpack_status == "ok":
            return
        if unpack_status != "ok":
            raise Refused(f"unpack failed: {unpack_status}", short=True)
        raise Refused(reason or "refused", short=_MISSING_OBJECTS in reason)
    if unpack_status != "ok":
        raise Refused(f"unpack failed: {unpack_status}", short=True)
    raise Unreachable(f"the server's report says nothing of {ref}")
