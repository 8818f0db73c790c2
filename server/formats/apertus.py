"""Apertus' calls: a JSON list of objects keyed by the tool's name, and `<|inner_prefix|>` reasoning:

    <|tools_prefix|>[{"get_weather": {"city": "Paris"}}]<|tools_suffix|>
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, literal
from .nemotron import JsonListSyntax

# An item cut short after its name: the arguments begin at the first character after the colon.
_NAME_KEY = re.compile(r'\s*\{\s*"((?:[^"\\]|\\.)*)"\s*:\s*(?=\S)')


class NameKeySyntax(JsonListSyntax):
    """A list of `{"NAME": {arguments}}` items."""

    def call(self, obj: Any, names: set[str]) -> ToolCall | None:
        if not isinstance(obj, dict) or len(obj) != 1:
            return None
        ((name, args),) = obj.items()
        if name not in names or not isinstance(args, dict):
            return None
        return ToolCall(name, json.dumps(args, ensure_ascii=False))

    def partial(self, text: str, names: set[str]) -> ToolCall | None:
        m = _NAME_KEY.match(text)
        if m is None:
            return None
        name = json.loads(f'"{m.group(1)}"')
        return ToolCall(name, text[m.end():].rstrip()) if name in names else None

    def call_rule(self, b: RuleBuilder, tool: ToolRule) -> str:
        ws = b.base("ws")
        return b.add(f'"{{" {ws} {literal(json.dumps(tool.name))} {ws} ":" {ws} {tool.arguments} {ws} "}}"')


APERTUS = ChatFormat(
    "apertus", NameKeySyntax("apertus", "<|tools_prefix|>", "<|tools_suffix|>"),
    Reasoning("<|inner_prefix|>", "<|inner_suffix|>"),
    preserved=("<|tools_prefix|>", "<|tools_suffix|>", "<|inner_prefix|>", "<|inner_suffix|>"),
    note='<|tools_prefix|>[{"NAME": {arguments}}, ...]<|tools_suffix|>; <|inner_prefix|> reasoning')

DETECT = [(20, lambda t: "<|tools_prefix|>" in t, APERTUS)]
