"""Watchers: the API server's changes into the journal, one watch per resource type and scope.

:mod:`.manager` decides which streams exist from the rules and discovery; :mod:`.watcher` runs
one stream (resume, seed, follow, re-seed on 410). The protocol itself is in
:mod:`reverserd.kube.watching`.
"""
