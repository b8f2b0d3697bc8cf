-- Objects a target cannot write (a name Git or the layout cannot hold, a render error, a path
-- where a human put a file that must be a folder). Written in the same transaction as the
-- target's cursor, so the cursor never passes an object without a record of why it is missing;
-- a row goes when the object is written or deleted.
CREATE TABLE quarantine (
    target           TEXT    NOT NULL,
    api_group        TEXT    NOT NULL,
    resource         TEXT    NOT NULL,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    since            REAL    NOT NULL,
    PRIMARY KEY (target, api_group, resource, namespace, name)
) WITHOUT ROWID;
