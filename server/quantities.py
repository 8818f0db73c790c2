"""Durations ("5m", "1h30m", seconds) and memory sizes ("12GiB", "75%", bytes) as settings and requests write them,
and what this machine has: its memory (for "75%") and its cores (the default thread count)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# Go's time.ParseDuration, which Ollama reads keep_alive with, plus days and bare seconds: one optional sign,
# then a number of seconds or numbers with units ("1h30m"). Nothing else: not "--5m", not "1e3", not "inf".
_DURATION = re.compile(rf"([+-]?)(?:({_NUMBER})|((?:{_NUMBER}(?:ms|s|m|h|d))+))")
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
               "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}
NEVER = math.inf
# The longest finite keep_alive: a century (no timer holds much more); past it, use a negative value.
MAX_DURATION = 100 * 365 * 86400.0
_ACCEPTED = ("use seconds (300), a duration like '5m' or '1h30m' (units ms, s, m, h, d), 0 to unload at once, "
             "or a negative value (-1) to keep it loaded")


def parse_duration(value: str | float | int) -> float:
    """Seconds for Ollama's `keep_alive`: a number of seconds, or a string of seconds or of numbers with units
    ("5m", "1h30m", "250ms"); 0 unloads at once; any negative value (-1, "-5m") means never (math.inf), as in
    Ollama. ValueError, naming the value and what is accepted, for anything else: a second sign ("--5m"),
    "-0" (zero has no sign to mean never: say 0 or -1), NaN or infinities, more than MAX_DURATION."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"keep_alive must be a number or a string: {_ACCEPTED}")
    if isinstance(value, str):
        return _parse_duration_text(value)
    # Compared as they are: a 4000-digit integer has no float (OverflowError), yet is plainly negative or too long.
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"keep_alive cannot be NaN: {_ACCEPTED}")
    if value < 0:
        return NEVER
    return _at_most_a_century(value, _shown(value))


def _parse_duration_text(value: str) -> float:
    text = value.strip().lower()
    shown = _shown(value)
    found = _DURATION.fullmatch(text) if len(text) <= 64 else None
    if found is None:
        raise ValueError(f"{shown} is not a duration: {_ACCEPTED}")
    sign, seconds, parts = found.groups()
    total = float(seconds) if seconds is not None else sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(parts))
    if sign == "-":
        if total == 0:
            raise ValueError(f"{shown}: zero has no sign; use 0 to unload at once, or a negative value (-1) to keep "
                             "it loaded")
        return NEVER
    return _at_most_a_century(total, shown)


def _at_most_a_century(seconds: float | int, shown: str) -> float:
    if seconds > MAX_DURATION:
        raise ValueError(f"{shown} is longer than a century ({MAX_DURATION:.0f} seconds), the longest keep_alive; "
                         "use a negative value (-1) to keep the model loaded")
    return float(seconds) + 0.0  # -0.0 is 0: unload at once


def _shown(value: str | float | int) -> str:
    """The value as a message quotes it: a 4000-digit number is cut short."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else f"{str(value)[:40]}..."
    return text if len(text) <= 42 else text[:40] + "..."


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


def default_threads() -> int:
    """All cores this process may run on; llama.cpp decode scales with physical cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)
