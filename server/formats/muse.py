"""Muse Glimmer's messages: the prompt ends `<|start|>assistant`, and the model writes one or more messages,
each ` to=RECIPIENT<|message|>BODY` ended by `<|eom|>` (more follow, after `<|start|>assistant`) or `<|eot|>`:

     to=self<|message|>THOUGHTS<|eom|><|start|>assistant to=user<|message|>ANSWER<|eot|>
     to=get_weather<|message|><atem:function_calls>
    <atem:invoke name="get_weather">
    <atem:parameter name="city">Paris</atem:parameter>
    </atem:invoke>
    </atem:function_calls>

A message to `self` is reasoning, to `user` (or to no one) the answer, to anyone else a call in ATEM markup
(minimax.py's invoke syntax, `atem:` tags). The messages are not one thinking block, so the format brings
its own splitter (MessageSplitter, as gpt-oss's in harmony.py): it hands each call message on as content in
one canonical text, `<|start|>assistant to=NAME<|message|><atem:function_calls>...`, which no answer can
hold (an answer ends at <|start|>): ATEM markup quoted in an answer or in the thinking stays text, as
llama.cpp's muse-glimmer parser reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

from .base import ChatFormat, Kind, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, add_piece, literal, partial_suffix
from .minimax import InvokeSyntax, params_rule

START, MESSAGE, EOM, EOT = "<|start|>", "<|message|>", "<|eom|>", "<|eot|>"
OPENER = f"{START}assistant"
CALL_HEAD = f"{OPENER} to="  # the canonical header of a call message the splitter writes
BLOCK, BLOCK_CLOSE = "<atem:function_calls>", "</atem:function_calls>"
PARAM_CLOSE, INVOKE_CLOSE = "</atem:parameter>\n", "</atem:invoke>\n"
_BODY_ENDS = (EOM, EOT, START)
_HEADER_STARTS = ("to=", MESSAGE, START)
_MAX_HEADER = 256  # a "header" this long that never reached <|message|> is text
_RECIPIENT = re.compile(r"to=(\S+)")
Body = Literal["reasoning", "content", "call"]


class MessageSplitter:
    """Muse messages into (kind, text) pieces as they stream, holding back what may still become a marker.
    `started`: the prompt left a `to=self` message open; None: thinking is kept as content (no split)."""

    def __init__(self, started: bool | None = False) -> None:
        self._raw = started is None
        self._state: Literal["header", "body", "between"] = "body" if started else "header"
        self._body: Body = "reasoning"
        self._buf = ""
        self._out: list[tuple[Kind, str]] = []

    @property
    def in_reasoning(self) -> bool:
        return self._state == "body" and self._body == "reasoning" and not self._raw

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        self._buf += text
        while self._header() if self._state == "header" else self._text() if self._state == "body" else self._next():
            pass
        return self._take()

    def finish(self) -> list[tuple[Kind, str]]:
        if self._state == "body" or (self._state == "header" and self._buf.strip()):
            self._emit_body(self._buf)
        self._buf = ""
        return self._take()

    def _header(self) -> bool:
        at = self._buf.find(MESSAGE)
        if at < 0:
            head = self._buf.lstrip()
            if head and (not any(head.startswith(p) or p.startswith(head) for p in _HEADER_STARTS)
                         or len(head) > _MAX_HEADER):
                self._state, self._body = "body", "content"  # plain text where a header was due
                return True
            return False
        recipients = _RECIPIENT.findall(self._buf[:at])
        recipient = recipients[-1] if recipients else "user"
        self._buf, self._state = self._buf[at + len(MESSAGE):], "body"
        if recipient == "self":
            self._body = "reasoning"
        elif recipient == "user":
            self._body = "content"
        else:
            self._body = "call"
            self._emit("content", f"{CALL_HEAD}{recipient}{MESSAGE}")
        return True

    def _text(self) -> bool:
        ends = [(i, m) for m in _BODY_ENDS if (i := self._buf.find(m)) >= 0]
        if not ends:
            keep = max(partial_suffix(self._buf, m) for m in _BODY_ENDS)
            ready = self._buf[:len(self._buf) - keep]
            self._emit_body(ready)
            self._buf = self._buf[len(ready):]
            return False
        at, marker = min(ends)
        self._emit_body(self._buf[:at])
        self._buf = self._buf[at + (0 if marker == START else len(marker)):]
        self._state = "between"
        return True

    def _next(self) -> bool:
        """After a message: drop `<|start|>assistant` and go on to the next header."""
        rest = self._buf.lstrip()
        if rest.startswith(OPENER):
            self._buf, self._state = rest[len(OPENER):], "header"
            return True
        if not rest or OPENER.startswith(rest):
            return False
        self._buf, self._state = rest, "header"
        return True

    def _emit_body(self, text: str) -> None:
        self._emit("reasoning" if self._body == "reasoning" and not self._raw else "content", text)

    def _emit(self, kind: Kind, text: str) -> None:
        add_piece(self._out, kind, text)

    def _take(self) -> list[tuple[Kind, str]]:
        out, self._out = self._out, []
        return out


class MuseSyntax(ToolSyntax):
    """The canonical call message MessageSplitter writes: a header, then one ATEM block."""

    name = "muse-glimmer"
    starts = (CALL_HEAD,)
    _atem = InvokeSyntax("muse-glimmer", ["atem:function_calls"], ns="atem:")

    @staticmethod
    def _body(text: str) -> int | None:
        """Where the ATEM block of a call message starts (after its header), None while the header goes on."""
        at = text.find(MESSAGE)
        if at < 0:
            return None
        body = at + len(MESSAGE)
        return body + len(text[body:]) - len(text[body:].lstrip())

    def section_end(self, text: str) -> int | None:
        body = self._body(text)
        if body is None or BLOCK.startswith(text[body:]):
            return None
        if not text.startswith(BLOCK, body):
            return body  # a message to a tool without ATEM markup: not a call (parse says so)
        end = self._atem.section_end(text[body:])
        return None if end is None else body + end

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        body = self._body(section)
        if body is None or not section.startswith(BLOCK, body):
            return None
        return self._atem.parse(section[body:], names)

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        body = self._body(section)
        if body is None or not section.startswith(BLOCK, body):
            return []
        return self._atem.parse_cut(section[body:], names)

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # One call whatever max_calls: a second goes in a message of its own, after <|eom|>, which may end
        # the generation (as gpt-oss's <|call|>, harmony.py).
        def param(key: str, value: str, raw: bool) -> str:
            return f"{literal(f'<atem:parameter name={json.dumps(key)}>')} {value} {literal(PARAM_CLOSE)}"

        alts = []
        for t in tools:
            head = f" to={t.name}{MESSAGE}{BLOCK}\n<atem:invoke name={json.dumps(t.name)}>\n"
            alts.append(b.add(f"{literal(head)} {params_rule(b, t, param)} {literal(INVOKE_CLOSE + BLOCK_CLOSE)}", "call"))
        return b.add(" | ".join(alts), "calls")


MUSE_GLIMMER = ChatFormat(
    "muse-glimmer", MuseSyntax(),
    # A to=self message as the thinking block: a continued reasoning ends its prompt with its header.
    Reasoning(f"{OPENER} to=self{MESSAGE}", EOM),
    preserved=(START, MESSAGE, EOM, EOT, BLOCK, "<atem:invoke", "<atem:parameter", PARAM_CLOSE.strip(),
               INVOKE_CLOSE.strip(), BLOCK_CLOSE),
    splitter=MessageSplitter,
    note="Muse Glimmer messages: to=self as reasoning, to=user as content, to=NAME with an "
         "<atem:function_calls> block as a call")

DETECT = [(20, lambda src: BLOCK in src and EOM in src, MUSE_GLIMMER)]
