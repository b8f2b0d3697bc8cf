"""Who may read the status port: Kubernetes decides, as it does for any operator's metrics.

``/status``, ``/`` and ``/metrics`` show every tenant's repository URLs, branches, folders,
object and Secret names and remote error text, so by default (DESIGN invariant 9, SPEC 9) each
request must carry ``Authorization: Bearer <token>``, and the API server is asked twice, the
way controller-runtime's secure metrics and kube-rbac-proxy do:

1. a **TokenReview** says who the token belongs to (no token, or one the API server does not
   accept: ``401``);
2. a **SubjectAccessReview** asks whether that user may ``get`` the request's path as a
   non-resource URL (``/metrics``, ``/status`` or ``/``): granted by a ClusterRole rule
   ``nonResourceURLs: ["/metrics"], verbs: ["get"]`` (the chart ships one for Prometheus and
   one for status readers). Refused: ``403``, with no detail of what the page holds.

``/healthz`` and ``/readyz`` stay open: the kubelet probes them without a token, and they show
nothing of any tenant. When the API server cannot be asked, the answer is ``503`` and nothing
is shown. Decisions are cached for :data:`DECISION_CACHE_S` per token and path (keyed by the
token's SHA-256, never the token itself), so a scrape every few seconds costs the API server
two requests a minute, and a revoked token or binding stops working within that time.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Final

import aiohttp

from reverserd.kube.client import KubeClient, KubeError

log = logging.getLogger(__name__)

# The paths that show tenants' details; everything else on the port is open.
PROTECTED_PATHS: Final = frozenset({"/metrics", "/status", "/"})
# How long a decision is reused: short enough that revoking a binding takes effect quickly,
# long enough that Prometheus scraping every 15 s costs the API server little.
DECISION_CACHE_S = 30.0
# Decisions kept at most: a flood of made-up tokens evicts old entries instead of growing memory.
DECISION_CACHE_SIZE = 1024
# A bearer token longer than this is refused without asking the API server (service account
# tokens are about 1 KB; OIDC tokens a few KB).
MAX_TOKEN_BYTES = 16 * 1024

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

ALLOWED, UNAUTHENTICATED, FORBIDDEN, UNVERIFIABLE = 200, 401, 403, 503


class KubeAccess:
    """Answers whether a bearer token may read a path, by asking the API server."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._decisions: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    async def decide(self, token: str, path: str) -> int:
        """:data:`ALLOWED`, :data:`UNAUTHENTICATED`, :data:`FORBIDDEN` or :data:`UNVERIFIABLE`."""
        if not token or len(token.encode()) > MAX_TOKEN_BYTES:
            return UNAUTHENTICATED
        key = (hashlib.sha256(token.encode()).hexdigest(), path)
        cached = self._decisions.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        try:
            decision = await self._ask(token, path)
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("cannot verify a status reader with the API server: %s", error)
            return UNVERIFIABLE
        self._decisions[key] = (time.monotonic() + DECISION_CACHE_S, decision)
        self._decisions.move_to_end(key)
        while len(self._decisions) > DECISION_CACHE_SIZE:
            self._decisions.popitem(last=False)
        return decision

    async def _ask(self, token: str, path: str) -> int:
        review = await self.client.send(
            "POST",
            TOKEN_REVIEWS,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status: dict[str, Any] = review.get("status") or {}
        if not status.get("authenticated"):
            return UNAUTHENTICATED
        user: dict[str, Any] = status.get("user") or {}
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": user.get("groups") or [],
            "nonResourceAttributes": {"path": path, "verb": "get"},
        }
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        access = await self.client.send(
            "POST",
            ACCESS_REVIEWS,
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        allowed = bool((access.get("status") or {}).get("allowed"))
        return ALLOWED if allowed else FORBIDDEN
