-- Every event the journal writes inserted an entry into this index, a fifth or so of SQLite's
-- work per event. Its one reader was the attribution resolver's question whether an object
-- changed after a given event, which the objects row of the object now answers: it points at
-- the object's newest CREATE or UPDATE, and a DELETE removes it (see Resolver._changed_since).

DROP INDEX events_by_object;
