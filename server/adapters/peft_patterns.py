"""PEFT's rank_pattern and alpha_pattern keys, matched against module names as PEFT does, in bounded time."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import regex

from ..errors import AdapterError

# Keys are module names or short regular expressions; nothing legitimate comes near these bounds.
MAX_KEY_CHARS = 1024
# All matches of one field's keys against all modules of an adapter share this budget: Python's re has
# no timeout and backtracks exponentially on keys like "(.+)+Z", so matching uses the `regex` package,
# which takes a timeout and releases the GIL while it works.
MATCH_BUDGET_SECONDS = 2.0


class PatternKeys:
    """One field's keys, compiled once. PEFT (peft.utils.other.get_pattern_key) takes the first key, in
    order, for which re.match(rf"(.*\\.)?({key})$", module) succeeds."""

    def __init__(self, path: Path, field: str, pattern: dict[str, Any]) -> None:
        self._path, self._field = path, field
        self._keys: list[tuple[str, regex.Pattern[str], Any]] = []
        for key, value in pattern.items():
            if len(key) > MAX_KEY_CHARS:
                self._refuse(key, f"is {len(key)} characters long (at most {MAX_KEY_CHARS})")
            try:
                re.compile(key)  # PEFT compiles with re: what re refuses, PEFT cannot load either
                compiled = regex.compile(rf"(.*\.)?({key})$")
            except (re.error, regex.error) as exc:
                self._refuse(key, f"is not a valid regular expression ({exc})")
            self._keys.append((key, compiled, value))

    def _refuse(self, key: str, reason: str) -> None:
        raise AdapterError(f"{self._path}: {self._field} key {key[:100]!r} {reason}", param="adapter")

    def values(self, modules: list[str]) -> dict[str, Any]:
        """Module -> the value of the first key that matches it, for the modules some key matches."""
        found: dict[str, Any] = {}
        if not self._keys:
            return found
        deadline = time.monotonic() + MATCH_BUDGET_SECONDS
        for module in modules:
            for key, compiled, value in self._keys:
                try:
                    matched = compiled.match(module, timeout=max(deadline - time.monotonic(), 0.001),
                                             concurrent=True)
                except TimeoutError:
                    self._refuse(key, f"takes too long to match module names (over {MATCH_BUDGET_SECONDS:g} s "
                                      "for all of them); simplify the regular expression")
                if matched:
                    found[module] = value
                    break
        return found
