"""XML function calls: Qwen3-Coder, Qwen3.5, Nemotron 3 Nano and Seed-OSS write each call as

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

(Seed-OSS: `<seed:tool_call>` blocks, values with no newlines around them, `<seed:think>` reasoning).
A value is JSON when it parses as JSON, else the text itself, as llama.cpp reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .base import NOT_JSON, ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal

FUNCTION, FUNCTION_END = "<function=", "</function>"
PARAMETER_END = "</parameter>"
_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", re.S)
_PARAMETER = re.compile(r"\s*<parameter=([^>\n]+)>(.*?)</parameter>", re.S)
_OPEN_PARAMETER = re.compile(r"\s*<parameter=([^>\n]+)>(.*)\Z", re.S)
_OPEN_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*)\Z", re.S)
# A raw text value: no closing tag inside it (`<` is allowed, `</` is not), so the grammar cannot
# end a value in two places. It bounds a value to text without `</`; values with it stay unforced.
_RAW_TEXT = '([^<] | "<" [^/])*'


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON a client can read back


def decode_value(text: str) -> Any:
    """A parameter's value: the JSON it spells, or the text itself."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except NOT_JSON:
        return text


def _is_text(schema: Any) -> bool:
    """Whether a property is written as raw text: a string type, with nothing a grammar must enforce."""
    if not isinstance(schema, dict) or any(k in schema for k in ("enum", "const", "anyOf", "oneOf", "allOf", "$ref")):
        return False
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


class XmlFunctionSyntax(ToolSyntax):
    """`<function=NAME>` calls in `open`..`close` blocks, one `<parameter=KEY>` per argument."""

    def __init__(self, name: str, *, open: str = "<tool_call>", close: str = "</tool_call>",
                 newlines: bool = True, bare_function: bool = False) -> None:
        self.name = name
        self.open, self.close = open, close
        # Qwen's values sit on lines of their own: one newline after the tag and one before its end
        # belong to the tags (a value ending in a newline is written with two).
        self.newlines = newlines
        # Qwen3-Coder sometimes drops the first <tool_call> and opens with <function= (test-chat.cpp 3569).
        self.bare_function = bare_function
        self.starts = (open, FUNCTION) if bare_function else (open,)

    def section_end(self, text: str) -> int | None:
        if text.startswith(self.open):
            close = text.find(self.close)
            return None if close < 0 else close + len(self.close)
        end = text.find(FUNCTION_END)
        if end < 0:
            return None
        end += len(FUNCTION_END)
        rest = text[end:].lstrip()
        if rest.startswith(self.close):
            return len(text) - len(rest) + len(self.close)
        # Its </tool_call> may still come; anything else after </function> is content again.
        return None if self.close.startswith(rest) else end

    def _body(self, section: str) -> str:
        """The section without its block markers (the bare form has no opening one)."""
        body = section[len(self.open):] if section.startswith(self.open) else section
        body = body.rstrip()
        return body[:-len(self.close)] if body.endswith(self.close) else body

    def _value(self, raw: str) -> str:
        if self.newlines:
            raw = raw.removeprefix("\n").removesuffix("\n")
        return raw

    def _parameters(self, inner: str) -> tuple[dict[str, Any], int]:
        """The whole parameters at the start of a function's inside, and where they end."""
        args: dict[str, Any] = {}
        pos = 0
        while (m := _PARAMETER.match(inner, pos)) is not None:
            args[m.group(1).strip()] = decode_value(self._value(m.group(2)))
            pos = m.end()
        return args, pos

    def _arguments(self, inner: str) -> dict[str, Any] | None:
        args, pos = self._parameters(inner)
        return args if not inner[pos:].strip() else None

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        body, calls, pos = self._body(section), [], 0
        while (m := _FUNCTION.match(body, pos)) is not None:
            name, args = m.group(1).strip(), self._arguments(m.group(2))
            if args is None or name not in names:
                return None
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
            pos = m.end()
        return calls if calls and pos == len(body) else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        body, calls, pos = self._body(section), [], 0
        while (m := _FUNCTION.match(body, pos)) is not None:
            args = self._arguments(m.group(2))
            if m.group(1).strip() in names and args is not None:
                calls.append(ToolCall(m.group(1).strip(), json.dumps(args, ensure_ascii=False)))
            pos = m.end()
        cut = _OPEN_FUNCTION.match(body, pos)
        if cut is not None and cut.group(1).strip() in names:
            calls.append(ToolCall(cut.group(1).strip(), self._cut_arguments(cut.group(2))))
        return calls

    def _cut_arguments(self, inner: str) -> str:
        """The arguments of a call cut inside its function: the JSON of what was written, left open."""
        args, pos = self._parameters(inner)
        cut = _OPEN_PARAMETER.match(inner, pos)
        if cut is None:
            return json.dumps(args, ensure_ascii=False)[:-1]
        value = cut.group(2).removeprefix("\n") if self.newlines else cut.group(2)
        args[cut.group(1).strip()] = value
        return json.dumps(args, ensure_ascii=False)[:-2]  # the string goes on: no closing quote or brace

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        alts = []
        for tool in tools:
            props: dict[str, Any] = tool.schema.get("properties") or {}
            required = [k for k in props if k in (tool.schema.get("required") or [])]
            parts = [literal(f"{FUNCTION}{tool.name}>\n")]
            parts += [self._parameter_rule(b, tool, key, props[key]) for key in required]
            parts += [f"{self._parameter_rule(b, tool, key, props[key])}?" for key in props if key not in required]
            alts.append(b.add(" ".join([*parts, literal(FUNCTION_END + "\n")])))
        block = b.add(f'{literal(self.open + chr(10))} ({" | ".join(alts)}) {literal(self.close)}')
        if max_calls == 1:
            return block
        return b.add(f'{block} ("\\n" {block}){{0,{max_calls - 1}}}')

    def _parameter_rule(self, b: RuleBuilder, tool: ToolRule, key: str, schema: Any) -> str:
        """One `<parameter=KEY>`: raw text for a string, bare words for a string enum, else the JSON
        value its schema allows (which reads back as that JSON)."""
        sep = "\n" if self.newlines else ""
        enum = schema.get("enum") if isinstance(schema, dict) else None
        if _is_text(schema):
            value = b.add(_RAW_TEXT, "text")
        elif isinstance(enum, list) and all(isinstance(v, str) and "<" not in v and decode_value(v) == v
                                            for v in enum):
            value = b.add(" | ".join(literal(v) for v in enum))
        else:
            value = tool.value(schema, key)
        head, tail = literal(f"<parameter={key}>{sep}"), literal(f"{sep}{PARAMETER_END}\n")
        return b.add(f"{head} {value} {tail}")


