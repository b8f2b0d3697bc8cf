-- Facts forwarded between the replicas of a sharded group (see reverserd/attribution/peers.py).
--
-- A replica stores the facts another replica received as if it had received them, with where
-- they came from: origin (that replica's identity) and origin_id (the fact's id in its
-- journal). With the time it was received (a replica that starts with a new journal numbers
-- its facts from 1 again) that is unique, so a forward repeated (a retry whose answer was lost,
-- a replay, a peer resending after a restart) is stored once. Facts received here have neither.

ALTER TABLE attribution_facts ADD COLUMN origin TEXT;
ALTER TABLE attribution_facts ADD COLUMN origin_id INTEGER;
CREATE UNIQUE INDEX attribution_facts_forwarded
    ON attribution_facts (origin, origin_id, received_at) WHERE origin IS NOT NULL;
