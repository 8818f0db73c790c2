"""MiniMax M1's and M3's calls (M2's `<minimax:tool_call>` blocks are minimax.py's), and the `<tool_calls>` block
of JSON calls that M1 shares with Apriel (apriel.py). M1 writes one JSON call a line, and thinks in <think>:

    <tool_calls>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_calls>

M3 writes invoke tags behind its namespace token, a parameter's name as its tag (an object's keys and an
array's <item>s nest the same way), and thinks in <mm:think>; a turn without thinking starts with a bare
</mm:think>, dropped from the content:

    ]<]minimax[>[<tool_call>
    ]<]minimax[>[<invoke name="get_weather">]<]minimax[>[<city>Paris]<]minimax[>[</city>]<]minimax[>[</invoke>
    ]<]minimax[>[</tool_call>
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .base import (
    NOT_JSON,
    ChatFormat,
    Reasoning,
    RuleBuilder,
    ToolCall,
    ToolRule,
    ToolSyntax,
    as_call,
    literal,
    loads_prefix,
)
from .minimax import params_rule, xml_value

BLOCK_OPEN, BLOCK_CLOSE = "<tool_calls>", "</tool_calls>"
# A call cut short: its name written, and the arguments so far (the first character of them at least).
_ARGS_START = re.compile(r'\s*,?\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


class JsonBlockSyntax(ToolSyntax):
    """`<tool_calls>` around JSON calls: one a line (MiniMax M1), or a JSON list of them (`listed`: Apriel)."""

    starts = (BLOCK_OPEN,)

    def __init__(self, name: str, *, listed: bool) -> None:
        self.name, self._listed = name, listed

    def section_end(self, text: str) -> int | None:
        end = text.find(BLOCK_CLOSE)
        return None if end < 0 else end + len(BLOCK_CLOSE)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        inner = section[len(BLOCK_OPEN):].removesuffix(BLOCK_CLOSE).strip()
        try:
            items = json.loads(inner) if inner.startswith("[") else [json.loads(line) for line in inner.splitlines()
                                                                      if line.strip()]
        except NOT_JSON:
            return None
        if not isinstance(items, list):
            return None
        calls = [as_call(item, names) for item in items]
        found = [c for c in calls if c is not None]
        return found or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        if section.endswith(BLOCK_CLOSE):
            return self.parse(section, names) or []
        text = section[len(BLOCK_OPEN):].lstrip()
        i = 1 if text.startswith("[") else 0
        calls: list[ToolCall] = []
        while True:
            whole = loads_prefix(text, i)
            if whole is not None:
                call = as_call(whole[0], names)
                calls += [call] if call is not None else []
                i = whole[1]
                rest = text[i:].lstrip()
                i = len(text) - len(rest) + (1 if rest.startswith(",") else 0)
                continue
            m = _ARGS_START.match(text, i)
            if m is not None and (name := json.loads(f'"{m.group(1)}"')) in names:
                calls.append(ToolCall(name, text[m.end():].rstrip()))
            return calls

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        ws = b.base("ws")
        alts = [b.add(f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(t.name))} "," {ws} '
                      f'"\\"arguments\\"" {ws} ":" {ws} {t.arguments} {ws} "}}"', "call") for t in tools]
        call = b.add(" | ".join(alts), "calls")
        sep, open_, close = (", ", "[", "]") if self._listed else ("\n", "\n", "\n")
        more = f" ({literal(sep)} {call}){{0,{max_calls - 1}}}" if max_calls > 1 else ""
        return b.add(f"{literal(BLOCK_OPEN + open_)} {call}{more} {literal(close + BLOCK_CLOSE)}")


THINK = ("<think>", "</think>")
MINIMAX_M1 = ChatFormat(
    "minimax-m1", JsonBlockSyntax("minimax-m1", listed=False), Reasoning(*THINK), preserved=THINK,
    note="<tool_calls> blocks of JSON calls, one a line; <think> reasoning")


# --- MiniMax M3 -------------------------------------------------------------------------------

NS = "]<]minimax[>["
M3_OPEN, M3_CLOSE = f"{NS}<tool_call>", f"{NS}</tool_call>"
M3_THINK = ("<mm:think>", "</mm:think>")
_INVOKE = re.compile(rf'{re.escape(NS)}<invoke name="([^"]*)">(.*?)(?:{re.escape(NS)}</invoke>|\Z)', re.S)
_TAG = re.compile(r"<(/?)([^<>/]+)>(.*)\Z", re.S)


class _Unclosed(Exception):
    """An element's closing tag never came (the output was cut)."""


