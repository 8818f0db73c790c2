"""Kimi K3's XTML: sections opened by <|open|>TAG<|sep|> and closed by <|close|>TAG<|sep|>, as llama.cpp's kimi-k3
parser reads them. The prompt opens the think section; the answer follows in a response section, the calls in a
tools section, one argument a tag (its JSON type in an attribute: a string's text is written as it is):

    I should call it<|close|>think<|sep|><|open|>response<|sep|>On it.<|close|>response<|sep|>
    <|open|>tools<|sep|><|open|>call tool="get_weather" index="1"<|sep|>
    <|open|>argument key="city" type="string"<|sep|>Paris<|close|>argument<|sep|><|close|>call<|sep|>
    <|close|>tools<|sep|><|close|>message<|sep|>

The response and message markers are dropped from the content. Kimi K2's syntax is kimi.py's.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .base import NOT_JSON, ChatFormat, Reasoning, RuleBuilder, ToolRule, literal
from .minimax import params_rule, xml_value
from .minimax_m1 import TaggedCallsSyntax

OPEN, CLOSE, SEP, END_OF_MSG = "<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>"


def opened(tag: str) -> str:
    return f"{OPEN}{tag}{SEP}"


def closed(tag: str) -> str:
    return f"{CLOSE}{tag}{SEP}"


TOOLS_START, TOOLS_END = opened("tools"), closed("tools")
_O, _C, _S = re.escape(OPEN), re.escape(CLOSE), re.escape(SEP)
_CALL = re.compile(rf'{_O}call tool="([^"]*)"[^<]*?{_S}(.*?)(?:{_C}call{_S}|\Z)', re.S)
_ARG = re.compile(rf'{_O}argument key="([^"]*)"(?: type="([^"]*)")?[^<]*?{_S}(.*?){_C}argument{_S}', re.S)
_JSON = re.compile(rf"{_O}json[^<]*?{_S}(.*?){_C}json{_S}", re.S)
# The type attribute a forced value carries, from its schema's type (others are written without one).
_TYPES = {"integer": "number", "number": "number", "boolean": "boolean", "object": "object", "array": "array",
          "null": "null"}


class XtmlSyntax(TaggedCallsSyntax):
    name = "kimi-k3"
    starts, close, call = (TOOLS_START,), TOOLS_END, _CALL

    def call_name(self, written: str) -> str:
        return html.unescape(written)

    def arguments(self, body: str, *, cut: bool) -> dict[str, Any] | None:
        """A call's arguments: its argument tags (a string's text kept as it is), or a JSON block; None if neither
        reads. `cut`: the arguments whole so far."""
        block = _JSON.search(body)
        if block is not None:
            try:
                args = json.loads(block.group(1))
            except NOT_JSON:
                return None
            return args if isinstance(args, dict) else None
        if cut and _O + "json" in body:
            return {}
        return {html.unescape(m.group(1)): m.group(3) if m.group(2) == "string" else xml_value(m.group(3))
                for m in _ARG.finditer(body)}

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        alts = []
        for t in tools:
            head = f'{literal(f"{OPEN}call tool={chr(34)}{_attr(t.name)}{chr(34)} index={chr(34)}")} [0-9]{{1,3}} '
            args = params_rule(b, t, _param(t.schema.get("properties") or {}))
            alts.append(b.add(f"{head}{literal(chr(34) + SEP)} {args} {literal(closed('call'))}", "call"))
        call = b.add(" | ".join(alts), "calls")
        calls = call if max_calls == 1 else f"{call}{{1,{max_calls}}}"
        return b.add(f"{literal(TOOLS_START)} {calls} {literal(TOOLS_END)}")


def _param(props: dict[str, Any]) -> Callable[[str, str, bool], str]:
    """One argument tag's rule: a plain string's text as it is, any other value as JSON; the type attribute
    from the schema's type (none where the schema names no one JSON type: the value says it)."""
    def param(key: str, value: str, raw: bool) -> str:
        schema = props.get(key)
        kind = "string" if raw else _TYPES.get(str(schema.get("type"))) if isinstance(schema, dict) else None
        attrs = f'key="{_attr(key)}"' + (f' type="{kind}"' if kind else "")
        return f"{literal(OPEN + 'argument ' + attrs + SEP)} {value} {literal(closed('argument'))}"
    return param


def _attr(value: str) -> str:
    """An attribute's value as the template escapes it."""
    return value.replace("&", "&amp;").replace('"', "&quot;")


KIMI_K3 = ChatFormat(
    "kimi-k3", XtmlSyntax(), Reasoning(opened("think"), closed("think")),
    wrappers=(f'{OPEN}message role="assistant"{SEP}', opened("response"), closed("response"), closed("message"),
              END_OF_MSG),
    # Only the markers are special tokens: the tag names are words, and prose may use them (llama.cpp's list).
    preserved=(OPEN, CLOSE, SEP, END_OF_MSG),
    note="XTML: <|open|>tools<|sep|> sections of call tags with one argument tag each; <|open|>think<|sep|> "
         "reasoning the prompt opens")

DETECT = [(20, lambda src: OPEN in src and CLOSE in src and END_OF_MSG in src, KIMI_K3)]
