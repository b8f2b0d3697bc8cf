"""Logging set-up: JSON lines with stable keys by default, plain text for humans.

JSON keys: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, plus any ``extra``
fields a call site adds, and ``error`` with the exception text when there is one.

Every URL in a line has its password masked (SPEC 2.1), whatever the call site passed in: a
message, an extra field or an exception raised deep in a library.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from reverserd.git.credentials import redact

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
