"""Target consumers: each GitTarget reads the journal from its own cursor and plans file changes.

:mod:`.planning` turns journal entries into file changes (pure), :mod:`.consumer` runs one
target, :mod:`.manager` starts and stops consumers and the committers they share as the
configuration changes.
"""
