"""GigaChat 3 / 3.1's calls: one JSON object {"name", "arguments"} after a marker that opens the call.

    3:   <|message_sep|>\\n\\nfunction call<|role_sep|>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}
    3.1: <|function_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}

The templates render one call a turn (tool_calls[0]), and llama.cpp forces one at most: so do we.
Neither thinks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .base import ChatFormat, RuleBuilder, ToolCall, ToolRule, ToolSyntax, as_call, json_value_end, literal, loads_prefix
from .hermes import partial_call

MESSAGE_SEP, ROLE_SEP, FUNCTION_CALL = "<|message_sep|>", "<|role_sep|>", "<|function_call|>"
V3_OPEN = f"{MESSAGE_SEP}\n\nfunction call{ROLE_SEP}\n"


class GigaChatSyntax(ToolSyntax):
    """One call: `marker` then the call's JSON object; the section ends where the object does."""

    def __init__(self, name: str, marker: str) -> None:
        self.name, self.marker = name, marker
        self.starts = (marker,)

    def section_end(self, text: str) -> int | None:
        body = text[len(self.marker):]
        lead = len(body) - len(body.lstrip())
        if not body.strip():
            return None
        if body[lead] != "{":
            return len(self.marker)  # no object follows: not a call (parse says so, the text stays content)
        end = json_value_end(text, len(self.marker) + lead)
        return end

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        found = loads_prefix(section, len(self.marker))
        if found is None or section[found[1]:].strip():
            return None
        call = as_call(found[0], names)
        return [call] if call is not None else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        whole = self.parse(section, names)
        if whole is not None:
            return whole
        partial = partial_call(section[len(self.marker):], names)
        return [partial] if partial is not None else []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # One call whatever max_calls: the templates keep only the first call of a turn.
        alts = [b.add(f'{literal("{" + chr(34) + "name" + chr(34) + ": " + json.dumps(t.name) + ", ")} '
                      f'{literal(chr(34) + "arguments" + chr(34) + ": ")} {t.arguments} "}}"') for t in tools]
        return b.add(f'{literal(self.marker)} ({" | ".join(alts)})', "call")


GIGACHAT_3 = ChatFormat(
    "gigachat-3", GigaChatSyntax("gigachat-3", V3_OPEN), reasoning=None,
    preserved=(MESSAGE_SEP, ROLE_SEP, f"{MESSAGE_SEP}\n\n", f"{ROLE_SEP}\n"),
    note='one call a turn: <|message_sep|>\\n\\nfunction call<|role_sep|>\\n{"name", "arguments"}; no reasoning')
GIGACHAT_3_1 = ChatFormat(
    "gigachat-3.1", GigaChatSyntax("gigachat-3.1", FUNCTION_CALL), reasoning=None,
    preserved=(FUNCTION_CALL, MESSAGE_SEP, ROLE_SEP),
    note='one call a turn: <|function_call|>{"name", "arguments"}; no reasoning')


def _gigachat(src: str) -> bool:
    return ROLE_SEP in src and MESSAGE_SEP in src


DETECT = [
    (20, lambda src: _gigachat(src) and FUNCTION_CALL in src, GIGACHAT_3_1),
    (21, lambda src: _gigachat(src) and "function call" in src, GIGACHAT_3),
]
