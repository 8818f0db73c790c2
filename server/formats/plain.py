"""Families whose templates have no tool syntax (Phi 3.5, Gemma 2 and 3: tools go in nomoat's system
message as <tool_call> blocks), and Gemma 4, the Gemma that has one of its own:

    <|channel>thought\\n...<channel|><|tool_call>call:get_time{city:<|"|>Paris<|"|>,days:3}<tool_call|>

Gemma 4's arguments are its own notation, not JSON: bare keys, strings between `<|"|>` marks, JSON's
numbers, booleans, null, lists and dicts otherwise; they are read into a JSON object here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .base import NOT_JSON, ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal
from .hermes import HermesSyntax

# --- no tool syntax: nomoat's own <tool_call> blocks, described in a system message ---------------

PHI3 = ChatFormat("phi-3.5", HermesSyntax(), reasoning=None, native_tools=False,
                  note="Phi 3.5: no tool syntax of its own (tools in a system message, <tool_call> blocks)")
# Gemma 2's template refuses a system message: the renderer must fold one into the first user turn.
GEMMA = ChatFormat("gemma", HermesSyntax(), reasoning=None, native_tools=False,
                   note="Gemma 2/3: no tool syntax of its own (tools in a system message, <tool_call> blocks)")

# --- Gemma 4 -------------------------------------------------------------------------------------

CALL_OPEN, CALL_CLOSE, QUOTE = "<|tool_call>call:", "<tool_call|>", '<|"|>'
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
_SCALAR = re.compile(r"[^,}\]]*")
_KEY = re.compile(r"\s*([^:{}\[\],<]+?)\s*:")
_NAME = re.compile(r"([^{<\s]+)\{")


class _Notation:
    """A reader of Gemma 4's argument notation; raises ValueError where it is not that."""

    def __init__(self, text: str) -> None:
        self.text = text

    def skip(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in " \t\r\n":
            i += 1
        return i

    def value(self, i: int) -> tuple[Any, int]:
        i = self.skip(i)
        if self.text.startswith(QUOTE, i):
            end = self.text.find(QUOTE, i + len(QUOTE))
            if end < 0:
                raise ValueError("unterminated string")
            return self.text[i + len(QUOTE):end], end + len(QUOTE)
        if self.text.startswith("{", i):
            return self.mapping(i)
        if self.text.startswith("[", i):
            return self.sequence(i)
        m = _SCALAR.match(self.text, i)
        assert m is not None  # the pattern matches the empty string
        word = m.group(0).strip()
        if not word:
            raise ValueError("missing value")
        try:
            return json.loads(word), m.end()
        except NOT_JSON:
            return word, m.end()  # a bare word, as llama.cpp reads one: a string

    def mapping(self, i: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        i = self.skip(i + 1)
        while not self.text.startswith("}", i):
            if out:
                if not self.text.startswith(",", i):
                    raise ValueError("expected ,")
                i += 1
            key, i = self.key(i)
            out[key], i = self.value(i)
            i = self.skip(i)
        return out, i + 1

    def key(self, i: int) -> tuple[str, int]:
        i = self.skip(i)
        if self.text.startswith(QUOTE, i):
            end = self.text.find(QUOTE, i + len(QUOTE))
            colon = self.skip(end + len(QUOTE)) if end >= 0 else -1
            if colon < 0 or not self.text.startswith(":", colon):
                raise ValueError("expected a key")
            return self.text[i + len(QUOTE):end], colon + 1
        m = _KEY.match(self.text, i)
        if m is None:
            raise ValueError("expected a key")
        return m.group(1), m.end()

    def sequence(self, i: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        i = self.skip(i + 1)
        while not self.text.startswith("]", i):
            if out:
                if not self.text.startswith(",", i):
                    raise ValueError("expected ,")
                i += 1
            item, i = self.value(i)
            out.append(item)
            i = self.skip(i)
        return out, i + 1


def gemma4_arguments(text: str) -> dict[str, Any] | None:
    """A `{...}` in Gemma 4's notation as a dict, or None if it is not one."""
    notation = _Notation(text)
    start = notation.skip(0)
    if not text.startswith("{", start):
        return None
    try:
        args, end = notation.mapping(start)
    except ValueError:
        return None
    return args if not text[end:].strip() else None


class Gemma4Syntax(ToolSyntax):
    name = "gemma4"
    starts = (CALL_OPEN,)

    def section_end(self, text: str) -> int | None:
        end = text.find(CALL_CLOSE)
        return None if end < 0 else end + len(CALL_CLOSE)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        body = section[len(CALL_OPEN):]
        if body.endswith(CALL_CLOSE):
            body = body[:-len(CALL_CLOSE)]
        m = _NAME.match(body)
        if m is None or m.group(1) not in names:
            return None
        args = gemma4_arguments(body[m.end() - 1:])
        return None if args is None else [ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))]

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        whole = self.parse(section, names)
        if whole:
            return whole
        m = _NAME.match(section, len(CALL_OPEN))
        if m is None or m.group(1) not in names:
            return []
        # The notation as written so far: it is not JSON until it is whole.
        return [ToolCall(m.group(1), section[m.end() - 1:].strip())]

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        alts = [b.add(f'{literal(CALL_OPEN + t.name)} {_object_rule(b, t.schema)} {literal(CALL_CLOSE)}')
                for t in tools]
        call = b.add(" | ".join(alts))
        return call if max_calls == 1 else b.add(f"{call}{{1,{max_calls}}}")


def _any_rule(b: RuleBuilder, depth: int = 3) -> str:
    """Any value in the notation, lists and dicts nested `depth` deep (a rule cannot name itself here:
    the builder has no forward references)."""
    value = b.add(f'{_string_rule(b)} | {b.base("number")} | {b.base("boolean")} | {b.base("null")}', "g4scalar")
    key = b.add("[A-Za-z_] [A-Za-z0-9_]*", "g4key")
    for _ in range(depth):
        inner = value
        items = b.add(f'"[" ({inner} ("," {inner})*)? "]"', "g4list")
        pairs = b.add(f'"{{" ({key} ":" {inner} ("," {key} ":" {inner})*)? "}}"', "g4dict")
        value = b.add(f"{_string_rule(b)} | {b.base('number')} | {b.base('boolean')} | {b.base('null')} | "
                      f"{items} | {pairs}", "g4value")
    return value


def _string_rule(b: RuleBuilder) -> str:
    return b.add(f'{literal(QUOTE)} [^<]* {literal(QUOTE)}', "g4str")


def _value_rule(b: RuleBuilder, schema: Any) -> str:
    if not isinstance(schema, dict):
        return _any_rule(b)
    if isinstance(schema.get("enum"), list) and schema["enum"] and all(isinstance(v, str) for v in schema["enum"]):
        return b.add(" | ".join(literal(QUOTE + v + QUOTE) for v in schema["enum"]))
    kind = schema.get("type")
    if kind == "string":
        return _string_rule(b)
    if kind in ("integer", "number", "boolean", "null"):
        return b.base(kind)
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return _object_rule(b, schema)
    if kind == "array":
        item = _value_rule(b, schema.get("items"))
        return b.add(f'"[" ({item} ("," {item})*)? "]"')
    return _any_rule(b)


def _object_rule(b: RuleBuilder, schema: Any) -> str:
    """`{key:value,...}`: the properties in sorted order (as the template writes a history's), the
    required ones always, the others optional; one order, so one parse."""
    props: dict[str, Any] = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
    items = [(f'{literal(k + ":")} {_value_rule(b, props[k])}', k in required) for k in sorted(props)]
    if not items:
        return b.add('"{" "}"')
    return b.add(f'"{{" {_members(b, items)} "}}"')


def _members(b: RuleBuilder, items: list[tuple[str, bool]]) -> str:
    """The members in order, optional ones may be left out, commas only between: the first one written
    (any up to the first required one) and then the rest, each after a comma."""
    tails = [""] * (len(items) + 1)  # tails[i]: members i.. after one was written
    for i in range(len(items) - 1, -1, -1):
        kv, needed = items[i]
        member = f'"," {kv}' if needed else f'("," {kv})?'
        tails[i] = b.add(f"{member} {tails[i + 1]}".rstrip())
    heads: list[str] = []
    for i, (kv, needed) in enumerate(items):
        heads.append(f"{kv} {tails[i + 1]}".rstrip())
        if needed:
            return b.add(" | ".join(heads))
    return b.add(f'({" | ".join(heads)})?')


GEMMA4 = ChatFormat(
    "gemma4", Gemma4Syntax(), Reasoning(CHANNEL_OPEN + "thought", CHANNEL_CLOSE),
    # Stray channel markers around the answer (llama.cpp's edge cases) are dropped from the content.
    wrappers=(CHANNEL_OPEN + "thought\n" + CHANNEL_CLOSE, CHANNEL_CLOSE, CHANNEL_OPEN),
    preserved=(CALL_OPEN.removesuffix("call:"), CALL_CLOSE, QUOTE, CHANNEL_OPEN, CHANNEL_CLOSE),
    note='Gemma 4: <|channel>thought...<channel|>, <|tool_call>call:NAME{key:<|"|>text<|"|>}<tool_call|>')


def _is_phi3(template: str) -> bool:
    return all(m in template for m in ("<|user|>", "<|assistant|>", "<|end|>")) and "tools" not in template


DETECT = [
    (20, lambda t: "'" + CALL_OPEN + "'" in t, GEMMA4),
    (80, lambda t: "<start_of_turn>" in t, GEMMA),
    (85, _is_phi3, PHI3),
]
