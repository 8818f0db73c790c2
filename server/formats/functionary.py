"""Functionary's calls: v3.1 writes `<function=NAME>{...}</function>` (and `<|python_tag|>` code), v3.2
addresses every message to a recipient, `>>>all\\n` text for the user, `>>>NAME\\n{...}` a call.

v3.2's prompt ends with `>>>` already, so its output starts with the recipient alone (`all\\nHello`,
`get_weather\\n{...}`). Its splitter (run before the calls are read, as every format's is) gives that
first message its `>>>` back and drops the `>>>all\\n` headers, so what the tool stream sees is content
with `>>>NAME\\n{...}` sections in it, and V32Syntax reads those like any other family's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import (
    NOT_JSON,
    ChatFormat,
    Kind,
    RuleBuilder,
    ToolCall,
    ToolRule,
    ToolSyntax,
    json_value_end,
    literal,
    partial_suffix,
)

PYTHON_TAG = "<|python_tag|>"
FUNCTION, FUNCTION_END = "<function=", "</function>"
_V31_CALL = re.compile(r"<function=([^>\n]+)>(.*)</function>\Z", re.S)
RECIPIENT, TO_ALL = ">>>", ">>>all\n"
_NAME = re.compile(r"[A-Za-z0-9_.\-]*\Z")


def _object_call(name: str, body: str, names: set[str]) -> ToolCall | None:
    """A call to `name` with `body` as its JSON object of arguments, or python's code as written."""
    if name not in names:
        return None
    try:
        args = json.loads(body)
    except NOT_JSON:
        args = {"code": body} if name == "python" and body.strip() else None
    if not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _python(body: str, names: set[str]) -> ToolCall | None:
    return _object_call("python", body.strip(), names)


def _repeated(b: RuleBuilder, first: list[str], next_: list[str], max_calls: int) -> str:
    """1..max_calls calls: one of `first`, then up to max_calls - 1 of `next_`."""
    call = b.add(" | ".join(first))
    if max_calls == 1:
        return call
    again = b.add(" | ".join(next_)) if next_ != first else call
    return b.add(f"{call} {again}{{0,{max_calls - 1}}}")


class V31Syntax(ToolSyntax):
    name = "functionary-v3.1"
    starts = (FUNCTION, PYTHON_TAG)

    def section_end(self, text: str) -> int | None:
        if text.startswith(PYTHON_TAG):
            return None  # code runs to <|eom_id|>, the end of the output
        end = text.find(FUNCTION_END)
        return None if end < 0 else end + len(FUNCTION_END)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        if section.startswith(PYTHON_TAG):
            call = _python(section[len(PYTHON_TAG):], names)
        else:
            m = _V31_CALL.match(section)
            call = _object_call(m.group(1), m.group(2), names) if m else None
        return [call] if call is not None else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        if section.startswith(PYTHON_TAG) or section.endswith(FUNCTION_END):
            return self.parse(section, names) or []
        name, sep, args = section[len(FUNCTION):].partition(">")
        return [ToolCall(name, args.strip())] if sep and name in names else []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        alts = [b.add(f'{literal(FUNCTION + t.name + ">")} {t.arguments} {literal(FUNCTION_END)}') for t in tools]
        return _repeated(b, alts, alts, max_calls)


class V32Syntax(ToolSyntax):
    """`>>>NAME\\n{...}` sections (the splitter put the first one's `>>>` back)."""

    name = "functionary-v3.2"
    starts = (RECIPIENT,)

    def section_end(self, text: str) -> int | None:
        nl = text.find("\n")
        if nl < 0:
            return None
        body = text[nl + 1:]
        start = len(body) - len(body.lstrip())
        if start == len(body):
            return None
        if body[start] == "{":
            end = json_value_end(body, start)
        else:  # python's code: up to the next message
            nxt = body.find(RECIPIENT)
            end = None if nxt < 0 else nxt
        return None if end is None else nl + 1 + end

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        name, sep, body = section[len(RECIPIENT):].partition("\n")
        call = _object_call(name, body.strip(), names) if sep else None
        return [call] if call is not None else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        whole = self.parse(section, names)
        if whole:
            return whole
        name, sep, body = section[len(RECIPIENT):].partition("\n")
        return [ToolCall(name, body.strip())] if sep and name in names else []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # The prompt wrote the first call's ">>>".
        first = [b.add(f'{literal(t.name + chr(10))} {t.arguments}') for t in tools]
        again = [b.add(f'{literal(RECIPIENT)} {f}') for f in first]
        return _repeated(b, first, again, max_calls)


Piece = tuple[Kind, str]


class RecipientSplitter:
    """v3.2's output as content: the first recipient gets its `>>>` back, `>>>all\\n` headers go."""

    def __init__(self, started: bool | None = None) -> None:
        del started  # Functionary does not think
        self._first = True
        self._buf = ""

    @property
    def in_reasoning(self) -> bool:
        return False  # Functionary does not think

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        if self._first:
            nl = self._buf.find("\n")
            head = self._buf if nl < 0 else self._buf[:nl]
            if not _NAME.match(head) or (nl == 0):  # not a recipient: the model wrote text straight away
                self._first = False
            elif nl < 0:
                return []
            else:
                self._first = False
                self._buf = self._buf[nl + 1:] if head == "all" else RECIPIENT + self._buf
        self._buf = self._buf.replace(TO_ALL, "")
        keep = partial_suffix(self._buf, TO_ALL)
        out, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return [("content", out)] if out else []

    def finish(self) -> list[Piece]:
        rest = "" if self._first and self._buf == "all" else self._buf
        self._buf = ""
        return [("content", rest)] if rest else []


FUNCTIONARY_V31 = ChatFormat(
    "functionary-v3.1", V31Syntax(), reasoning=None, preserved=(PYTHON_TAG,),
    note="Functionary v3.1: <function=NAME>{...}</function>, or <|python_tag|> code for python")
FUNCTIONARY_V32 = ChatFormat(
    "functionary-v3.2", V32Syntax(), reasoning=None, splitter=RecipientSplitter,
    note=">>>all\\n text, >>>NAME\\n{...} a call (the prompt ends with >>>)")

DETECT = [
    (10, lambda t: ">>>all" in t and ">>>${recipient}" in t, FUNCTIONARY_V32),
    (15, lambda t: FUNCTION in t and PYTHON_TAG in t, FUNCTIONARY_V31),
]
