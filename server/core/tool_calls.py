"""Tool calls out of model text: a finished output's calls and content, and a stream's deltas as it arrives.

One stream serves every family: a format's ToolSyntax (server/formats/) says where a section of calls
starts and ends and what it holds; text outside sections is content. A section is held until it is
complete and parses (text that may still become a start marker is held back, as stop strings are);
one that does not parse is content after all. Forced calls in Hermes' blocks (the syntax nomoat
describes to a model whose template renders no tools) stream their arguments as the grammar writes them.
"""

from __future__ import annotations

import json
from typing import Any

from ..formats import GENERIC, ToolCall, ToolSyntax
from ..formats.base import NOT_JSON, as_call, json_value_end, partial_suffix
from ..formats.hermes import ARGS_START, CLOSE, OPEN
from .tools import ToolPlan

__all__ = ["ToolCall", "ToolStream", "parse_output"]


def parse_output(text: str, plan: ToolPlan, *, cut: bool = False,
                 syntax: ToolSyntax = GENERIC.tools) -> tuple[str, list[ToolCall]]:
    """The content and the tool calls in a finished output (the stream's, read in one piece).

    `cut`: max_tokens ended the output. A call it cut short is still a call, with the arguments
    written so far (as OpenAI answers), and its unfinished markup never becomes content.
    """
    if not plan.active:
        return text, []
    stream = ToolStream(plan, syntax)
    deltas = stream.feed(text) + stream.finish(cut=cut)
    if not stream.calls:
        content = "".join(d.get("content", "") for d in deltas)
        return (text if content == text else content.strip()), []  # a cut section is never content
    return "".join(d.get("content", "") for d in deltas).strip(), stream.calls


def _bare_calls(text: str, names: set[str]) -> list[ToolCall]:
    if text[:1] not in ("{", "["):
        return []
    try:
        obj = json.loads(text)
    except NOT_JSON:  # output nested past the interpreter's limit is text, not a call: no 500
        return []
    items = obj if isinstance(obj, list) else [obj]
    calls = [as_call(o, names) for o in items]
    return [c for c in calls if c is not None] if all(calls) else []


class ToolStream:
    """Turns a streamed output into content text and OpenAI tool-call deltas, as it arrives.

    Each delta: `{"content": ...}` or `{"tool_calls": [one entry]}`, entries carrying an integer
    `index`; `id`, `type` and `name` only in a call's first delta.
    """

    def __init__(self, plan: ToolPlan, syntax: ToolSyntax = GENERIC.tools) -> None:
        self.plan = plan
        self.syntax = syntax
        self.names = {t.name for t in plan.tools}
        self.buf = ""  # text not yet turned into deltas
        self.calls: list[ToolCall] = []
        self._bare: bool | None = None if syntax.bare_json else False  # is the whole output a bare JSON call?
        self._in_section = False  # buf begins with a start marker
        self._blank = ""  # whitespace content held: it goes out before more text, and not around calls
        # Hermes' forced blocks: the call whose arguments are streaming.
        self._incremental = plan.mode == "forced" and getattr(syntax, "incremental", False)
        self._open: ToolCall | None = None
        self._args_sent = 0

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.buf += text
        return self._forced() if self._incremental else self._sections(final=False, cut=False)

    def finish(self, cut: bool = False) -> list[dict[str, Any]]:
        """The deltas still held back, at the end of the output; `cut`: max_tokens ended it."""
        if self._incremental:
            out = self._forced()
            self.buf = ""  # the rest of a cut call's arguments went out as they came
            return out
        return self._sections(final=True, cut=cut)

    def _full(self) -> bool:
        return len(self.calls) >= self.plan.max_calls if self.plan.mode == "forced" else \
            (not self.plan.parallel and bool(self.calls))

    # --- any syntax: sections of calls between content ---------------------------------------

    def _sections(self, final: bool, cut: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._bare is None:
            stripped = self.buf.lstrip()
            if not stripped and not final:
                return out
            self._bare = stripped[:1] in ("{", "[")
        if self._bare:
            if not final:
                return out
            calls = _bare_calls(self.buf.strip(), self.names)
            if calls:
                for call in calls[: None if self.plan.parallel else 1]:
                    out += self._whole(call)
                self.buf = ""
                return out
            self._bare = False
        while True:
            if not self._in_section:
                start = self._find_start()
                if start < 0:
                    keep = 0 if final else max((partial_suffix(self.buf, s) for s in self.syntax.starts), default=0)
                    text = self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(text):]
                    out += self._content(text)
                    if final and self._blank and not self.calls:
                        out.append({"content": self._blank})
                        self._blank = ""
                    return out
                out += self._content(self.buf[:start])
                self.buf = self.buf[start:]
                self._in_section = True
            end = self.syntax.section_end(self.buf)
            if end is None and not final:
                return out
            section = self.buf if end is None else self.buf[:end]
            self.buf = "" if end is None else self.buf[end:]
            self._in_section = False
            if end is None and cut:  # max_tokens cut this section: never content
                found = self.syntax.parse_cut(section, self.names)
                if not found:
                    continue
            else:
                found = self.syntax.parse(section, self.names) or []
                if not found:
                    out += self._content(section)
                    continue
            self._blank = ""  # the whitespace between calls, or before one, is no content
            for call in found:
                if self._full():
                    break
                out += self._whole(call)

    def _content(self, text: str) -> list[dict[str, Any]]:
        """Content out, its trailing whitespace held (however the text was chunked, the same goes out)."""
        body = text.rstrip()
        if not body:
            self._blank += text
            return []
        out, self._blank = self._blank + body, text[len(body):]
        return [{"content": out}]

    def _find_start(self) -> int:
        found = [i for i in (self.buf.find(s) for s in self.syntax.starts) if i >= 0]
        return min(found, default=-1)

    def _whole(self, call: ToolCall) -> list[dict[str, Any]]:
        self.calls.append(call)
        return [
            self._delta({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}),
            self._delta({"function": {"arguments": call.arguments}}),
        ]

    # --- Hermes' forced blocks: {"name": "x", "arguments": {...}}, exactly as the grammar writes them ---

    def _forced(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            if self._open is None:
                if self._full():
                    self.buf = ""
                    return out
                start = self.buf.find(OPEN)
                if start < 0:
                    return out
                m = ARGS_START.match(self.buf, start + len(OPEN))
                if not m:
                    return out
                call = ToolCall(json.loads(f'"{m.group(1)}"'), "")
                self.calls.append(call)
                self._open = call
                self.buf = self.buf[m.end():]
                self._args_sent = 0
                out.append(self._delta({"id": call.id, "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}))
            end = json_value_end(self.buf, 0)
            upto = end if end is not None else len(self.buf)
            fragment = self.buf[self._args_sent:upto]
            if fragment:
                self._open.arguments += fragment
                out.append(self._delta({"function": {"arguments": fragment}}))
                self._args_sent = upto
            if end is None:
                return out
            close = self.buf.find(CLOSE, end)
            self.buf = self.buf[close + len(CLOSE):] if close >= 0 else ""
            self._open = None

    def _delta(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {"tool_calls": [{"index": len(self.calls) - 1, **entry}]}
