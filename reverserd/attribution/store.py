"""Attribution facts in the journal: written before a webhook answers, kept while needed.

Facts go through the journal's single writer like every other row, so a fact a webhook
acknowledged is durable, and a restart between the fact and its watch event loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from reverserd.attribution.facts import Fact
from reverserd.journal import JournalWriter

FACT_COLUMNS = (
    "source, operation, api_group, resource, namespace, name, uid, resource_version,"
    " prior_resource_version, digest, username, groups, request_uid, received_at"
)
# How much earlier than its event a fact may have been received and still be needed: an
# admission fact precedes its event by the request's duration, which the API server bounds
# far below this.
FACT_LEAD_S = 600.0


async def record_facts(journal: JournalWriter, facts: Sequence[Fact]) -> None:
    rows = [fact.row() for fact in facts]
    if not rows:
        return
    await journal.submit(
        lambda batch: batch.execute_many(
            f"INSERT INTO attribution_facts ({FACT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    )


async def compact_facts(journal: JournalWriter) -> None:
    """Remove facts older than every event some target still has to commit.

    The oldest event after the lowest cursor bounds what may still be attributed; facts received
    :data:`FACT_LEAD_S` before it cannot belong to anything newer.
    """
    await journal.submit(
        lambda batch: batch.execute(
            "DELETE FROM attribution_facts WHERE received_at < COALESCE("
            "(SELECT journaled_at FROM events WHERE seq > (SELECT MIN(seq) FROM cursors)"
            " ORDER BY seq LIMIT 1), ?) - ?",
            (batch.now, FACT_LEAD_S),
        )
    )
