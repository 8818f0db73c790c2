"""Llama 3.1 / 3.2 / 3.3's JSON calls (`{"name": ..., "parameters": {...}}`, bare or after `<|python_tag|>`)
and FireFunction v2's ` functools[{...}, ...]` list.

Llama writes one call as the whole answer, as its template's system prompt asks; after `<|python_tag|>`
it writes either that JSON or a built-in tool's call (`brave_search.call(query="...")`) or, for
`code_interpreter`, bare Python (read as a call to a tool named `python`, as llama.cpp did).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import (
    NOT_JSON,
    ChatFormat,
    RuleBuilder,
    ToolCall,
    ToolRule,
    ToolSyntax,
    as_call,
    json_value_end,
    literal,
    loads_prefix,
)

PYTHON_TAG = "<|python_tag|>"
# A built-in tool's call: brave_search.call(query="...", ...), keyword arguments with string values.
_BUILTIN = re.compile(r"\s*([A-Za-z_]\w*)\.call\((.*)\)\s*\Z", re.S)
_KWARG = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*("(?:[^"\\]|\\.)*")\s*(?:,|\Z)', re.S)
# Up to the first character of a cut call's arguments.
_ARGS_START = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:parameters|arguments)"\s*:\s*(?=\S)')


def _json_calls(text: str, names: set[str]) -> list[ToolCall] | None:
    """Calls written as JSON objects one after another (`;` between, as Llama 3.2 sometimes does)."""
    calls: list[ToolCall] = []
    pos = 0
    while True:
        found = loads_prefix(text, pos)
        if found is None:
            return None
        obj, pos = found
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            call = as_call(item, names)
            if call is None:
                return None
            calls.append(call)
        rest = text[pos:].lstrip()
        if not rest:
            return calls
        if not rest.startswith(";"):
            return None
        pos = len(text) - len(rest) + 1


def _builtin_call(text: str, names: set[str]) -> ToolCall | None:
    m = _BUILTIN.match(text)
    if m is None or m.group(1) not in names:
        return None
    args: dict[str, str] = {}
    rest = m.group(2)
    while rest.strip():
        kv = _KWARG.match(rest)
        if kv is None:
            return None
        try:
            args[kv.group(1)] = json.loads(kv.group(2))
        except NOT_JSON:
            return None
        rest = rest[kv.end():]
    return ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))


def _cut_call(text: str, names: set[str]) -> list[ToolCall]:
    m = _ARGS_START.match(text)
    if m is None:
        return []
    name = json.loads(f'"{m.group(1)}"')
    return [ToolCall(name, text[m.end():].rstrip())] if name in names else []


def _named_json(b: RuleBuilder, tools: Sequence[ToolRule], args_key: str) -> str:
    """A rule for one `{"name": ..., "<args_key>": {...}}` call to any of `tools`."""
    ws = b.base("ws")
    alts = [b.add(f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(t.name))} "," {ws} '
                  f'{literal(json.dumps(args_key))} {ws} ":" {ws} {t.arguments} {ws} "}}"') for t in tools]
    return b.add(" | ".join(alts))


class Llama3Syntax(ToolSyntax):
    name = "llama3"
    starts = (PYTHON_TAG,)
    bare_json = True

    def section_end(self, text: str) -> int | None:
        return None  # what follows the tag is the call, up to <|eom_id|> (the end of the output)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        body = section[len(PYTHON_TAG):].strip()
        if body[:1] in ("{", "["):
            return _json_calls(body, names)
        builtin = _builtin_call(body, names)
        if builtin is not None:
            return [builtin]
        if body and "python" in names:
            return [ToolCall("python", json.dumps({"code": body}, ensure_ascii=False))]
        return None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        return self.parse(section, names) or _cut_call(section[len(PYTHON_TAG):], names)

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # One call, bare, whatever max_calls: the template refuses a history with several.
        return _named_json(b, tools, "parameters")


FUNCTOOLS = "functools["


class FireFunctionSyntax(ToolSyntax):
    """` functools[{"name": ..., "arguments": {...}}, ...]`: one list holds every call."""

    name = "firefunction"
    starts = (FUNCTOOLS,)

    def section_end(self, text: str) -> int | None:
        return json_value_end(text, len(FUNCTOOLS) - 1)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        try:
            items = json.loads(section[len(FUNCTOOLS) - 1:])
        except NOT_JSON:
            return None
        if not isinstance(items, list) or not items:
            return None
        calls = [as_call(item, names) for item in items]
        return [c for c in calls if c is not None] if all(calls) else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        """The whole calls of a cut list, then the one it was writing."""
        calls: list[ToolCall] = []
        pos = len(FUNCTOOLS)
        while True:
            found = loads_prefix(section, pos)
            if found is None:
                return calls + _cut_call(section[pos:], names)
            obj, pos = found
            call = as_call(obj, names)
            if call is None:
                return calls
            calls.append(call)
            rest = section[pos:].lstrip()
            if not rest.startswith(","):
                return calls
            pos = len(section) - len(rest) + 1

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ws, call = b.base("ws"), _named_json(b, tools, "arguments")
        more = f' ("," {ws} {call}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        return b.add(f'{literal(" " + FUNCTOOLS)} {call}{more} "]"')


LLAMA3 = ChatFormat(
    "llama3", Llama3Syntax(), reasoning=None, preserved=(PYTHON_TAG,),
    note='Llama 3.1/3.2/3.3: one bare {"name", "parameters"} JSON call, or after <|python_tag|>')
FIREFUNCTION = ChatFormat(
    "firefunction-v2", FireFunctionSyntax(), reasoning=None,
    note='FireFunction v2: functools[{"name", "arguments"}, ...]')


def _is_llama3(template: str) -> bool:
    return "<|start_header_id|>" in template and "Environment: ipython" in template


DETECT = [
    (20, lambda t: FUNCTOOLS in t, FIREFUNCTION),
    (60, _is_llama3, LLAMA3),
]
