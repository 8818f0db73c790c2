"""A thinking block out of model text: the reasoning split from the answer, whole or streamed.

Reasoning models write their thoughts first, inside their family's markers (`<think>` for Qwen3,
DeepSeek-R1 and SmolLM3, `[THINK]` for Mistral, `<|START_THINKING|>` for Command R: the model's
ChatFormat, server/formats/); some chat templates open the block in the prompt already, so the output
starts inside it (`started`). As llama.cpp's server (`--reasoning-format deepseek`), a block counts only
at the start of the output; a block never closed (max_tokens cut it) is all reasoning. Whitespace
around the block is dropped, so a streamed answer and a finished one say the same. A family's answer
markers (Command R's `<|START_RESPONSE|>`) are dropped from the content; a family with its own channels
(gpt-oss) brings its own splitter.

Each wire protocol shows the two parts its own way: chat `reasoning_content`, a Responses
`reasoning` item, an Anthropic `thinking` block.
"""

from __future__ import annotations

from ..formats import GENERIC, ChatFormat
from ..formats.base import Kind, Splitter, add_piece, partial_suffix

__all__ = ["Kind", "ReasoningSplitter", "Splitter", "split_reasoning", "splitter"]


class ReasoningSplitter:
    """Splits streamed text into (kind, text) pieces, holding back what may still become a marker."""

    def __init__(self, started: bool | None = False, fmt: ChatFormat = GENERIC) -> None:
        """`started`: the prompt left a block open; None: no splitting, everything is content."""
        markers = fmt.reasoning
        self._open, self._close = (markers.open, markers.close) if markers else ("", "")
        self._ends = markers.ends if markers else ()
        if markers is None:
            started = None
        self._state = "content" if started is None else "reasoning" if started else "start"
        self._lead = True  # at the start of the reasoning: leading whitespace is dropped
        self._buf = ""
        self._content = _Unwrap(fmt.wrappers)

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning"

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        self._buf += text
        out: list[tuple[Kind, str]] = []
        while True:
            if self._state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(self._open):
                    self._buf, self._state = stripped[len(self._open):], "reasoning"
                    continue
                if self._open.startswith(stripped):  # nothing yet, or the marker's beginning
                    return out
                self._state = "content"
            elif self._state == "reasoning":
                if self._lead:
                    self._buf = self._buf.lstrip()
                    self._lead = not self._buf
                if not self._think(out):
                    return out
            elif self._state == "after":
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return out
                self._state = "content"
            else:
                add_piece(out, "content", self._content.feed(self._buf))
                self._buf = ""
                return out

    def _think(self, out: list[tuple[Kind, str]]) -> bool:
        """Reasoning up to the block's end if it came (then True: the close marker is dropped, a call marker that
        ended it stays), else up to what may still become an end, and the whitespace before it."""
        found = [(i, m) for m in (self._close, *self._ends) if (i := self._buf.find(m)) >= 0]
        if found:
            at, marker = min(found)
            add_piece(out, "reasoning", self._buf[:at].rstrip())
            closed = marker == self._close
            self._buf = self._buf[at + len(marker):] if closed else self._buf[at:]
            self._state = "after" if closed else "content"
            return True
        keep = max(partial_suffix(self._buf, m) for m in (self._close, *self._ends))
        ready = self._buf[:len(self._buf) - keep].rstrip()
        add_piece(out, "reasoning", ready)
        self._buf = self._buf[len(ready):]
        return False

    def finish(self) -> list[tuple[Kind, str]]:
        """What was held back, at the end of the output."""
        out: list[tuple[Kind, str]] = []
        if self._state == "reasoning":
            add_piece(out, "reasoning", self._buf.rstrip())
        elif self._state in ("start", "content"):
            add_piece(out, "content", self._content.feed(self._buf))
        self._buf = ""
        add_piece(out, "content", self._content.finish())
        return out


class _Unwrap:
    """Content with a family's answer markers dropped, a partial one held back until it is known."""

    def __init__(self, markers: tuple[str, ...]) -> None:
        self._markers = markers
        self._buf = ""

    def feed(self, text: str) -> str:
        if not self._markers:
            return text
        self._buf += text
        for m in self._markers:
            self._buf = self._buf.replace(m, "")
        keep = max(partial_suffix(self._buf, m) for m in self._markers)
        ready, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return ready

    def finish(self) -> str:
        rest, self._buf = self._buf, ""
        return rest


def splitter(started: bool | None, fmt: ChatFormat = GENERIC) -> Splitter:
    """The splitter for a model's format: its own (gpt-oss's channels) or the markers'."""
    if fmt.splitter is not None:
        return fmt.splitter(started)
    return ReasoningSplitter(started, fmt)


def split_reasoning(text: str, started: bool | None = False,
                    fmt: ChatFormat = GENERIC) -> tuple[str | None, str]:
    """A finished output's reasoning (None when it has no thinking block) and content."""
    s = splitter(started, fmt)
    pieces = s.feed(text) + s.finish()
    reasoning = "".join(t for k, t in pieces if k == "reasoning")
    content = "".join(t for k, t in pieces if k == "content")
    if started is None and fmt.splitter is None:
        return None, content
    has_block = bool(reasoning) or started or (fmt.reasoning is not None and text.lstrip().startswith(fmt.reasoning.open))
    return (reasoning if has_block else None), content


