"""A Kubernetes user as a Git author: a readable name and a stable e-mail address.

The same user always gets the same signature, so ``git shortlog`` and ``git log --author``
group a person's or a controller's changes. Service accounts
(``system:serviceaccount:<namespace>:<name>``) read as ``<namespace>/<name> (service account)``;
a user name that already is an e-mail address (common with OIDC) is used as the address; anything
else gets an address under the configured domain.
"""

from __future__ import annotations

import re

import pygit2

from reverserd.journal.origin import printable

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
# Address domain for users that have none; `.invalid` can never be a real mailbox (RFC 2606).
DEFAULT_EMAIL_DOMAIN = "kubernetes.invalid"
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def _local_part(text: str) -> str:
    return _UNSAFE.sub("-", text.lower()).strip("-.") or "user"


def author_of(username: str, domain: str = DEFAULT_EMAIL_DOMAIN) -> tuple[str, str]:
    """(name, e-mail) for a Kubernetes user name."""
    clean = printable(username).replace("<", "").replace(">", "").strip() or "unknown"
    if clean.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, _, name = clean[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        if namespace and name:
            email = f"{_local_part(name)}.{_local_part(namespace)}.serviceaccount@{domain}"
            return f"{namespace}/{name} (service account)", email
    if _EMAIL.match(clean):
        return clean, clean
    return clean, f"{_local_part(clean)}@{domain}"


def signature_of(username: str, domain: str = DEFAULT_EMAIL_DOMAIN) -> pygit2.Signature:
    name, email = author_of(username, domain)
    return pygit2.Signature(name, email)
