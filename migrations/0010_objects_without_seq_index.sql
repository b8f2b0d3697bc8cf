-- Every event the journal writes updates the objects row of its object (0008's triggers), and
-- with it this index: a deletion and an insertion per UPDATE. Its one reader was compaction,
-- which now asks whether the objects row of the event's own object points at it, by the
-- objects key that every event carries (see JournalWriter.compact).

DROP INDEX objects_by_seq;