def _element(pieces: list[tuple[bool, str, str]], i: int, name: str) -> tuple[Any, int]:
    """The value of the element opened at pieces[i - 1] (named `name`), and the index after its closing tag.
    Its text is the value (JSON when it parses); nested elements make an object, or a list of <item>s."""
    text = pieces[i - 1][2]
    children: list[tuple[str, Any]] = []
    while i < len(pieces):
        closing, tag, _ = pieces[i]
        if closing:
            if tag != name:
                raise ValueError("mismatched tag")
            if children:
                keys = [k for k, _ in children]
                return ([v for _, v in children] if set(keys) == {"item"} else dict(children)), i + 1
            return xml_value(text), i + 1
        value, i = _element(pieces, i + 1, tag)
        children.append((tag, value))
    raise _Unclosed


def _m3_arguments(body: str) -> tuple[dict[str, Any], bool]:
    """An invoke's arguments (the ones whole, if it was cut), and whether they all closed."""
    pieces: list[tuple[bool, str, str]] = []
    for part in body.split(NS)[1:]:
        m = _TAG.match(part)
        if m is None:
            raise ValueError("not a tag")
        pieces.append((m.group(1) == "/", m.group(2), m.group(3)))
    args: dict[str, Any] = {}
    i = 0
    while i < len(pieces):
        closing, tag, _ = pieces[i]
        if closing:
            raise ValueError("closing tag without its opening")
        try:
            args[tag], i = _element(pieces, i + 1, tag)
        except _Unclosed:
            return args, False
    return args, True


class TaggedCallsSyntax(ToolSyntax):
    """A section from its start marker to `close`, of calls `call` finds (group 1 the name, 2 the body), each
    body's arguments read by `arguments`. Cut short, a call's arguments are the ones it closed (M3, Kimi K3)."""

    close = ""
    call: re.Pattern[str]

    def arguments(self, body: str, *, cut: bool) -> dict[str, Any] | None:
        """A call's arguments (None: the section is not calls); `cut`: the ones whole so far."""
        raise NotImplementedError

    def call_name(self, written: str) -> str:
        return written

    def section_end(self, text: str) -> int | None:
        end = text.find(self.close)
        return None if end < 0 else end + len(self.close)

    def _calls(self, section: str, names: set[str], *, cut: bool) -> list[ToolCall] | None:
        calls = []
        for m in self.call.finditer(section):
            name = self.call_name(m.group(1))
            if name not in names:
                continue
            args = self.arguments(m.group(2), cut=cut)
            if args is None:
                return None
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return calls

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        return self._calls(section, names, cut=False) or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        return self._calls(section, names, cut=True) or []


class M3Syntax(TaggedCallsSyntax):
    name = "minimax-m3"
    starts, close, call = (M3_OPEN,), M3_CLOSE, _INVOKE

    def arguments(self, body: str, *, cut: bool) -> dict[str, Any] | None:
        try:
            args, whole = _m3_arguments(body)
        except ValueError:
            return None
        return args if whole or cut else None

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        # Values that are not plain strings are written as JSON, which reads back the same (xml_value).
        def param(key: str, value: str, raw: bool) -> str:
            return f"{literal(f'{NS}<{key}>')} {value} {literal(f'{NS}</{key}>')}"

        alts = [b.add(f"{literal(f'{NS}<invoke name={json.dumps(t.name)}>')} {params_rule(b, t, param)} "
                      f"{literal(f'{NS}</invoke>' + chr(10))}", "invoke") for t in tools]
        call = b.add(" | ".join(alts), "call")
        calls = call if max_calls == 1 else f"{call}{{1,{max_calls}}}"
        return b.add(f"{literal(M3_OPEN + chr(10))} {calls} {literal(M3_CLOSE)}")


MINIMAX_M3 = ChatFormat(
    "minimax-m3", M3Syntax(), Reasoning(*M3_THINK), wrappers=(M3_THINK[1],),
    preserved=(NS, "<tool_call>", "</tool_call>", *M3_THINK),
    note="]<]minimax[>[<tool_call> blocks of invoke tags, a parameter's name its tag; <mm:think> reasoning")

DETECT = [
    (20, lambda src: NS in src and "<invoke name=" in src, MINIMAX_M3),
    (30, lambda src: BLOCK_OPEN in src and "<beginning_of_sentence>" in src, MINIMAX_M1),
]
