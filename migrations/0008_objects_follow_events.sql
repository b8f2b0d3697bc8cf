-- The objects table follows the events: the statement that inserts an event also keeps the
-- row of its object (see reverserd/journal/writer.py), so the writer binds no objects rows.
--
-- CREATE, UPDATE   the object's row now points at this event (its uid, resourceVersion,
--                  preferred version and stream)
-- DELETE           the object has no row any more
-- SEED_BEGIN/END   markers of no object: nothing

CREATE TRIGGER objects_follow_writes AFTER INSERT ON events
WHEN new.kind IN ('CREATE', 'UPDATE')
BEGIN
    INSERT INTO objects (api_group, resource, namespace, name, api_version, uid,
                         resource_version, stream, seq)
    VALUES (new.api_group, new.resource, new.namespace, new.name, new.api_version, new.uid,
            new.resource_version, new.stream, new.seq)
    ON CONFLICT (api_group, resource, namespace, name) DO UPDATE SET
        api_version = excluded.api_version,
        uid = excluded.uid,
        resource_version = excluded.resource_version,
        stream = excluded.stream,
        seq = excluded.seq;
END;

CREATE TRIGGER objects_follow_deletes AFTER INSERT ON events
WHEN new.kind = 'DELETE'
BEGIN
    DELETE FROM objects
    WHERE api_group = new.api_group AND resource = new.resource
      AND namespace = new.namespace AND name = new.name;
END;
