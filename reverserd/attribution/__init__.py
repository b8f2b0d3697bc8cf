"""Attribution: who made each change, so a commit's author is the Kubernetes user behind it.

Three sources feed one resolver (:mod:`reverserd.attribution.resolver`):

- **field managers** (always on): the watch event's own ``managedFields`` name the manager and
  operation of the newest write (:mod:`reverserd.journal.origin`);
- **audit** (self-managed control planes): the API server's audit webhook backend posts the
  requests it served (:mod:`reverserd.attribution.facts`, :mod:`reverserd.attribution.webhooks`);
- **admission** (managed clusters too): a validating webhook that never denies records who asked.

Facts from the webhooks are journaled in the same database as the events before the webhook
answers, so a restart between a fact and its watch event loses nothing. In a sharded group each
replica forwards the facts it received to the others (:mod:`reverserd.attribution.peers`), so
the replica that owns a change has its fact whichever replica the API server called.
"""
