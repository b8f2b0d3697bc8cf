"""Who owns each repository branch: the namespace whose credentials proved they can write it.

Ownership is never first come, first served: a tenant who names another team's repository
with credentials that cannot push must not block or displace that team (DESIGN invariant 9).
A namespace proves write access in one of two ways:

- a push of its committer that carried commits (the server took them), renewed at most every
  :data:`RENEW_EVERY_S`;
- the Git server's push handshake (:func:`~reverserd.git.prove_push_access`), tried for every
  namespace of a :class:`~reverserd.config.plane.Contest`: a branch several namespaces ask for
  while none owns it. The incumbent (an owner whose proof has aged past the grace) is tried
  first, so a quiet owner whose credentials still work keeps its branch.

A proof makes the namespace the owner unless another namespace's ownership is still live
(:meth:`~reverserd.config.status.BranchOwner.live`). The owner is written to the journal before
anyone acts on it, so it survives restarts, the deletion and re-creation of its GitTargets and
short invalid states; :func:`~reverserd.config.plane.resolve` reads it from the board. A
branch changing hands gets a new clone (:func:`~reverserd.committer.committer.clone_dir` is per
owner), so nothing the previous owner committed is pushed with the new owner's credentials.

Why the handshake and not a fetch: every credential that can read can fetch, so a fetch proves
nothing about writing; the handshake is the step servers authorize for pushing, and it writes
nothing. What it cannot prove (a branch protection rule that refuses this one branch) shows up
at the first push, as ``PushRefused`` on the owner's targets.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from reverserd.committer.committer import ProviderProblem
from reverserd.committer.credentials import load_credentials
from reverserd.config.plane import ConfigPlane, Contest
from reverserd.config.status import BranchOwner, StatusBoard, WriteProof
from reverserd.git import CredentialsError, RemoteUnavailable, prove_push_access
from reverserd.journal import JournalWriter
from reverserd.kube.client import KubeClient

log = logging.getLogger(__name__)

# An owner's pushes renew its proof at most this often: one journal row a few minutes, not
# one per push, and far inside the grace of a day.
RENEW_EVERY_S = 600.0
# A contender whose handshake failed (or succeeded without taking the branch) is tried again
# after this long: a fixed token takes effect within a minute, and a squatter's provider costs
# the Git server one request a minute.
RETRY_HANDSHAKE_S = 60.0


class Ownership:
    def __init__(self, client: KubeClient, journal: JournalWriter, board: StatusBoard) -> None:
        self.client = client
        self.journal = journal
        self.board = board

    async def load(self) -> None:
        """Read the recorded owners; before the config plane first decides who writes."""
        owners = await self.journal.branch_owners()
        self.board.owners = {
            branch: BranchOwner(namespace, proven_at)
            for branch, (namespace, proven_at) in owners.items()
        }

    async def proved(self, branch: str, namespace: str) -> bool:
        """``namespace`` just proved it can write ``branch``; True when it owns it now."""
        now = time.time()
        owner = self.board.owners.get(branch)
        if owner is not None and owner.namespace != namespace and owner.live(now):
            return False
        if owner is not None and owner.namespace == namespace:
            if now - owner.proven_at < RENEW_EVERY_S:
                return True
        await self.journal.record_branch_owner(branch, namespace, now)
        self.board.owners[branch] = BranchOwner(namespace, now)
        if owner is None or owner.namespace != namespace:
            log.info("branch owner changed", extra={"remote": branch, "namespace": namespace})
            self.board.notify()
        return True

    async def run(self, plane: ConfigPlane) -> None:
        """Try the handshake for every contender that is due, whenever the contests change."""
        while True:
            seen = plane.version
            for contest in plane.state.contests:
                if self._due(contest):
                    await self._try(contest)
            try:
                await asyncio.wait_for(plane.wait_for_change(seen), RETRY_HANDSHAKE_S)
            except TimeoutError:
                pass

    def _due(self, contest: Contest) -> bool:
        proof = self.board.proofs.get((contest.branch, contest.namespace))
        return proof is None or time.time() - proof.at >= RETRY_HANDSHAKE_S

    async def _try(self, contest: Contest) -> None:
        provider = contest.provider
        try:
            credentials = await load_credentials(self.client, provider)
            await asyncio.to_thread(prove_push_access, provider.url, credentials)
        except (ProviderProblem, RemoteUnavailable, CredentialsError) as error:
            proof = WriteProof(False, str(error), time.time())
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            # The API server did not answer for the Secret: tried again after the retry delay.
            proof = WriteProof(False, str(error), time.time())
        else:
            owns = await self.proved(contest.branch, contest.namespace)
            message = "push handshake accepted" + ("" if owns else "; another namespace owns it")
            proof = WriteProof(True, message, time.time())
        log.info(
            "write access tried",
            extra={"remote": contest.branch, "namespace": contest.namespace, "ok": proof.ok},
        )
        self.board.proofs[(contest.branch, contest.namespace)] = proof
        self.board.notify()
