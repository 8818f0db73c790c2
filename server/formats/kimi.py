"""Kimi K2's calls (K2, K2-Instruct, K2-Thinking): a section of JSON calls whose id names the function:

    <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>

The id (`functions.NAME:INDEX`, the index counting the conversation's calls) is kept as the call's id; the
template writes its own ids into the history, from the calls' order. K2-Thinking reasons in <think>. As
llama.cpp's kimi-k2 parser does, a call written without the section around it (K2 does, after thinking)
is read too: that section ends with its call. Kimi K3 writes another syntax (<|open|>tool...) and is not this.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import (
    NOT_JSON,
    ChatFormat,
    Reasoning,
    RuleBuilder,
    ToolCall,
    ToolRule,
    ToolSyntax,
    json_value_end,
    literal,
)

SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL_BEGIN, ARGS_BEGIN, CALL_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
THINK = ("<think>", "</think>")
_CALL = re.compile(rf"{re.escape(CALL_BEGIN)}\s*(.*?)\s*{re.escape(ARGS_BEGIN)}(.*?)"
                   rf"(?:{re.escape(CALL_END)}|(?={re.escape(CALL_BEGIN)})|{re.escape(SECTION_END)}|\Z)", re.S)
_ID = re.compile(r"(?:functions\.)?(.+?)(?::\d+)?")


def _call(call_id: str, args: str) -> ToolCall:
    m = _ID.fullmatch(call_id)
    return ToolCall(m.group(1) if m else call_id, args, call_id)


class KimiSyntax(ToolSyntax):
    name = "kimi-k2"
    starts = (SECTION_BEGIN, CALL_BEGIN)

    def section_end(self, text: str) -> int | None:
        if text.startswith(SECTION_BEGIN):
            end = text.find(SECTION_END)
            return None if end < 0 else end + len(SECTION_END)
        # A bare call: it ends with its arguments' object, and the <|tool_call_end|> after it if one comes.
        args = text.find(ARGS_BEGIN)
        start = args + len(ARGS_BEGIN) if args >= 0 else -1
        while 0 <= start < len(text) and text[start].isspace():
            start += 1
        if start < 0 or start >= len(text):
            return None
        close = json_value_end(text, start)
        if close is None:
            return None
        rest = text[close:].lstrip()
        if rest.startswith(CALL_END):
            return len(text) - len(rest) + len(CALL_END)
        return None if CALL_END.startswith(rest) else close

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        calls = []
        for m in _CALL.finditer(section):
            call = _call(m.group(1), m.group(2).strip())
            if call.name not in names:
                continue
            try:
                args = json.loads(call.arguments)
            except NOT_JSON:
                return None
            if not isinstance(args, dict):
                return None
            call.arguments = json.dumps(args, ensure_ascii=False)
            calls.append(call)
        return calls or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        calls = [_call(m.group(1), m.group(2).strip()) for m in _CALL.finditer(section)]
        return [c for c in calls if c.name in names]

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # The call's index: bounded, or a small model may write digits until max_tokens.
        alts = [b.add(f"{literal(f'functions.{t.name}:')} [0-9]{{1,3}} {literal(ARGS_BEGIN)} {t.arguments}")
                for t in tools]
        call = b.add(f'{literal(CALL_BEGIN)} ({" | ".join(alts)}) {literal(CALL_END)}', "call")
        calls = call if max_calls == 1 else f"{call}{{1,{max_calls}}}"
        return b.add(f"{literal(SECTION_BEGIN)} {calls} {literal(SECTION_END)}")


KIMI_K2 = ChatFormat(
    "kimi-k2", KimiSyntax(), Reasoning(*THINK, ends=(SECTION_BEGIN, CALL_BEGIN)),
    preserved=(SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGS_BEGIN, CALL_END, *THINK),
    # The template writes a string's text as it is and a mapping through tojson: the string keeps the model's own.
    note="<|tool_calls_section_begin|> sections of functions.NAME:N calls with JSON arguments; <think> reasoning (K2-Thinking)")

DETECT = [(20, lambda src: SECTION_BEGIN in src, KIMI_K2)]
