"""Mistral's `[TOOL_CALLS]` calls in both forms, and Ministral's `[THINK]` blocks:

    Mistral Nemo:                    [TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "a1b2c3d4e"}]
    Mistral Small 3.2:               [TOOL_CALLS]f[CALL_ID]a1b2c3d4e[ARGS]{...}
    Devstral, Ministral 3 reasoning: [TOOL_CALLS]f[ARGS]{...}

Nemo's and Small 3.2's templates refuse a history whose call ids are not 9 characters, so a call keeps
the id the model wrote, and one written without an id gets 9 alphanumerics of its own;
`history_call_id` maps any other id (a client's own) onto 9 the same way every time, for the renderer.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Sequence

from .base import (
    NOT_JSON,
    ChatFormat,
    Reasoning,
    RuleBuilder,
    ToolCall,
    ToolRule,
    ToolSyntax,
    as_call,
    json_value_end,
    literal,
    loads_prefix,
)

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_ALNUM = string.ascii_letters + string.digits
_NINE = re.compile(r"[A-Za-z0-9]{9}\Z")
# Up to the first character of a cut Nemo call's arguments.
_ARGS_START = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def mistral_call_id() -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


def history_call_id(call_id: str) -> str:
    """The id a Mistral template accepts for `call_id`: itself when 9 alphanumerics, else a stable hash."""
    return call_id if _NINE.match(call_id) else hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _with_id(call: ToolCall) -> ToolCall:
    if not _NINE.match(call.id):
        call.id = mistral_call_id()
    return call


def _id_rule(b: RuleBuilder) -> str:
    return b.add("[a-zA-Z0-9]{9}", "id")


class NemoSyntax(ToolSyntax):
    """One JSON list after `[TOOL_CALLS]` holds every call."""

    name = "mistral-nemo"
    starts = (TOOL_CALLS,)

    def section_end(self, text: str) -> int | None:
        body = text[len(TOOL_CALLS):]
        start = len(body) - len(body.lstrip())
        if start == len(body):
            return None
        if body[start] != "[":
            return len(TOOL_CALLS) + start  # not a list: the marker alone, which stays content
        end = json_value_end(body, start)
        return None if end is None else len(TOOL_CALLS) + end

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        try:
            items = json.loads(section[len(TOOL_CALLS):])
        except NOT_JSON:
            return None
        if not isinstance(items, list) or not items:
            return None
        calls = [as_call(item, names) for item in items]
        return [_with_id(c) for c in calls if c is not None] if all(calls) else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        calls: list[ToolCall] = []
        body = section[len(TOOL_CALLS):].lstrip()
        if not body.startswith("["):
            return []
        pos = 1
        while True:
            found = loads_prefix(body, pos)
            if found is None:
                m = _ARGS_START.match(body, pos)
                name = json.loads(f'"{m.group(1)}"') if m else None
                if m is not None and name in names:
                    calls.append(ToolCall(name, body[m.end():].rstrip(), mistral_call_id()))
                return calls
            obj, pos = found
            call = as_call(obj, names)
            if call is None:
                return calls
            calls.append(_with_id(call))
            rest = body[pos:].lstrip()
            if not rest.startswith(","):
                return calls
            pos = len(body) - len(rest) + 1

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ws, ident = b.base("ws"), _id_rule(b)
        alts = [b.add(f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(t.name))} "," {ws} '
                      f'"\\"arguments\\"" {ws} ":" {ws} {t.arguments} "," {ws} '
                      f'"\\"id\\"" {ws} ":" {ws} "\\"" {ident} "\\"" {ws} "}}"') for t in tools]
        call = b.add(" | ".join(alts))
        more = f' ("," {ws} {call}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        return b.add(f'{literal(TOOL_CALLS + "[")} {call}{more} "]"')


class BracketSyntax(ToolSyntax):
    """`[TOOL_CALLS]name[ARGS]{...}` per call (`[CALL_ID]id` before `[ARGS]` in Small 3.2's)."""

    name = "mistral"
    starts = (TOOL_CALLS,)

    def __init__(self, *, call_id: bool) -> None:
        self.call_id = call_id  # whether forced calls write [CALL_ID] (the template renders it)

    def section_end(self, text: str) -> int | None:
        args = text.find(ARGS)
        if args < 0:
            return None
        body = args + len(ARGS)
        start = body + len(text[body:]) - len(text[body:].lstrip())
        if start == len(text):
            return None
        if text[start] != "{":
            return start  # no arguments object: not a call, the text stays content
        return json_value_end(text, start)

    @staticmethod
    def _head(section: str) -> tuple[str, str | None, str] | None:
        """The name, the id (if written) and what follows [ARGS]."""
        args = section.find(ARGS)
        if args < 0:
            return None
        head, rest = section[len(TOOL_CALLS):args], section[args + len(ARGS):]
        name, _, call_id = head.partition(CALL_ID)
        return name.strip(), (call_id.strip() or None) if CALL_ID in head else None, rest

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        head = self._head(section)
        if head is None or head[0] not in names:
            return None
        name, call_id, rest = head
        try:
            args = json.loads(rest)
        except NOT_JSON:
            return None
        if not isinstance(args, dict):
            return None
        call = ToolCall(name, json.dumps(args, ensure_ascii=False), call_id or mistral_call_id())
        return [call]

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        whole = self.parse(section, names)
        if whole:
            return whole
        head = self._head(section)
        if head is None or head[0] not in names:
            return []
        return [ToolCall(head[0], head[2].strip(), head[1] or mistral_call_id())]

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ident = f' {literal(CALL_ID)} {_id_rule(b)}' if self.call_id else ""
        alts = [b.add(f'{literal(TOOL_CALLS + t.name)}{ident} {literal(ARGS)} {t.arguments}') for t in tools]
        call = b.add(" | ".join(alts))
        return call if max_calls == 1 else b.add(f"{call}{{1,{max_calls}}}")


THINK = Reasoning("[THINK]", "[/THINK]")
_PRESERVED = (TOOL_CALLS, ARGS)

MISTRAL_NEMO = ChatFormat(
    "mistral-nemo", NemoSyntax(), reasoning=None, preserved=(TOOL_CALLS,), history_id=history_call_id,
    note='Mistral Nemo: [TOOL_CALLS][{"name", "arguments", "id"}] (ids of 9 alphanumerics)')
MISTRAL_SMALL = ChatFormat(
    "mistral-small-3.2", BracketSyntax(call_id=True), reasoning=None, preserved=(*_PRESERVED, CALL_ID),
    history_id=history_call_id,
    note="Mistral Small 3.2: [TOOL_CALLS]name[CALL_ID]id[ARGS]{...} per call (ids of 9 alphanumerics)")
MINISTRAL = ChatFormat(
    "ministral-3", BracketSyntax(call_id=False), reasoning=THINK,
    preserved=(*_PRESERVED, THINK.open, THINK.close),
    note="Ministral 3 / Magistral: [THINK]...[/THINK], then [TOOL_CALLS]name[ARGS]{...} per call")
DEVSTRAL = ChatFormat(
    "devstral", BracketSyntax(call_id=False), reasoning=None, preserved=_PRESERVED,
    note="Devstral: [TOOL_CALLS]name[ARGS]{...} per call")


def _bracket(template: str) -> bool:
    return TOOL_CALLS in template and ARGS in template


DETECT = [
    (20, lambda t: CALL_ID in t and TOOL_CALLS in t, MISTRAL_SMALL),
    (20, lambda t: TOOL_CALLS + "[" in t, MISTRAL_NEMO),
    (25, lambda t: _bracket(t) and THINK.open in t, MINISTRAL),
    (30, _bracket, DEVSTRAL),
]
