-- The journal: every watch event lands here before anything else happens.
--
-- events   append-only log, numbered by seq; what target consumers tail from their cursor
-- objects  the latest known live state per object; what a new target snapshots from
-- streams  one row per watch (resource type + scope): resume point and seed status
-- cursors  one row per started GitTarget: the last seq that is in Git (pushed)

CREATE TABLE events (
    -- AUTOINCREMENT: a seq is never reused, even after compaction removed the newest rows.
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream           TEXT    NOT NULL,
    kind             TEXT    NOT NULL
                     CHECK (kind IN ('CREATE', 'UPDATE', 'DELETE', 'SEED_BEGIN', 'SEED_END')),
    api_group        TEXT    NOT NULL,
    api_version      TEXT    NOT NULL,
    resource         TEXT    NOT NULL,
    namespace        TEXT    NOT NULL DEFAULT '',  -- '' for cluster-scoped objects and markers
    name             TEXT    NOT NULL DEFAULT '',  -- '' for SEED_BEGIN / SEED_END markers
    uid              TEXT,
    resource_version TEXT,
    username         TEXT,                          -- who made the change, when known
    journaled_at     REAL    NOT NULL,              -- unix seconds
    body             TEXT                           -- the object as JSON (Secrets: metadata only)
);
CREATE INDEX events_by_object ON events (api_group, resource, namespace, name, seq);

CREATE TABLE objects (
    api_group        TEXT    NOT NULL,
    resource         TEXT    NOT NULL,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    api_version      TEXT    NOT NULL,
    uid              TEXT    NOT NULL,
    resource_version TEXT    NOT NULL,
    stream           TEXT    NOT NULL,
    seq              INTEGER NOT NULL,  -- the event holding this state; compaction keeps it
    PRIMARY KEY (api_group, resource, namespace, name)
) WITHOUT ROWID;
-- Compaction keeps every event an objects row points at.
CREATE INDEX objects_by_seq ON objects (seq);

CREATE TABLE streams (
    stream           TEXT    PRIMARY KEY,  -- e.g. 'apps/v1/deployments@team-a' or 'v1/namespaces@*'
    api_group        TEXT    NOT NULL,
    api_version      TEXT    NOT NULL,
    resource         TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    namespaced       INTEGER NOT NULL,
    namespace        TEXT    NOT NULL,     -- '*' = all namespaces (or cluster-scoped)
    resource_version TEXT,                 -- resume point, stored with the events it covers
    seed_state       TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (seed_state IN ('pending', 'seeding', 'complete')),
    seeded_at        REAL,
    relists          INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL
);

CREATE TABLE cursors (
    target           TEXT    PRIMARY KEY,  -- '<namespace>/<name>' of the GitTarget
    seq              INTEGER NOT NULL,     -- every event up to here is in pushed Git history
    covered          TEXT    NOT NULL DEFAULT '{}',  -- JSON: selection -> seq its snapshot reflects
    updated_at       REAL
);

-- What each target wrote: identity comes from here (and file content), never from a path.
CREATE TABLE target_files (
    target           TEXT    NOT NULL,
    api_group        TEXT    NOT NULL,
    resource         TEXT    NOT NULL,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    path             TEXT    NOT NULL,
    content_sha      TEXT    NOT NULL,
    PRIMARY KEY (target, api_group, resource, namespace, name)
) WITHOUT ROWID;
CREATE UNIQUE INDEX target_files_by_path ON target_files (target, path);
