"""Cohere's Command R family: a JSON list of calls after a marker.

Command R7B (and Cohere2 MoE, which opens the thinking block in its prompt and wraps answers in
<|START_TEXT|>) thinks and acts between control tokens:

    <|START_THINKING|>I'll look it up.<|END_THINKING|><|START_ACTION|>[
        {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}
    ]<|END_ACTION|>

Command R+ writes an `Action:` line and a fenced list:

    Action:
    ```json
    [{"tool_name": "get_weather", "parameters": {"city": "Paris"}}]
    ```

JsonListSyntax reads any "marker, then a JSON list of call objects, then an optional closing marker"
(Granite 3.3's <|tool_call|> too, formats/granite.py).
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
    as_call,
    json_value_end,
    literal,
    loads_prefix,
)

_FENCE = "```"


def _string_field(key: str) -> re.Pattern[str]:
    return re.compile(rf'"{re.escape(key)}"\s*:\s*"((?:[^"\\]|\\.)*)"')


class JsonListSyntax(ToolSyntax):
    """`open`, optionally a ```json fence, a JSON list of call objects (or one object), then `close`.

    Each object names its tool under `name_key` and holds its arguments under `args_key`; `id_key`, when
    set, is the model's own id for the call (Command R7B numbers its calls, and llama.cpp keeps that id).
    """

    def __init__(self, name: str, open_: str, close: str = "", *, fenced: bool = False, name_key: str = "name",
                 args_key: str = "arguments", id_key: str | None = None) -> None:
        self.name = name
        self.starts = (open_,)
        self.open, self.close, self.fenced = open_, close, fenced
        self.name_key, self.args_key, self.id_key = name_key, args_key, id_key
        self._name_re, self._args_re = _string_field(name_key), re.compile(rf'"{re.escape(args_key)}"\s*:\s*')
        self._id_re = _string_field(id_key) if id_key else None

    # --- reading ------------------------------------------------------------------------------

    def _list_start(self, text: str) -> int | None:
        """Where the JSON begins after the marker (and the fence); -1 when what follows is not JSON;
        None while the text may still become the lead up to it."""
        i = len(self.open)
        lead = text[i:].lstrip()
        i = len(text) - len(lead)
        if self.fenced:
            if not lead or (_FENCE + "json").startswith(lead):
                return None
            if lead.startswith(_FENCE):
                i += len(_FENCE) + (4 if lead.startswith(_FENCE + "json") else 0)
                rest = text[i:].lstrip()
                i, lead = len(text) - len(rest), rest
        if not lead:
            return None
        return i if lead[0] in "[{" else -1

    def section_end(self, text: str) -> int | None:
        start = self._list_start(text)
        if start is None or start < 0:
            return None if start is None else len(self.open)
        end = json_value_end(text, start)
        if end is None or not self.close:
            return end
        tail = text[end:].lstrip()
        if tail.startswith(self.close):
            return len(text) - len(tail) + len(self.close)
        # A closing marker still being written (or the whitespace before it): wait for it.
        return None if self.close.startswith(tail) else end

    def _call(self, obj: object, names: set[str]) -> ToolCall | None:
        call = as_call(obj, names, name_key=self.name_key, args_keys=(self.args_key,))
        if call is not None and self.id_key and isinstance(obj, dict):
            own = obj.get(self.id_key)
            if isinstance(own, str | int) and str(own):
                call.id = str(own)
        return call

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        start = self._list_start(section)
        found = loads_prefix(section, start) if start is not None and start >= 0 else None
        if found is None:
            return None
        value = found[0]
        items = value if isinstance(value, list) else [value]
        # Calls to tools the request did not name (Command R+'s built-in `directly-answer`) are left out.
        calls = [c for c in (self._call(item, names) for item in items) if c is not None]
        return calls or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        start = self._list_start(section)
        if start is None or start < 0:
            return []
        calls: list[ToolCall] = []
        i = start + 1 if section[start] == "[" else start
        while True:
            while i < len(section) and section[i] in " \t\r\n,":
                i += 1
            end = json_value_end(section, i) if section[i:i + 1] == "{" else None
            if end is None:
                partial = self._partial(section[i:], names)
                return calls + ([partial] if partial else [])
            try:
                call = self._call(json.loads(section[i:end]), names)
            except NOT_JSON:
                return calls
            if call is not None:
                calls.append(call)
            i = end

    def _partial(self, text: str, names: set[str]) -> ToolCall | None:
        """The call an unfinished object began: its name (and id), the arguments written so far."""
        name = self._name_re.search(text)
        if name is None or json.loads(f'"{name.group(1)}"') not in names:
            return None
        args = self._args_re.search(text, name.end())
        call = ToolCall(json.loads(f'"{name.group(1)}"'), text[args.end():].strip() if args else "")
        own = self._id_re.search(text) if self._id_re else None
        if own is not None:
            call.id = own.group(1)
        return call

    # --- forcing ------------------------------------------------------------------------------

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ws = b.base("ws")
        ident = f'{literal(json.dumps(self.id_key) + ": ")} "\\"" [0-9]{{1,3}} "\\"" ", " ' if self.id_key else ""
        alts = [b.add(f'"{{" {ident}{literal(f"{json.dumps(self.name_key)}: {json.dumps(t.name)}, ")} '
                      f'{literal(json.dumps(self.args_key) + ": ")} {t.arguments} "}}"') for t in tools]
        item = b.add(" | ".join(alts))
        items = item if max_calls == 1 else f'{item} ("," {ws} {item}){{0,{max_calls - 1}}}'
        lead = "\n" + _FENCE + "json\n" if self.fenced else ""
        tail = "\n" + self.close if self.fenced else self.close
        return b.add(f"{literal(self.open + lead + '[')} {items} {literal(']' + tail)}")


COMMAND_R7B_ACTION = JsonListSyntax("command-r7b", "<|START_ACTION|>", "<|END_ACTION|>", name_key="tool_name",
                                    args_key="parameters", id_key="tool_call_id")
_THINKING = Reasoning("<|START_THINKING|>", "<|END_THINKING|>")
_R7B_MARKERS = ("<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>")

COMMAND_R7B = ChatFormat(
    "command-r7b", COMMAND_R7B_ACTION, _THINKING,
    wrappers=("<|START_RESPONSE|>", "<|END_RESPONSE|>"),
    preserved=(*_R7B_MARKERS, "<|START_RESPONSE|>", "<|END_RESPONSE|>"),
    note="Command R7B: <|START_THINKING|> reasoning, <|START_ACTION|>[{tool_call_id, tool_name, parameters}] calls",
)

# The prompt opens <|START_THINKING|> itself (closed at once when reasoning is off: reasoning_effort "none").
COHERE2_MOE = ChatFormat(
    "cohere2-moe", COMMAND_R7B_ACTION, _THINKING,
    wrappers=("<|START_TEXT|>", "<|END_TEXT|>"),
    preserved=(*_R7B_MARKERS, "<|START_TEXT|>", "<|END_TEXT|>"),
    note="Cohere2 MoE: thinking opened by the prompt, <|START_TEXT|> answers, <|START_ACTION|> calls as R7B",
)

COMMAND_R_PLUS = ChatFormat(
    "command-r-plus",
    JsonListSyntax("command-r-plus", "Action:", _FENCE, fenced=True, name_key="tool_name", args_key="parameters"),
    None,
    # Special tokens, rendered as nothing by the engine; dropped here too should a model write them as text.
    wrappers=("<|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    note="Command R+: `Action:` and a ```json list of {tool_name, parameters}; no reasoning",
)

DETECT = [
    (20, lambda t: "<|START_TEXT|>" in t and "<|START_ACTION|>" in t, COHERE2_MOE),
    (25, lambda t: "<|START_ACTION|>" in t, COMMAND_R7B),
    (40, lambda t: "<|CHATBOT_TOKEN|>" in t and "Action:" in t and "```json" in t, COMMAND_R_PLUS),
]
