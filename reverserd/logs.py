"""Logging set-up: JSON lines with stable keys by default, plain text for humans.

JSON keys: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, plus any ``extra``
fields a call site adds, and ``error`` with the exception text when there is one. A warning
that repeats goes through a :class:`Throttle`, so a failure loop never floods the log.

Every URL in a line has its password masked (SPEC 2.1), whatever the call site passed in: a
message, an extra field or an exception raised deep in a library.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Hashable
from typing import Any

from reverserd.redaction import redact

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = redact(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(log_format: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The client library logs every request at DEBUG and some at INFO; keep operators' logs ours.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The SSH push's library logs every connection and authentication at INFO, once per push.
    logging.getLogger("paramiko").setLevel(logging.WARNING)


class Throttle:
    """Lets a repeated warning through at most once per ``interval_s`` for each key.

    A loop that fails the same way (a Secret that cannot be encrypted, a remote that is down)
    must not flood the log; the line that does go out says how many were held back since the
    previous one, so nothing is hidden. At most ``max_keys`` keys are remembered; the oldest are
    forgotten first, which at worst lets one of their warnings through early.
    """

    def __init__(self, interval_s: float, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        """None when the warning for ``key`` is held back, else how many were held back."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last.pop(key, None)
        if len(self._last) >= self.max_keys:
            del self._last[next(iter(self._last))]
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]
