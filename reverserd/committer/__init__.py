"""The committer: one per repository URL and branch; local commits, pushes, cursor moves.

See :mod:`.committer` for the guarantees, and :mod:`.credentials` for how a GitProvider's Secret
becomes Git credentials.
"""
