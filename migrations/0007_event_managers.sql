-- The field managers of each change, for GitTargets that leave out changes made by some of them
-- (spec.excludeFieldManagers, a forward GitOps leg such as Flux's kustomize-controller).
--
-- event_origins.managers   JSON list of the manager names of the object's newest managedFields
--                          entries (the write that produced this state; several when they share
--                          the newest second); NULL when unknown (a DELETE, no managedFields, or
--                          an event journaled before this column existed)

ALTER TABLE event_origins ADD COLUMN managers TEXT;
