"""Values as people read them: durations, sizes, times and "never", never Python's ``None``.

The page and the ``reverserd status`` table format every value here, so both say the same thing
in the same words. Every function takes what ``/status`` holds (numbers, RFC 3339 strings, None)
and returns plain text; escaping for HTML is the page's job.
"""

from __future__ import annotations

from datetime import UTC, datetime

NEVER = "never"
NONE = "none"
# Units of a duration, largest first; a duration shows its two largest non-zero units.
_UNITS = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))
_SIZES = ("B", "KiB", "MiB", "GiB", "TiB")


def parse_time(text: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time as ``/status`` writes it; None for None or garbage."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """``0 s``, ``45 s``, ``3 min 12 s``, ``2 h 5 min``, ``3 d 4 h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    parts: list[str] = []
    for name, size in _UNITS:
        count, whole = divmod(whole, size)
        if count or parts:
            parts.append(f"{count} {name}")
        if len(parts) == 2:
            break
    return " ".join(part for part in parts if not part.startswith("0 ")) or "0 s"


def ago(text: str | None, now: float) -> str:
    """``3 min ago``, ``just now`` or ``never``."""
    at = parse_time(text)
    if at is None:
        return NEVER
    if now - at < 1:
        return "just now"
    return f"{duration(now - at)} ago"


def absolute(text: str | None) -> str:
    """``2026-12-01 10:52:03 UTC`` or ``never``."""
    at = parse_time(text)
    if at is None:
        return NEVER
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(count: int | None) -> str:
    """``512 B``, ``1.5 MiB``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in _SIZES:
        if value < 1024 or unit == _SIZES[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def number(value: int | None) -> str:
    """``12,345``; ``-`` when unknown."""
    return "-" if value is None else f"{value:,}"


def events(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,} event" + ("" if value == 1 else "s")


def short_sha(sha: str | None) -> str:
    return sha[:7] if sha else NEVER


def text(value: str | None, empty: str = NONE) -> str:
    return value if value else empty
