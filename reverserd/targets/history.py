"""What a target had pushed before this process started, read back from the branch and journal.

After a restart the GitTarget's ``lastCommit`` and ``lastPushTime``, ``/status`` and the page must
not go blank while the branch holds the target's commits. The target's newest commit that is on
the remote (in the clone's branch below what is still pending) is its last commit; the journal's
cursor row records when the target's pushed position last moved, which is the latest moment that
commit was known to be pushed. The first push of this process replaces both with exact values.
"""

from __future__ import annotations

from reverserd.committer.committer import Committer, newest_per_target
from reverserd.config.status import TargetProgress
from reverserd.journal.reader import CursorRow

# How far back on the branch the target's newest pushed commit is looked for: far more than a
# busy shared branch gains between two commits of one target. Beyond it, status shows no commit
# until the target's next push.
SCAN_COMMITS = 5_000


async def restore_last_push(
    committer: Committer, cursor: CursorRow | None, target: str, progress: TargetProgress
) -> None:
    """Fill the progress's last commit and push time from the branch and the cursor, if unset."""
    if progress.last_commit is not None or cursor is None:
        return

    def newest_pushed() -> str | None:
        pending = {sha for sha, _ in committer.repository.pending_commits()}
        pushed = [
            (sha, message)
            for sha, message in committer.repository.recent_commits(SCAN_COMMITS)
            if sha not in pending
        ]
        return newest_per_target(pushed).get(target)

    sha = await committer.on_git_thread(newest_pushed)
    if sha is not None:
        progress.last_commit = sha
        progress.last_push_time = cursor.updated_at
