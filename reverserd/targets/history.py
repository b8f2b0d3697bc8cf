"""What a target had pushed before this process started, read back from the branch and journal.

After a restart the GitTarget's ``lastCommit`` and ``lastPushTime``, ``/status`` and the page must
not go blank while the branch holds the target's commits. The target's newest commit among those
this clone made and pushed last time is its last commit (commits anyone else pushed are never
taken for ours, whatever their trailers say); the journal's cursor row records when the target's
pushed position last moved, which is the latest moment that commit was known to be pushed. A
target whose newest commit went out in an earlier push shows none until its next push, which
replaces both with exact values anyway.
"""

from __future__ import annotations

from reverserd.committer.committer import Committer
from reverserd.committer.trailers import newest_per_target
from reverserd.config.status import TargetProgress
from reverserd.journal.reader import CursorRow


async def restore_last_push(
    committer: Committer, cursor: CursorRow | None, target: str, progress: TargetProgress
) -> None:
    """Fill the progress's last commit and push time from the branch and the cursor, if unset."""
    if progress.last_commit is not None or cursor is None:
        return

    def newest_pushed() -> str | None:
        repository = committer.repository
        pending = {sha for sha, _ in repository.pending_commits()}
        pushed = [(sha, text) for sha, text in repository.own_commits() if sha not in pending]
        return newest_per_target(pushed).get(target)

    sha = await committer.on_git_thread(newest_pushed)
    if sha is not None:
        progress.last_commit = sha
        progress.last_push_time = cursor.updated_at
