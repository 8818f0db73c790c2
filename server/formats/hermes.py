"""Hermes' `<tool_call>` blocks: the format of Hermes 2 Pro / 3, Qwen 2.5 / QwQ / Qwen3, SmolLM3 and many
fine-tunes, and the one nomoat describes in a system message to a model whose template renders no tools:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import NOT_JSON, RuleBuilder, ToolCall, ToolRule, ToolSyntax, as_call, literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)
# Up to the first character of the arguments (never before it: a space may still come).
ARGS_START = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def block_call(inner: str, names: set[str]) -> ToolCall | None:
    """The call a block's inside holds, if it parses and names a known tool."""
    try:
        return as_call(json.loads(inner), names)
    except NOT_JSON:
        return None


def partial_call(inner: str, names: set[str]) -> ToolCall | None:
    """The call an unfinished block began: its name, and the arguments written so far."""
    m = ARGS_START.match(inner)
    if m is None:
        return None
    name = json.loads(f'"{m.group(1)}"')
    return ToolCall(name, inner[m.end():].rstrip()) if name in names else None


class HermesSyntax(ToolSyntax):
    name = "hermes"
    starts = (OPEN,)
    # Forced calls stream their arguments as the grammar writes them (core/tool_calls.py).
    incremental = True

    def __init__(self, *, bare_json: bool = False) -> None:
        self.bare_json = bare_json

    def section_end(self, text: str) -> int | None:
        close = text.find(CLOSE)
        return None if close < 0 else close + len(CLOSE)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        m = _BLOCK.match(section)
        call = block_call(m.group(1), names) if m else None
        return [call] if call is not None else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        if CLOSE in section:
            return self.parse(section, names) or []
        partial = partial_call(section[len(OPEN):], names)
        return [partial] if partial is not None else []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ws = b.base("ws")
        alts = [b.add(f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(t.name))} "," {ws} '
                      f'"\\"arguments\\"" {ws} ":" {ws} {t.arguments} {ws} "}}"') for t in tools]
        block = b.add(f'{literal(OPEN + chr(10))} ({" | ".join(alts)}) {literal(chr(10) + CLOSE)}')
        if max_calls == 1:
            return block
        return b.add(f'{block} ("\\n" {block}){{0,{max_calls - 1}}}')


HERMES = HermesSyntax()
