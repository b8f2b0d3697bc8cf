"""What repository a remote URL names, independent of how it is spelled.

Two GitProviders may spell one repository differently: ``https://Git.example.com:443/team/repo``
and ``https://git.example.com/team/repo.git/`` reach the same branches. Every decision that
depends on "is this the same repository" (one writer per repository and branch, folder
conflicts between targets, who may push there with which credentials) compares
:func:`normalize_url`, never the raw text, so a trailing ``/`` cannot slip past a check.

The normal form keeps what selects the repository and drops what does not: the scheme and host
in lower case, the port only when it is not the scheme's default, the path without a trailing
``/`` or ``.git``, and no user name or password (credentials select who pushes, not where).
The path is in lower case too: GitHub, GitLab, Bitbucket and Azure DevOps resolve
``/Team-A/Platform`` and ``/team-a/platform`` to one repository, so two spellings that differ
only in case must meet the same owner and the same writer. On a host whose paths are case
sensitive, two repositories that differ only in case are then treated as one: they can still be
written, from one namespace, which is the safe side of the doubt.
scp-like ``user@host:path`` is the ``ssh`` scheme. A local repository (``file://`` or a plain
path) is its absolute, symlink-resolved directory as a ``file://`` URL.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from reverserd.redaction import SCP_LIKE

# The port each scheme uses when a URL names none: naming it changes nothing.
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ssh": 22}
# The schemes a remote may use; ``ssh+git`` and ``git+ssh`` are spellings of ``ssh``.
SSH_SCHEMES: Final = frozenset({"ssh", "ssh+git", "git+ssh"})
NETWORK_SCHEMES: Final = frozenset({"http", "https", *SSH_SCHEMES})
_GIT_SUFFIX: Final = ".git"


def branch_key(url: str, branch: str) -> str:
    """One repository branch, however its URL is spelled: the unit of writing and of ownership."""
    return f"{normalize_url(url)}#{branch}"


class UnsupportedUrl(ValueError):
    """Not a URL reverserd can push to; the message never contains the URL's password."""


def local_path(url: str) -> Path | None:
    """The directory a ``file://`` URL or a plain path names; None for a network URL."""
    if url.lower().startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedUrl("file:// URLs with a host are not supported")
        return Path(unquote(parts.path))
    if "://" in url:
        return None
    if SCP_LIKE.match(url) is not None and not url.startswith(("/", ".")):
        return None
    return Path(url)


def normalize_url(url: str) -> str:
    """The repository ``url`` names, in one spelling (see the module docstring)."""
    path = local_path(url)
    if path is not None:
        resolved = Path(os.path.realpath(path))
        return "file://" + _strip_repository_suffix(resolved.as_posix())
    if "://" not in url:
        scp = SCP_LIKE.match(url)
        if scp is None:
            raise UnsupportedUrl("not a URL or scp-like address")
        host = scp.group("host").lower()
        repository = scp.group("path")
        return f"ssh://{host}/{_strip_repository_suffix(repository.lstrip('/'))}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsupportedUrl("malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme in SSH_SCHEMES:
        scheme = "ssh"
    if scheme not in NETWORK_SCHEMES:
        raise UnsupportedUrl(f"unsupported URL scheme {scheme!r}")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsupportedUrl("URL without a host")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    repository = _strip_repository_suffix(re.sub("/{2,}", "/", parts.path))
    return f"{scheme}://{netloc}{repository}"


def _strip_repository_suffix(path: str) -> str:
    path = path.lower().rstrip("/")
    if path.endswith(_GIT_SUFFIX):
        path = path[: -len(_GIT_SUFFIX)].rstrip("/")
    return path


# Names that always mean this machine (RFC 6761 reserves ``localhost`` and its subdomains).
_LOCALHOST_NAMES: Final = ("localhost", "localhost.localdomain")


def is_internal_host(host: str) -> bool:
    """Whether ``host`` names this machine or its link (loopback, link-local, unspecified),
    in any spelling an IP stack reads: ``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``[::1]``,
    ``::ffff:127.0.0.1``, ``localhost``. A DNS name that resolves there is not detected: that
    is the network's egress policy to stop."""
    name = host.strip("[]").rstrip(".").lower()
    if name in _LOCALHOST_NAMES or name.endswith(".localhost"):
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(name)
    except ValueError:
        try:
            # The legacy forms inet_aton (and so getaddrinfo) accepts: 127.1, 2130706433, 0x7f.1
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_link_local or address.is_unspecified
