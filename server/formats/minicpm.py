"""MiniCPM 5's calls: one XML element a call, a <param> element an argument,

    <function name="get_weather"><param name="city">Paris</param></function>

a value with `<`, `&` or a newline in it wrapped in <![CDATA[...]]> (its text, always a string); any other
value is JSON when it parses as JSON, else the raw text, as llama.cpp's minicpm5 parser reads it. Parallel
calls are successive elements. Thinks in <think>, which the template opens with enable_thinking.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal
from .minimax import THINK, params_rule, xml_value

OPEN, CLOSE = '<function name="', "</function>"
PARAM_CLOSE = "</param>"
CDATA, CDATA_END = "<![CDATA[", "]]>"
_HEAD = re.compile(r'<function name="([^"]*)">')
_PARAM = re.compile(r'\s*<param name="([^"]*)">')


def _skip_cdata(text: str, at: int) -> int | None:
    """Where the CDATA block opening at `at` ends (its text may hold any closing tag), None if not yet."""
    end = text.find(CDATA_END, at + len(CDATA))
    return None if end < 0 else end + len(CDATA_END)


class MiniCpmSyntax(ToolSyntax):
    name = "minicpm5"
    starts = (OPEN,)

    def section_end(self, text: str) -> int | None:
        pos = 0
        while True:
            close, cdata = text.find(CLOSE, pos), text.find(CDATA, pos)
            if 0 <= cdata < close or (cdata >= 0 > close):
                skipped = _skip_cdata(text, cdata)
                if skipped is None:
                    return None
                pos = skipped
                continue
            return None if close < 0 else close + len(CLOSE)

    def _read(self, section: str, names: set[str]) -> tuple[ToolCall | None, bool]:
        """The call a section holds (its closed parameters), and whether it was whole."""
        head = _HEAD.match(section)
        if head is None or head.group(1) not in names:
            return None, False
        args: dict[str, Any] = {}
        pos = head.end()
        while (m := _PARAM.match(section, pos)) is not None:
            value, pos = self._value(section, m.end())
            if pos < 0:
                break
            args[m.group(1)] = value
        whole = section[pos:].strip() == CLOSE if pos >= 0 else False
        return ToolCall(head.group(1), json.dumps(args, ensure_ascii=False)), whole

    @staticmethod
    def _value(section: str, at: int) -> tuple[Any, int]:
        """A parameter's value starting at `at`, and where its </param> ends (-1 if it does not)."""
        if section.startswith(CDATA, at):
            end = section.find(CDATA_END, at + len(CDATA))
            if end < 0 or not section.startswith(PARAM_CLOSE, end + len(CDATA_END)):
                return None, -1
            return section[at + len(CDATA):end], end + len(CDATA_END) + len(PARAM_CLOSE)
        end = section.find(PARAM_CLOSE, at)
        if end < 0:
            return None, -1
        return xml_value(section[at:end]), end + len(PARAM_CLOSE)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        call, whole = self._read(section, names)
        return [call] if call is not None and whole else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        # The name is whole once its tag closes; the arguments are the parameters it closed.
        call, _ = self._read(section, names)
        return [call] if call is not None else []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        def param(key: str, value: str, raw: bool) -> str:
            return f"{literal(f'<param name={json.dumps(key)}>')} {value} {literal(PARAM_CLOSE)}"

        alts = [b.add(f"{literal(f'{OPEN}{t.name}{chr(34)}>')} {params_rule(b, t, param)} {literal(CLOSE)}", "call")
                for t in tools]
        call = b.add(" | ".join(alts), "calls")
        # The template writes each further call on a line of its own.
        return call if max_calls == 1 else b.add(f'{call} ("\\n" {call}){{0,{max_calls - 1}}}')


MINICPM5 = ChatFormat(
    "minicpm5", MiniCpmSyntax(), Reasoning(*THINK),
    preserved=("<function", "<param", CLOSE, PARAM_CLOSE, *THINK),
    note='<function name="NAME"><param name="KEY">VALUE</param></function> calls (CDATA for text); '
         "<think> opened by the template")

DETECT = [(20, lambda src: "Tool usage guidelines:" in src and OPEN in src and '<param name="' in src, MINICPM5)]
