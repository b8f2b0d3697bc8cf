"""Git infrastructure: bare clones, plumbing commits, compare-and-swap pushes, credentials.

This package is the lowest layer under the committer. It knows nothing of Kubernetes, the
journal or GitTargets: callers hand it file changes and credentials, it hands back commit SHAs
and typed errors (:class:`PushRejected`, :class:`PushDeclined`, :class:`RemoteUnavailable`)
whose messages are safe to show. It upholds the Git side of DESIGN invariants 1 and 7 (a SHA is
reported as pushed only after the server accepted it) and SPEC 2.1 (SSH host keys are verified,
and no credential reaches a log or a status).

- :mod:`reverserd.git.repository`: :class:`BranchRepository`, one branch of one remote in a bare
  clone, used from a dedicated worker thread.
- :mod:`reverserd.git.smart_http`: the push over smart HTTP(S) that sends the packs the clone
  already wrote, with a compare-and-swap command.
- :mod:`reverserd.git.credentials`: :class:`GitCredentials`, the pygit2 callbacks that
  authenticate and verify SSH host keys, and URL masking.
- :mod:`reverserd.git.known_hosts`: OpenSSH known_hosts parsing and matching.
- :mod:`reverserd.git.signing`: :class:`CommitSigner`, SSH signatures of commits.
- :mod:`reverserd.git.openpgp`: OpenPGP signatures of commits from an armored private key.
"""

from typing import TYPE_CHECKING, Any

from reverserd.git.credentials import (
    AuthenticationRejected,
    CredentialsError,
    GitCredentials,
    build_callbacks,
)
from reverserd.git.known_hosts import HostKeyError, KnownHostsError
from reverserd.git.repository import (
    BranchRepository,
    CloneDamaged,
    FileChange,
    PushDeclined,
    PushRejected,
    RemoteError,
    RemoteUnavailable,
    RepositoryError,
    StoredBlob,
    configure_network_timeouts,
    prove_push_access,
    stores_its_remote,
)
from reverserd.redaction import mask_url, redact

if TYPE_CHECKING:
    from reverserd.git.signing import CommitSigner, SigningKeyError


def __getattr__(name: str) -> Any:
    # The signing names come from reverserd.git.signing only when first used: it imports the
    # cryptography package (about 9 MB of RSS), which a daemon that signs no commit and
    # decrypts nothing never needs.
    if name in ("CommitSigner", "SigningKeyError"):
        from reverserd.git import signing

        return getattr(signing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuthenticationRejected",
    "BranchRepository",
    "CloneDamaged",
    "CommitSigner",
    "CredentialsError",
    "FileChange",
    "GitCredentials",
    "HostKeyError",
    "KnownHostsError",
    "PushDeclined",
    "PushRejected",
    "RemoteError",
    "RemoteUnavailable",
    "RepositoryError",
    "SigningKeyError",
    "StoredBlob",
    "build_callbacks",
    "configure_network_timeouts",
    "mask_url",
    "prove_push_access",
    "redact",
    "stores_its_remote",
]
