"""From a live Kubernetes object to the file that holds it in Git.

Pure functions, no I/O: the watchers and the committer call them, and the tests pin them down
byte for byte. Three guarantees hold up the rest of reverserd:

- **Deterministic bytes.** ``render(sanitize(obj))`` depends only on the object's content, so a
  restart or a re-list of unchanged objects writes identical files and makes no commit, and an
  update changes only the lines it touched.
- **Block list.** ``sanitize`` removes only what a named rule says the cluster added (status,
  server-managed metadata, allocated IPs, controller annotations); everything else, including
  fields it has never heard of, is kept as intent.
- **Never identity from a path.** ``object_path`` maps an object to its file one way. Nothing
  here parses a path back into an object, because the layout is ambiguous in that direction
  (DESIGN invariant 3); callers keep their own record of the paths they wrote.
"""

from reverserd.manifest.layout import (
    DEFAULT_EXCLUDED_RESOURCES,
    SENSITIVE_RESOURCES,
    UnsafePath,
    commit_subject_path,
    is_excluded_object,
    object_path,
    validate_target_path,
)
from reverserd.manifest.render import render
from reverserd.manifest.sanitize import sanitize

__all__ = [
    "DEFAULT_EXCLUDED_RESOURCES",
    "SENSITIVE_RESOURCES",
    "UnsafePath",
    "commit_subject_path",
    "is_excluded_object",
    "object_path",
    "render",
    "sanitize",
    "validate_target_path",
]
