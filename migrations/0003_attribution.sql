-- Attribution: who made each change (see reverserd/attribution).
--
-- event_origins        what the watch event itself says about its origin, taken before the
--                      journal drops managedFields: the newest field manager, the resourceVersion
--                      the object had just before (only when the watch saw every change of it)
--                      and a digest of the full object for exact admission matching
-- attribution_facts    who asked for a change, as the audit or admission webhook reported it;
--                      journaled before the webhook answers, so a restart loses none

CREATE TABLE event_origins (
    seq                    INTEGER PRIMARY KEY,  -- the event in events
    manager                TEXT,                 -- e.g. 'kubectl-client-side-apply (Update)'
    -- '' = the watch saw the object's creation; NULL = unknown (seed, relist, missed events)
    prior_resource_version TEXT,
    digest                 TEXT                  -- sha256 of the object without resourceVersion
);
-- Compaction of events removes their origins with them.
CREATE TRIGGER event_origins_compacted AFTER DELETE ON events
BEGIN
    DELETE FROM event_origins WHERE seq = old.seq;
END;

CREATE TABLE attribution_facts (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    source                 TEXT    NOT NULL CHECK (source IN ('audit', 'admission')),
    operation              TEXT    NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE')),
    api_group              TEXT    NOT NULL,
    resource               TEXT    NOT NULL,
    namespace              TEXT    NOT NULL,
    name                   TEXT    NOT NULL,
    uid                    TEXT,             -- the object's uid when the source tells it
    resource_version       TEXT,             -- audit: the resourceVersion the request produced
    prior_resource_version TEXT,             -- admission: the resourceVersion it changed ('' = new)
    digest                 TEXT,             -- admission: digest of the object it would store
    username               TEXT    NOT NULL,
    groups                 TEXT    NOT NULL DEFAULT '[]',  -- JSON list
    request_uid            TEXT,             -- the API server's id of the request
    received_at            REAL    NOT NULL  -- unix seconds
);
CREATE INDEX attribution_facts_by_object
    ON attribution_facts (api_group, resource, namespace, name, source);
CREATE INDEX attribution_facts_by_time ON attribution_facts (received_at);
