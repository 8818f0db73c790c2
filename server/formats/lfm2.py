"""Liquid's LFM2 / LFM2.5 calls: a Python-style list of calls between two control tokens, as llama.cpp's lfm2 parser:

    <|tool_call_start|>[get_weather(city="Paris"), get_time(city='Oslo', utc=True)]<|tool_call_end|>

Values are Python literals (True, None, 'single quotes') or JSON ones (true, null), as LFM2 writes either;
names may be dotted (Calendar.create_event). LFM2.5-8B-A1B thinks in <think> blocks; the other LFM2 templates
carry no thinking marker, and llama.cpp splits none for them.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal

START, END = "<|tool_call_start|>", "<|tool_call_end|>"
LIST_START, LIST_END = "<|tool_list_start|>", "<|tool_list_end|>"
_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)\(")
_KEY = re.compile(r"\s*([^\s=(),\[\]{}'\"]+)\s*=\s*")
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


@dataclass
class _Call:
    """One call as read so far: its name, its arguments, and a value cut short (key, text so far)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    partial: tuple[str, str] | None = None
    end: int = 0


class _Cut(Exception):
    """The text ended inside a call: the call as far as it went (None before its name was whole)."""

    def __init__(self, call: _Call | None = None) -> None:
        super().__init__("cut")
        self.call = call


def _literal(node: ast.expr) -> Any:
    """A Python (or JSON-cased) literal's value; ValueError for anything else (a call, a variable)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _WORDS:
        return _WORDS[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not a literal")


def py_value(text: str) -> Any:
    """A written argument's value (ValueError when it is not a literal)."""
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, RecursionError, MemoryError) as e:
        raise ValueError(str(e)) from e


def _value_end(text: str, i: int) -> int:
    """Where the value starting at `i` ends: the `,` or `)` after it at its own depth; _Cut if none yet."""
    depth, quote = 0, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return i
            depth -= 1
        elif c == "," and depth == 0:
            return i
        i += 1
    raise _Cut


def _read_call(text: str, pos: int) -> _Call:
    """The call written from `pos`; _Cut when the text ends inside it, ValueError when it is not a call."""
    m = _NAME.match(text, pos)
    if m is None:
        if re.fullmatch(r"\s*[\w.]*", text[pos:]):  # a name still being written
            raise _Cut
        raise ValueError("no call")
    call, i = _Call(m.group(1)), m.end()
    while True:
        rest = text[i:].lstrip()
        i = len(text) - len(rest)
        if rest.startswith(")"):
            call.end = i + 1
            return call
        key = _KEY.match(text, i)
        if key is None:
            if re.fullmatch(r"[^\s=(),]*", rest):  # a key still being written
                raise _Cut(call)
            raise ValueError("not a keyword argument")
        try:
            j = _value_end(text, key.end())
        except _Cut:
            call.partial = (key.group(1), text[key.end():].rstrip())
            raise _Cut(call) from None
        call.args[key.group(1)] = py_value(text[key.end():j])
        i = j + 1 if text[j] == "," else j


def _read(inner: str) -> tuple[list[_Call], _Call | None, bool]:
    """The calls in a list's inside, the one the text ended in, and whether the list closed."""
    calls: list[_Call] = []
    pos = 0
    while True:
        try:
            call = _read_call(inner, pos)
        except _Cut as cut:
            return calls, cut.call, False
        calls.append(call)
        rest = inner[call.end:].lstrip()
        if rest.startswith(","):
            pos = len(inner) - len(rest) + 1
        elif rest.startswith("]") and not rest[1:].strip():
            return calls, None, True
        elif not rest:
            return calls, None, False
        else:
            raise ValueError("text after a call")


def _tool_call(name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


class PythonicSyntax(ToolSyntax):
    name = "lfm2"
    starts = (START,)

    def section_end(self, text: str) -> int | None:
        end = text.find(END)
        return None if end < 0 else end + len(END)

    def _inner(self, section: str) -> str:
        inner = section[len(START):]
        inner = inner[:-len(END)] if inner.endswith(END) else inner
        return inner.strip()[1:] if inner.strip().startswith("[") else "\0"

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        if not section.endswith(END):
            return None
        try:
            calls, _, closed = _read(self._inner(section))
        except ValueError:
            return None
        found = [_tool_call(c.name, c.args) for c in calls if c.name in names]
        return found if closed and found else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        if section.endswith(END):
            return self.parse(section, names) or []
        try:
            calls, cut, _ = _read(self._inner(section))
        except ValueError:
            return []
        found = [_tool_call(c.name, c.args) for c in calls if c.name in names]
        if cut is not None and cut.name in names:
            written = json.dumps(cut.args, ensure_ascii=False)[:-1]  # the object left open
            if cut.partial is not None:
                key, raw = cut.partial
                written += (", " if cut.args else "") + f"{json.dumps(key, ensure_ascii=False)}: {raw}"
            found.append(ToolCall(cut.name, written))
        return found

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        alts = [b.add(f"{literal(t.name + '(')} {_kwargs(b, t)} {literal(')')}", "call") for t in tools]
        call = b.add(" | ".join(alts), "calls")
        more = f' ({literal(", ")} {call}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        return b.add(f"{literal(START + '[')} {call}{more} {literal(']' + END)}")


def _kwargs(b: RuleBuilder, tool: ToolRule) -> str:
    """Keyword arguments in schema order, the required ones first, each optional one or not: one parse only."""
    props = tool.schema.get("properties") or {}
    required = [k for k in props if k in set(tool.schema.get("required") or [])]
    optional = [k for k in props if k not in required]
    arg = {k: b.add(f"{literal(k + '=')} {tool.value(props[k], k)}", "kwarg") for k in props}
    sep = literal(", ")
    if required:
        return " ".join([arg[required[0]], *(f"{sep} {arg[k]}" for k in required[1:]),
                         *(f"({sep} {arg[k]})?" for k in optional)])
    if not optional:
        return '""'
    # No required one: whichever optional comes first, then each later one or not.
    firsts = [" ".join([arg[k], *(f"({sep} {arg[o]})?" for o in optional[i + 1:])]) for i, k in enumerate(optional)]
    return f"({b.add(' | '.join(firsts), 'kwargs')})?"


SYNTAX = PythonicSyntax()
THINK = ("<think>", "</think>")
LFM2 = ChatFormat("lfm2", SYNTAX, reasoning=None, preserved=(START, END),
                  note="<|tool_call_start|>[name(key=value, ...)]<|tool_call_end|> Python-style calls")
LFM2_THINKING = ChatFormat("lfm2-thinking", SYNTAX, Reasoning(*THINK), preserved=(START, END, *THINK),
                           note="<|tool_call_start|>[name(key=value, ...)]<|tool_call_end|> Python-style calls; "
                                "<think> reasoning (LFM2.5-8B-A1B)")


def _is_lfm2(src: str) -> bool:
    # LFM2 wraps its tool list in tokens; LFM2.5 writes it plainly (llama.cpp's two tests, chat.cpp).
    return (LIST_START in src and LIST_END in src) or "List of tools: [" in src


DETECT = [
    (40, lambda src: _is_lfm2(src) and "<think>" in src, LFM2_THINKING),
    (41, _is_lfm2, LFM2),
]
