"""reverserd: mirror live Kubernetes objects into Git, journal first.

Every watch event lands in a SQLite journal before anything else happens; each GitTarget reads
the journal from its own cursor, and a cursor moves only after Git has the change.
"""

__version__ = "0.1.0"
