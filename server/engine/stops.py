"""Incremental text output: UTF-8 reassembly and stop strings that are never emitted."""

from __future__ import annotations

import codecs


class TextAssembler:
    """Turns token pieces (bytes) into text, holding back what a stop string might still claim.

    A multi-byte character split across tokens is held until complete; a tail that is the
    start of some stop string is held until it either completes the stop (then dropped,
    and the sequence ends) or diverges (then released).
    """

    def __init__(self, stops: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text now safe to emit."""
        self._pending += self._decoder.decode(piece)
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        first = -1
        for stop in self._stops:
            at = self._pending.find(stop)
            if at != -1 and (first == -1 or at < first):
                first, self.matched = at, stop
        if first != -1:
            self.stopped = True
            out, self._pending = self._pending[:first], ""
            return out
        hold = self._held_suffix()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def flush(self) -> str:
        """The end of generation: release whatever was held (no stop completed).

        Bytes of a character cut off by the end (a `length` finish mid-character) are dropped
        rather than shown as U+FFFD.
        """
        out = self._pending
        self._pending = ""
        self._decoder.reset()
        return out

    def _held_suffix(self) -> int:
        """Length of the longest tail of pending text that is a proper prefix of a stop string."""
        longest = 0
        text = self._pending
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
