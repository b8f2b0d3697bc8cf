"""Secrets out of text: every URL's password (and an HTTP user name, often a token) and every
credential value replaced by ``***`` (SPEC 2.1).

Every log line and every message a user sees passes through here, so this module imports
nothing but the standard library: a process that only logs (the webhook process) must not load
libgit2 to mask a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

HTTP_SCHEMES = frozenset({"http", "https"})
# ``[user@]host:path``: Git's scp-like address, the ``ssh`` scheme without ``://``.
SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]/]+\]|[^:/\[\]]+):(?P<path>.*)$")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# ``user:password@host:path`` in free text: an scp-like address with a password. Not after
# ``/`` (the userinfo of a URL, masked by mask_url already).
_SCP_CREDENTIALS_IN_TEXT = re.compile(
    r"(?<![\w/.:@-])(?P<user>[\w.+-]+):(?!\*\*\*@)[^\s@/'\"<>]+@(?=[\w.\[\]-]+:)"
)


class HoldsSecrets(Protocol):
    """Credentials whose every secret value :func:`redact` replaces."""

    def secrets(self) -> Iterable[str]: ...


def mask_url(url: str) -> str:
    """``url`` with any password (and an HTTP user name, often a token) replaced by ``***``."""
    if "://" not in url:
        scp = SCP_LIKE.match(url)
        if scp is not None and scp.group("user") and ":" in scp.group("user"):
            user = scp.group("user").split(":", 1)[0]
            return f"{user}:{MASK}@{url[scp.end('user') + 1 :]}"
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.query or parts.fragment:
        # A token in a query string (?private_token=…) is as secret as a password.
        query = "&".join(
            f"{pair.partition('=')[0]}={MASK}" if "=" in pair else MASK
            for pair in parts.query.split("&")
            if pair
        )
        parts = parts._replace(query=query, fragment=MASK if parts.fragment else "")
    if "@" not in parts.netloc:
        return urlunsplit(parts)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if has_password:
        masked = f"{user}:{MASK}"
    elif parts.scheme.lower() in HTTP_SCHEMES:
        masked = MASK
    else:
        masked = user
    return urlunsplit(parts._replace(netloc=f"{masked}@{hostport}"))


def redact(text: str, credentials: HoldsSecrets | None = None) -> str:
    """``text`` with URLs masked and every secret of ``credentials`` replaced by ``***``."""
    text = _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)
    text = _SCP_CREDENTIALS_IN_TEXT.sub(lambda match: f"{match.group('user')}:{MASK}@", text)
    if credentials is not None:
        for secret in credentials.secrets():
            text = text.replace(secret, MASK)
    return text
