-- Who owns each repository branch (see reverserd/targets/ownership.py): the namespace whose
-- credentials last proved they can write it (a push that carried commits, or the server's
-- push handshake). Kept while its GitTargets are deleted, re-created or briefly invalid, so a
-- squatter's older target never inherits the branch.
CREATE TABLE branch_owners (
    branch           TEXT    PRIMARY KEY,  -- '<normalized repository URL>#<branch>'
    namespace        TEXT    NOT NULL,     -- the owning namespace
    proven_at        REAL    NOT NULL      -- unix time of its latest proof of write access
) WITHOUT ROWID;
