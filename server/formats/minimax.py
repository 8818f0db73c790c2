"""MiniMax M2's `<invoke>` calls, and the invoke/parameter XML it shares with DeepSeek V3.2 / V4 (deepseek.py):

    <minimax:tool_call>
    <invoke name="get_weather">
    <parameter name="city">Paris</parameter>
    </invoke>
    </minimax:tool_call>

A parameter's value is JSON when it parses as JSON, else the raw text (as llama.cpp reads it); DeepSeek's
`string="true"` attribute says so itself. MiniMax M1 (JSON lines in <tool_calls>) and M3 (namespaced tags)
write other syntaxes and are not this format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .base import NOT_JSON, ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal

THINK = ("<think>", "</think>")
# Schema keywords a raw (unquoted) string value could break: such a string is written as JSON instead.
_STRING_LIMITS = ("enum", "const", "pattern", "format", "minLength", "maxLength")


def xml_value(raw: str, *, string: bool | None = None) -> Any:
    """A parameter's value: the raw text when it is a string (`string` True, or it does not parse as JSON)."""
    if string:
        return raw
    try:
        return json.loads(raw)
    except NOT_JSON:
        return raw


def raw_string(schema: Any) -> bool:
    """Whether a property is a plain string, written as raw text between tags (any other value is JSON)."""
    return isinstance(schema, dict) and schema.get("type") == "string" and not any(k in schema for k in _STRING_LIMITS)


def params_rule(b: RuleBuilder, tool: ToolRule, param: Callable[[str, str, bool], str]) -> str:
    """A rule for a tool's parameters written one by one: the required ones in schema order, then each
    optional one or not. `param(name, value rule, raw)` is the rule text of one parameter; a raw value
    is a plain string as text (no `<` in it: the closing tag follows)."""
    props = tool.schema.get("properties") or {}
    required = set(tool.schema.get("required") or [])
    # Required ones first, as the templates write them; a fixed order keeps the grammar unambiguous.
    keys = [k for k in props if k in required] + [k for k in props if k not in required]
    parts = []
    for key in keys:
        raw = raw_string(props[key])
        value = b.add("[^<]*", "raw") if raw else tool.value(props[key], key)
        rule = b.add(param(key, value, raw), "param")
        parts.append(rule if key in required else f"{rule}?")
    return " ".join(parts) if parts else '""'


class InvokeSyntax(ToolSyntax):
    """A block of `<{ns}invoke name="NAME">` calls with `<{ns}parameter name="KEY">` values inside."""

    def __init__(self, name: str, blocks: Sequence[str], *, ns: str = "", typed: bool = False) -> None:
        """`blocks`: the block tags that open a section (<{tag}>...</{tag}>), the first the one forced
        calls write; `typed`: parameters carry string="true|false" (DeepSeek's DSML)."""
        self.name = name
        self.starts = tuple(f"<{tag}>" for tag in blocks)
        self._closes = {f"<{tag}>": f"</{tag}>" for tag in blocks}
        self._ns, self._typed = ns, typed
        ns_re = re.escape(ns)
        self._invoke = re.compile(rf'<{ns_re}invoke name="([^"]*)">(.*?)(?:</{ns_re}invoke>|\Z)', re.S)
        self._param = re.compile(rf'<{ns_re}parameter name="([^"]*)"(?: string="(true|false)")?>(.*?)'
                                 rf'</{ns_re}parameter>', re.S)

    def _close(self, text: str) -> str:
        return next(close for start, close in self._closes.items() if text.startswith(start))

    def section_end(self, text: str) -> int | None:
        close = self._close(text)
        end = text.find(close)
        return None if end < 0 else end + len(close)

    def _calls(self, section: str, names: set[str]) -> list[ToolCall]:
        calls = []
        for m in self._invoke.finditer(section):
            if m.group(1) not in names:
                continue
            args = {p.group(1): xml_value(p.group(3), string=p.group(2) == "true" if p.group(2) else None)
                    for p in self._param.finditer(m.group(2))}
            calls.append(ToolCall(m.group(1), json.dumps(args, ensure_ascii=False)))
        return calls

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        return self._calls(section, names) or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        # The last call's arguments are the parameters it closed: a value cut short is not yet one.
        return self._calls(section, names)

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ns = self._ns

        def param(key: str, value: str, raw: bool) -> str:
            typed = f' string="{"true" if raw else "false"}"' if self._typed else ""
            return f'{literal(f"<{ns}parameter name={json.dumps(key)}{typed}>")} {value} {literal(f"</{ns}parameter>" + chr(10))}'

        alts = [b.add(f'{literal(f"<{ns}invoke name={json.dumps(t.name)}>" + chr(10))} {params_rule(b, t, param)} '
                      f'{literal(f"</{ns}invoke>" + chr(10))}', "invoke") for t in tools]
        call = b.add(" | ".join(alts), "call")
        calls = call if max_calls == 1 else f"{call}{{1,{max_calls}}}"
        start = self.starts[0]
        return b.add(f"{literal(start + chr(10))} {calls} {literal(self._closes[start])}")


MINIMAX_M2 = ChatFormat(
    "minimax-m2", InvokeSyntax("minimax-m2", ["minimax:tool_call"]), Reasoning(*THINK),
    preserved=("<minimax:tool_call>", "</minimax:tool_call>", *THINK),
    note='<minimax:tool_call> blocks of <invoke name="..."> with <parameter> tags; <think> reasoning')

DETECT = [(20, lambda src: "<minimax:tool_call>" in src, MINIMAX_M2)]
