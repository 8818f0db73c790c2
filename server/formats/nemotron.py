"""Nemotron Nano v2's calls: one JSON list of calls between markers, after a `<think>` block:

    <TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>

JsonListSyntax holds what such a list needs; Apertus (formats/apertus.py) writes its calls the same
way with the name as the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, as_call, literal, loads_prefix
from .hermes import partial_call


class JsonListSyntax(ToolSyntax):
    """A JSON list of call objects from `open` to `close`."""

    def __init__(self, name: str, open: str, close: str) -> None:
        self.name = name
        self.open, self.close = open, close
        self.starts = (open,)

    def call(self, obj: Any, names: set[str]) -> ToolCall | None:
        """The call one list item holds, or None."""
        return as_call(obj, names)

    def partial(self, text: str, names: set[str]) -> ToolCall | None:
        """The call an item cut short began: its name and the arguments written so far."""
        return partial_call(text, names)

    def call_rule(self, b: RuleBuilder, tool: ToolRule) -> str:
        """One list item calling `tool`."""
        ws = b.base("ws")
        return b.add(f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(tool.name))} "," {ws} '
                     f'"\\"arguments\\"" {ws} ":" {ws} {tool.arguments} {ws} "}}"')

    def section_end(self, text: str) -> int | None:
        close = text.find(self.close)
        return None if close < 0 else close + len(self.close)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        if not section.endswith(self.close):
            return None
        body = section[len(self.open):-len(self.close)]
        found = loads_prefix(body)
        if found is None or not isinstance(found[0], list) or body[found[1]:].strip():
            return None
        calls = [c for c in (self.call(item, names) for item in found[0]) if c is not None]
        # A list with an item that is no call to a known tool is not calls: it stays content.
        return calls if calls and len(calls) == len(found[0]) else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        if section.endswith(self.close):
            return self.parse(section, names) or []
        body = section[len(self.open):].lstrip()
        if not body.startswith("["):
            return []
        calls, pos = [], 1
        while (found := loads_prefix(body, pos)) is not None:
            call = self.call(found[0], names)
            if call is not None:
                calls.append(call)
            pos = found[1]
            comma = re.match(r"\s*,", body[pos:])
            if comma is None:
                return calls
            pos += comma.end()
        cut = self.partial(body[pos:], names)
        return [*calls, cut] if cut is not None else calls

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ws = b.base("ws")
        item = b.add(" | ".join(self.call_rule(b, t) for t in tools))
        more = f' ("," {ws} {item}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        return b.add(f'{literal(self.open + "[")} {item}{more} {literal("]" + self.close)}')


NEMOTRON_V2 = ChatFormat(
    "nemotron-v2", JsonListSyntax("nemotron-v2", "<TOOLCALL>", "</TOOLCALL>"), Reasoning(),
    preserved=("<think>", "</think>", "<TOOLCALL>", "</TOOLCALL>"),
    note='<TOOLCALL>[{"name", "arguments"}, ...]</TOOLCALL>; <think> reasoning (/think, /no_think)')

DETECT = [(20, lambda t: "<TOOLCALL>" in t, NEMOTRON_V2)]
