"""gpt-oss's harmony channels: `analysis` is the reasoning, `final` the answer, a message to
`functions.NAME` a tool call. The prompt ends with `<|start|>assistant`, so the output goes on with
the header of its first message:

    <|channel|>analysis<|message|>THOUGHTS<|end|><|start|>assistant<|channel|>final<|message|>ANSWER
    <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>

The recipient may also stand in the role header (`<|start|>assistant to=functions.NAME<|channel|>...`).
The channels are not one thinking block, so the format brings its own splitter (ChannelSplitter): it
turns each message into reasoning or content and hands every call on, in one canonical text, as content
the call syntax (HarmonySyntax) reads: `<|channel|>commentary to=functions.NAME<|message|>ARGS<|call|>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

from .base import (
    NOT_JSON,
    ChatFormat,
    Kind,
    Reasoning,
    RuleBuilder,
    ToolCall,
    ToolRule,
    ToolSyntax,
    add_piece,
    literal,
    partial_suffix,
)

START, CHANNEL, MESSAGE, CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
ROLE = "assistant"
# What ends a message's body. <|start|> too: a model that skips <|end|> still opens its next message.
_BODY_ENDS = (END, CALL, RETURN, START)
CALL_OPEN = f"{CHANNEL}commentary to=functions."
ANALYSIS_OPEN = f"{CHANNEL}analysis{MESSAGE}"
# A header longer than this that never reached <|message|> is text, not a header: stop holding it back.
_MAX_HEADER = 256

_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>([\w-]+)")
_CALL = re.compile(r"<\|channel\|>commentary to=functions\.([^\s<]+)[^<]*(?:<\|constrain\|>[\w-]*\s*)?"
                   r"<\|message\|>(.*?)(?:<\|call\|>)?\s*\Z", re.S)

# What a message's body is: thinking, the answer (or a preamble), a call's arguments, the analysis kept as
# text (reasoning_format none), or a message to a built-in tool nomoat does not run (dropped, as llama.cpp).
Body = Literal["reasoning", "content", "call", "raw_analysis", "drop"]


class ChannelSplitter:
    """Harmony messages into (kind, text) pieces as they stream, holding back what may become a marker.

    `started`: the prompt left an analysis message open (a continued reasoning); None: the analysis is
    not split out but kept in the content with its markers, as llama.cpp's reasoning_format none.
    """

    def __init__(self, started: bool | None = False) -> None:
        self._raw = started is None
        self._state: Literal["header", "body", "between"] = "body" if started else "header"
        self._body: Body = "reasoning"
        self._buf = ""
        self._out: list[tuple[Kind, str]] = []

    @property
    def in_reasoning(self) -> bool:
        return self._state == "body" and self._body == "reasoning"

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        self._buf += text
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[tuple[Kind, str]]:
        """The rest at the end of the output: a cut body as it stands (a call without its <|call|>)."""
        if self._state == "body":
            self._emit_body(self._buf)
        elif self._state == "header" and not self._looks_like_header(self._buf):
            self._emit("content", self._buf)
        self._buf = ""
        return self._take()

    # --- states ---------------------------------------------------------------------------

    def _step(self) -> bool:
        """One move through the buffer; False when it must wait for more text."""
        if self._state == "header":
            return self._header()
        if self._state == "body":
            return self._body_text()
        return self._between()

    def _header(self) -> bool:
        at = self._buf.find(MESSAGE)
        if at < 0:
            if self._buf.strip() and (not self._looks_like_header(self._buf) or len(self._buf) > _MAX_HEADER):
                self._state, self._body = "body", "content"  # plain text where a header was due
                return True
            return False
        header, self._buf = self._buf[:at], self._buf[at + len(MESSAGE):]
        self._state, self._body = "body", self._kind(header)
        return True

    def _kind(self, header: str) -> Body:
        recipients = [r for r in _RECIPIENT.findall(header) if r != ROLE]
        channels = _CHANNEL.findall(header)
        if recipients:
            name = recipients[-1].removeprefix("functions.")
            if name == recipients[-1]:
                return "drop"
            self._emit("content", f"{CALL_OPEN}{name}{MESSAGE}")
            return "call"
        if channels and channels[-1] == "analysis":
            if self._raw:
                self._emit("content", ANALYSIS_OPEN)
                return "raw_analysis"
            return "reasoning"
        return "content"

    def _body_text(self) -> bool:
        ends = [(i, m) for m in _BODY_ENDS if (i := self._buf.find(m)) >= 0]
        if not ends:
            keep = max(partial_suffix(self._buf, m) for m in _BODY_ENDS)
            ready = self._buf[:len(self._buf) - keep]
            self._emit_body(ready)
            self._buf = self._buf[len(ready):]
            return False
        at, marker = min(ends)
        self._emit_body(self._buf[:at])
        if self._body == "call":
            self._emit("content", CALL)
        elif self._body == "raw_analysis":
            self._emit("content", END)
        self._buf = self._buf[at + (0 if marker == START else len(marker)):]
        self._state = "between"
        return True

    def _between(self) -> bool:
        """After a message: drop `<|start|>assistant` and go on to the next header."""
        rest = self._buf.lstrip()
        opener = START + ROLE
        if rest.startswith(opener):
            self._buf, self._state = rest[len(opener):], "header"
            return True
        if not rest or opener.startswith(rest):
            return False
        self._buf, self._state = rest, "header"
        return True

    # --- output ---------------------------------------------------------------------------

    @staticmethod
    def _looks_like_header(text: str) -> bool:
        head = text.lstrip()
        return any(head.startswith(p) or p.startswith(head) for p in (CHANNEL, "to=", CONSTRAIN, START))

    def _emit_body(self, text: str) -> None:
        if self._body == "reasoning":
            self._emit("reasoning", text)
        elif self._body != "drop":
            self._emit("content", text)

    def _emit(self, kind: Kind, text: str) -> None:
        add_piece(self._out, kind, text)

    def _take(self) -> list[tuple[Kind, str]]:
        out, self._out = self._out, []
        return out


class HarmonySyntax(ToolSyntax):
    """The canonical call text ChannelSplitter writes: one call a section, arguments as one JSON object."""

    name = "harmony"
    starts = (CALL_OPEN,)

    def section_end(self, text: str) -> int | None:
        at = text.find(CALL)
        return None if at < 0 else at + len(CALL)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        m = _CALL.match(section)
        if m is None or m.group(1) not in names:
            return None
        try:
            args = json.loads(m.group(2))
        except NOT_JSON:
            return None
        if not isinstance(args, dict):
            return None
        return [ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))]

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        m = _CALL.match(section)
        if m is None or m.group(1) not in names:
            return []
        return [ToolCall(m.group(1), m.group(2).strip())]

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # One call whatever max_calls: <|call|> ends the generation (an end-of-generation token), so the
        # rule stops at the arguments and a second call is never written in the same output.
        alts = [b.add(f"{literal(t.name + ' ' + CONSTRAIN + 'json' + MESSAGE)} {t.arguments}") for t in tools]
        return b.add(f'{literal(CALL_OPEN)} ({" | ".join(alts)})')


HARMONY = ChatFormat(
    "harmony", HarmonySyntax(),
    # The analysis message as llama.cpp's thinking tags: a continued reasoning ends its prompt with it.
    Reasoning(ANALYSIS_OPEN, END),
    preserved=(START, CHANNEL, MESSAGE, CONSTRAIN, END, CALL, RETURN),
    splitter=ChannelSplitter,
    note="gpt-oss harmony: analysis channel as reasoning, final as content, "
         "`to=functions.NAME <|constrain|>json<|message|>{...}` calls; reasoning_effort is a template variable",
)

DETECT = [(20, lambda t: CHANNEL in t, HARMONY)]