_PRESERVED = ("<think>", "</think>", "<tool_call>", "</tool_call>")
QWEN3_CODER = ChatFormat(
    "qwen3-coder", XmlFunctionSyntax("qwen3-coder", bare_function=True), reasoning=None,
    preserved=("<tool_call>", "</tool_call>"),
    note="<tool_call><function=NAME><parameter=KEY> blocks (the first <tool_call> may be left out); no reasoning")
QWEN3_5 = ChatFormat(
    "qwen3.5", XmlFunctionSyntax("qwen3.5"), Reasoning(), preserved=_PRESERVED,
    note="<tool_call><function=NAME><parameter=KEY> blocks; <think> opened by the template")
NEMOTRON_3 = ChatFormat(
    "nemotron-3", XmlFunctionSyntax("nemotron-3"), Reasoning(), preserved=_PRESERVED,
    note="<tool_call><function=NAME><parameter=KEY> blocks; <think> opened by the template")
SEED_OSS = ChatFormat(
    "seed-oss",
    XmlFunctionSyntax("seed-oss", open="<seed:tool_call>", close="</seed:tool_call>", newlines=False),
    Reasoning("<seed:think>", "</seed:think>"),
    preserved=("<seed:think>", "</seed:think>", "<seed:tool_call>", "</seed:tool_call>",
               "<seed:cot_budget_reflect>", "</seed:cot_budget_reflect>"),
    note="<seed:tool_call><function=NAME><parameter=KEY>VALUE</parameter> blocks; <seed:think> reasoning")


def _xml_calls(template: str) -> bool:
    return FUNCTION in template and "<parameter=" in template


DETECT = [
    (20, lambda t: "<seed:tool_call>" in t, SEED_OSS),
    (25, lambda t: _xml_calls(t) and "truncate_history_thinking" in t, NEMOTRON_3),
    (30, lambda t: _xml_calls(t) and "<think>" in t, QWEN3_5),
    (35, _xml_calls, QWEN3_CODER),
]
