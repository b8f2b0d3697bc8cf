-- Where each target writes: its repository and branch (the committer's key: the URL in its
-- normal form, without credentials, and the branch), the GitProvider it writes through, and its
-- folder. A target's cursor, written files and quarantine describe this place only: a target
-- that starts at another place (changed while reverserd was stopped, or while the target was not
-- running) has them dropped first and syncs its new place afresh. What it mirrors there (its
-- rules) is recorded per type in the cursor's covered selections.
CREATE TABLE target_places (
    target           TEXT    PRIMARY KEY,  -- '<namespace>/<name>' of the GitTarget
    remote           TEXT    NOT NULL,
    provider         TEXT    NOT NULL,     -- '<namespace>/<name>' of the GitProvider
    path             TEXT    NOT NULL
) WITHOUT ROWID;
