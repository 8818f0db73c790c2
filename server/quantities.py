"""Durations ("5m", "1h30m", seconds) and memory sizes ("12GiB", "75%", bytes) as settings and requests write them."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
               "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}
NEVER = math.inf
_CENTURY = 100 * 365 * 86400.0


def parse_duration(value: str | float | int) -> float:
    """Seconds for Ollama's `keep_alive`: a number of seconds or "5m", "1h30m", "250ms"; any negative
    value means never (math.inf). ValueError names what is wrong."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '5m'")
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise ValueError("a duration cannot be NaN")
        # Negative, or past a century (no timer holds it): never.
        return NEVER if value < 0 or value > _CENTURY else float(value)
    text = value.strip().lower()
    if text.startswith("-"):
        parse_duration(text[1:] or "x")  # still has to be a duration
        return NEVER
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for found in _DURATION_PART.finditer(text):
        if found.start() != pos:
            break
        total += float(found.group(1)) * _DURATION_UNITS[found.group(2)]
        pos = found.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration: use seconds or a number with ms, s, m, h or d (e.g. '5m')")
    return parse_duration(total)


def parse_size(value: str | int, total: int | None = None, what: str = "memory") -> int:
    """Bytes for a size: a number of bytes, "12GiB", "512MB", or "75%" of `total`."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '12GiB' or '75%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    text = value.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
        if not 0 < share <= 100:
            raise ValueError(f"{value!r}: a percentage must be above 0 and at most 100")
        if total is None:
            raise ValueError(f"{value!r}: the total {what} of this machine is unknown; give a size in bytes")
        return int(total * share / 100)
    found = _SIZE.fullmatch(text)
    if found is None or (found.group(2) or "").lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size: use bytes or a number with KiB, MiB, GiB, TiB (or KB, MB...)")
    return int(float(found.group(1)) * _SIZE_UNITS[(found.group(2) or "").lower()])


def format_size(n: float) -> str:
    """Bytes in the largest binary unit under them: "1.5 GiB"."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def system_memory() -> int | None:
    """The memory this process may use: the machine's RAM, or its cgroup's limit when lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total
