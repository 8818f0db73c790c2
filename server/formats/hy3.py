"""Tencent Hy3's calls: a <tool_calls:opensource> block of calls, each its name then tagged argument pairs,

    <tool_calls:opensource>
    <tool_call:opensource>get_weather<tool_sep:opensource>
    <arg_key:opensource>city</arg_key:opensource>
    <arg_value:opensource>Paris</arg_value:opensource>
    </tool_call:opensource>
    </tool_calls:opensource>

(every tag carries the `:opensource` suffix its template adds). A value is JSON when it parses as JSON, else
the raw text (minimax.py's xml_value), as the template writes a string raw and anything else as JSON.
Thinks in <think:opensource>, which the template opens for reasoning_effort low or high.
llama.cpp has no parser of its own for it (nor test-chat.cpp cases): this follows the template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal
from .minimax import params_rule, xml_value


def _tag(name: str) -> tuple[str, str]:
    return f"<{name}:opensource>", f"</{name}:opensource>"


CALLS_OPEN, CALLS_CLOSE = _tag("tool_calls")
CALL_OPEN, CALL_CLOSE = _tag("tool_call")
SEP = "<tool_sep:opensource>"
KEY_OPEN, KEY_CLOSE = _tag("arg_key")
VALUE_OPEN, VALUE_CLOSE = _tag("arg_value")
THINK = _tag("think")
_CALL = re.compile(rf"{re.escape(CALL_OPEN)}\s*([^<\s]+)\s*{re.escape(SEP)}(.*?)(?:{re.escape(CALL_CLOSE)}|\Z)", re.S)
_PAIR = re.compile(rf"{re.escape(KEY_OPEN)}(.*?){re.escape(KEY_CLOSE)}\s*{re.escape(VALUE_OPEN)}(.*?)"
                   rf"{re.escape(VALUE_CLOSE)}", re.S)


class Hy3Syntax(ToolSyntax):
    name = "hy3"
    starts = (CALLS_OPEN,)

    def section_end(self, text: str) -> int | None:
        end = text.find(CALLS_CLOSE)
        return None if end < 0 else end + len(CALLS_CLOSE)

    @staticmethod
    def _calls(section: str, names: set[str], *, whole: bool) -> list[ToolCall]:
        calls = []
        for m in _CALL.finditer(section):
            closed = m.group(0).endswith(CALL_CLOSE)
            if m.group(1) in names and (closed or not whole):
                args = {p.group(1).strip(): xml_value(p.group(2)) for p in _PAIR.finditer(m.group(2))}
                calls.append(ToolCall(m.group(1), json.dumps(args, ensure_ascii=False)))
        return calls

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        return self._calls(section, names, whole=True) or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        # A name is whole at its <tool_sep>; the last call's arguments are the pairs it closed.
        return self._calls(section, names, whole=False)

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        def param(key: str, value: str, raw: bool) -> str:
            return f"{literal(f'{KEY_OPEN}{key}{KEY_CLOSE}{chr(10)}{VALUE_OPEN}')} {value} {literal(VALUE_CLOSE + chr(10))}"

        alts = [b.add(f"{literal(f'{CALL_OPEN}{t.name}{SEP}{chr(10)}')} {params_rule(b, t, param)} "
                      f"{literal(CALL_CLOSE + chr(10))}", "call") for t in tools]
        call = b.add(" | ".join(alts), "calls")
        calls = call if max_calls == 1 else f"{call}{{1,{max_calls}}}"
        return b.add(f"{literal(CALLS_OPEN + chr(10))} {calls} {literal(CALLS_CLOSE)}")


HY3 = ChatFormat(
    "hy3", Hy3Syntax(), Reasoning(*THINK),
    preserved=(CALLS_OPEN, CALLS_CLOSE, CALL_OPEN, CALL_CLOSE, SEP, KEY_OPEN, KEY_CLOSE, VALUE_OPEN, VALUE_CLOSE,
               *THINK),
    note="<tool_calls:opensource> blocks of <tool_call:opensource>NAME<tool_sep:opensource> with tagged "
         "argument pairs; <think:opensource> opened by the template (reasoning_effort low / high)")

# The template builds its tags with .format(HYTK): its source spells the pieces, not the tags.
DETECT = [(20, lambda src: "hy_Assistant" in src and "<tool_sep{}>" in src, HY3)]
