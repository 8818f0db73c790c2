"""A thinking block out of model text: `<think>...</think>` becomes reasoning, the rest content.

Reasoning models (Qwen3, DeepSeek-R1 distills, SmolLM3) write their thoughts first, inside
`<think>` tags; some chat templates open the tag in the prompt already, so the output starts
inside it (`started`). As llama.cpp's server (`--reasoning-format deepseek`), a block counts only
at the start of the output; a block never closed (max_tokens cut it) is all reasoning. Whitespace
around the block is dropped, so a streamed answer and a finished one say the same.

Each wire protocol shows the two parts its own way: chat `reasoning_content`, a Responses
`reasoning` item, an Anthropic `thinking` block.
"""

from __future__ import annotations

from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
Kind = Literal["reasoning", "content"]


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (text that may become the tag)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Splits streamed text into (kind, text) pieces, holding back what may still become a tag."""

    def __init__(self, started: bool | None = False) -> None:
        """`started`: the prompt left a block open; None: no splitting, everything is content."""
        self._state = "content" if started is None else "reasoning" if started else "start"
        self._lead = True  # at the start of the reasoning: leading whitespace is dropped
        self._buf = ""

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning"

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        self._buf += text
        out: list[tuple[Kind, str]] = []
        while True:
            if self._state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(OPEN):
                    self._buf, self._state = stripped[len(OPEN):], "reasoning"
                    continue
                if OPEN.startswith(stripped):  # nothing yet, or the tag's beginning
                    return out
                self._state = "content"
            elif self._state == "reasoning":
                if self._lead:
                    self._buf = self._buf.lstrip()
                    self._lead = not self._buf
                end = self._buf.find(CLOSE)
                if end >= 0:
                    _emit(out, "reasoning", self._buf[:end].rstrip())
                    self._buf, self._state = self._buf[end + len(CLOSE):], "after"
                    continue
                # Hold back a partial closing tag and the whitespace before it (dropped if the tag comes).
                keep = _partial_suffix(self._buf, CLOSE)
                body = self._buf[:len(self._buf) - keep]
                ready = body.rstrip()
                _emit(out, "reasoning", ready)
                self._buf = self._buf[len(ready):]
                return out
            elif self._state == "after":
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return out
                self._state = "content"
            else:
                _emit(out, "content", self._buf)
                self._buf = ""
                return out

    def finish(self) -> list[tuple[Kind, str]]:
        """What was held back, at the end of the output."""
        out: list[tuple[Kind, str]] = []
        if self._state == "reasoning":
            _emit(out, "reasoning", self._buf.rstrip())
        elif self._state in ("start", "content"):
            _emit(out, "content", self._buf)
        self._buf = ""
        return out


def _emit(out: list[tuple[Kind, str]], kind: Kind, text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == kind:
        out[-1] = (kind, out[-1][1] + text)
    else:
        out.append((kind, text))


def opens_reasoning(prompt: str) -> bool:
    """Whether a rendered chat prompt ends inside an open thinking block (DeepSeek-R1 distills,
    Qwen3 with thinking on): the output then starts in the reasoning (`started`)."""
    return prompt.rstrip().endswith(OPEN)


def split_reasoning(text: str, started: bool | None = False) -> tuple[str | None, str]:
    """A finished output's reasoning (None when it has no thinking block) and content."""
    if started is None:
        return None, text
    splitter = ReasoningSplitter(started)
    pieces = splitter.feed(text) + splitter.finish()
    reasoning = "".join(t for k, t in pieces if k == "reasoning")
    content = "".join(t for k, t in pieces if k == "content")
    has_block = started or text.lstrip().startswith(OPEN)
    return (reasoning if has_block else None), content
