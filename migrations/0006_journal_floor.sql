-- The lag bound of compaction (see JournalWriter.compact): a target whose cursor fell more than
-- the bound behind the newest event stops holding events back, and compaction may then remove
-- events up to this seq whatever cursors say. A cursor below it is detached: its target
-- re-syncs from the objects table (a reconcile) instead of replaying events that are gone.
CREATE TABLE journal_floor (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    seq              INTEGER NOT NULL
);
