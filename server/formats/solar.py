"""Upstage Solar Open's messages: the prompt ends `<|begin|>assistant`, and the model goes on with a thinking
message, then an answer or its calls:

    <|think|>THOUGHTS<|end|><|begin|>assistant<|content|>ANSWER<|end|>
    <|think|>THOUGHTS<|end|><|begin|>assistant<|tool_calls|><|tool_call:begin|>a1b2c3d4e5<|tool_call:name|>
        get_weather<|tool_call:args|>{"city": "Paris"}<|tool_call:end|><|calls|>

The thinking message is the reasoning block (<|think|> to <|end|>); the answer's framing is dropped from
the content (ChatFormat.wrappers); calls carry their own ids (10 lowercase letters or digits), kept.
llama.cpp has no parser of its own for it (nor test-chat.cpp cases): this follows the template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal, loads_prefix

THINK, END, BEGIN, CONTENT = "<|think|>", "<|end|>", "<|begin|>assistant", "<|content|>"
TOOL_CALLS, CALLS = "<|tool_calls|>", "<|calls|>"
CALL_BEGIN, CALL_NAME, CALL_ARGS, CALL_END = "<|tool_call:begin|>", "<|tool_call:name|>", "<|tool_call:args|>", \
    "<|tool_call:end|>"
_HEAD = re.compile(rf"\s*{re.escape(CALL_BEGIN)}([^<]*){re.escape(CALL_NAME)}([^<]*){re.escape(CALL_ARGS)}")


class SolarSyntax(ToolSyntax):
    """Calls back to back, after <|tool_calls|> (or from the first call's own marker); <|calls|> or any
    other text after a call's end closes the section."""

    name = "solar-open"
    starts = (TOOL_CALLS, CALL_BEGIN)

    def section_end(self, text: str) -> int | None:
        pos = len(TOOL_CALLS) if text.startswith(TOOL_CALLS) else 0
        while True:
            rest = text[pos:].lstrip()
            at = len(text) - len(rest)
            if rest.startswith(CALLS):
                return at + len(CALLS)
            if CALL_BEGIN.startswith(rest) or CALLS.startswith(rest):
                return None  # nothing yet, or a marker's beginning
            if not rest.startswith(CALL_BEGIN):
                return at  # other text: the calls are over
            end = text.find(CALL_END, at)
            if end < 0:
                return None
            pos = end + len(CALL_END)

    @staticmethod
    def _call(name: str, arguments: str, call_id: str) -> ToolCall:
        call = ToolCall(name, arguments)
        if call_id:
            call.id = call_id
        return call

    def _calls(self, section: str, names: set[str], *, cut: bool) -> list[ToolCall] | None:
        pos = len(TOOL_CALLS) if section.startswith(TOOL_CALLS) else 0
        calls: list[ToolCall] = []
        while (m := _HEAD.match(section, pos)) is not None:
            call_id, name = m.group(1).strip(), m.group(2).strip()
            found = loads_prefix(section, m.end())
            if found is None or not section[found[1]:].lstrip().startswith(CALL_END):
                if cut and name in names:  # the last call, cut: its arguments as written so far
                    end = section.find(CALL_END, m.end())
                    calls.append(self._call(name, section[m.end():None if end < 0 else end].strip(), call_id))
                return calls if cut else None
            if name in names and isinstance(found[0], dict):
                calls.append(self._call(name, json.dumps(found[0], ensure_ascii=False), call_id))
            pos = section.index(CALL_END, found[1]) + len(CALL_END)
        rest = section[pos:].strip()
        if not cut and rest not in ("", CALLS):
            return None
        return calls

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        return self._calls(section, names, cut=False) or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        return self._calls(section, names, cut=True) or []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # The rule stops at the last call's end: <|calls|> ends the turn (the template writes it as the
        # turn's end marker), as gpt-oss's <|call|> (harmony.py).
        call_id = b.add("[a-z0-9]{10}", "id")
        alts = [b.add(f"{literal(t.name + CALL_ARGS)} {t.arguments}", "call") for t in tools]
        call = b.add(f'{literal(CALL_BEGIN)} {call_id} {literal(CALL_NAME)} ({" | ".join(alts)}) {literal(CALL_END)}')
        calls = call if max_calls == 1 else f"{call}{{1,{max_calls}}}"
        return b.add(f"{literal(TOOL_CALLS)} {calls}")


SOLAR_OPEN = ChatFormat(
    "solar-open", SolarSyntax(), Reasoning(THINK, END),
    # The answer's framing; the first drops the pair whole, before its parts are looked for.
    wrappers=(BEGIN + CONTENT, BEGIN, CONTENT, END),
    preserved=(THINK, END, "<|begin|>", CONTENT, TOOL_CALLS, CALLS, CALL_BEGIN, CALL_NAME, CALL_ARGS, CALL_END),
    note="<|tool_calls|> with <|tool_call:begin|>ID<|tool_call:name|>NAME<|tool_call:args|>{...}<|tool_call:end|> "
         "calls; a <|think|> message as reasoning, <|content|> as the answer")

DETECT = [(20, lambda src: CALL_BEGIN in src and CALL_ARGS in src, SOLAR_OPEN)]
