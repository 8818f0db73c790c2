"""Tool calls out of model text: a finished output's calls and content, and a stream's deltas as it arrives.

The format is the `<tool_call>` block of server/core/tools.py; a bare JSON call (as Llama 3 models
write it) is taken too when it is the whole output.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from .tools import CLOSE, OPEN, ToolPlan

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)

# Output nested past the interpreter's limit (a grammar can make a model write it) is text, not a call: no 500.
_NOT_JSON = (json.JSONDecodeError, RecursionError)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON string, always
    id: str = field(default_factory=new_call_id)

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out = {"index": index, **out}
        return out


def _as_call(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except _NOT_JSON:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _block_call(inner: str, names: set[str]) -> ToolCall | None:
    """The call a `<tool_call>` block's inside holds, if it parses and names a known tool."""
    try:
        return _as_call(json.loads(inner), names)
    except _NOT_JSON:
        return None


def parse_output(text: str, plan: ToolPlan, *, cut: bool = False) -> tuple[str, list[ToolCall]]:
    """The content and the tool calls in a finished output.

    `cut`: max_tokens ended the output. A call it cut short is still a call, with the arguments
    written so far (as OpenAI answers), and its unfinished markup never becomes content.
    """
    if not plan.active:
        return text, []
    if cut:
        return _cut_output(text, plan)
    names = {t.name for t in plan.tools}
    calls: list[ToolCall] = []
    content = []
    pos = 0
    for m in _BLOCK.finditer(text):
        call = _block_call(m.group(1), names)
        if call is None:
            continue
        content.append(text[pos:m.start()])
        pos = m.end()
        if plan.mode == "forced":
            # The grammar wrote these arguments: keep the model's own text, as streaming sends it.
            call.arguments = _raw_arguments(m.group(1)) or call.arguments
        calls.append(call)
    content.append(text[pos:])
    if not calls:
        calls = _bare_calls(text.strip(), names)
        if calls:
            content = []
    if not plan.parallel:
        calls = calls[:1]
    return "".join(content).strip() if calls else text, calls


def _cut_output(text: str, plan: ToolPlan) -> tuple[str, list[ToolCall]]:
    if plan.mode == "forced":  # the grammar writes nothing but calls: stream them to recover the partial one
        stream = ToolStream(plan)
        stream.feed(text)
        return "", stream.calls
    start = text.rfind(OPEN)
    if start < 0 or CLOSE in text[start:]:
        return parse_output(text, plan)
    content, calls = parse_output(text[:start], plan)
    partial = _partial_call(text[start + len(OPEN):], {t.name for t in plan.tools})
    if partial is not None and (plan.parallel or not calls):
        calls.append(partial)
    return (content if calls else text[:start]).strip(), calls


def _partial_call(inner: str, names: set[str]) -> ToolCall | None:
    """The call an unfinished block began: its name, and the arguments written so far."""
    m = _ARGS_START.match(inner)
    if m is None:
        return None
    name = json.loads(f'"{m.group(1)}"')
    return ToolCall(name, inner[m.end():].rstrip()) if name in names else None


def _bare_calls(text: str, names: set[str]) -> list[ToolCall]:
    if text[:1] not in ("{", "["):
        return []
    try:
        obj = json.loads(text)
    except _NOT_JSON:
        return []
    items = obj if isinstance(obj, list) else [obj]
    calls = [_as_call(o, names) for o in items]
    return [c for c in calls if c is not None] if all(calls) else []


# Up to the first character of the arguments (never before it: a space may still come).
_ARGS_START = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def _raw_arguments(call_text: str) -> str:
    m = _ARGS_START.match(call_text)
    if not m:
        return ""
    end = _json_value_end(call_text, m.end())
    return call_text[m.end():end] if end is not None else ""


def _json_value_end(text: str, start: int) -> int | None:
    """Where the JSON object or array starting at `start` ends (exclusive), or None if it does not yet."""
    depth, in_string, escape = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ToolStream:
    """Turns a streamed output into content text and OpenAI tool-call deltas, as it arrives.

    Forced calls (grammar-made, so always well formed) stream their arguments as they are
    written. In `auto` mode a block is held until it is complete and parses, and text that
    might be the start of a block is held back, as stop strings are.
    Each delta: `{"content": ...}` or `{"tool_calls": [one entry]}`, entries carrying an
    integer `index`; `id`, `type` and `name` only in a call's first delta.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.names = {t.name for t in plan.tools}
        self.buf = ""  # text not yet turned into deltas
        self.calls: list[ToolCall] = []
        self._bare: bool | None = None  # auto: does the whole output look like a bare JSON call?
        self._open: ToolCall | None = None  # forced: the call whose arguments are streaming
        self._args_sent = 0

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.buf += text
        return self._forced() if self.plan.mode == "forced" else self._auto(final=False)

    def finish(self, cut: bool = False) -> list[dict[str, Any]]:
        """The deltas still held back, at the end of the output; `cut`: max_tokens ended it."""
        if self.plan.mode == "forced":
            out = self._forced()
            self.buf = ""  # the rest of a cut call's arguments went out as they came
            return out
        if cut:
            start = self.buf.find(OPEN)
            if start >= 0 and CLOSE not in self.buf[start:]:  # a block max_tokens cut: never content
                block, self.buf = self.buf[start + len(OPEN):], self.buf[:start]
                out = self._auto(final=True)
                partial = _partial_call(block, self.names)
                if partial is not None and (self.plan.parallel or not self.calls):
                    out += self._whole(partial)
                return out
        return self._auto(final=True)

    # forced: {"name": "x", "arguments": {...}} inside blocks, exactly as the grammar writes it
    def _forced(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            if self._open is None:
                if len(self.calls) >= self.plan.max_calls or (not self.plan.parallel and self.calls):
                    self.buf = ""
                    return out
                start = self.buf.find(OPEN)
                if start < 0:
                    return out
                m = _ARGS_START.match(self.buf, start + len(OPEN))
                if not m:
                    return out
                call = ToolCall(json.loads(f'"{m.group(1)}"'), "")
                self.calls.append(call)
                self._open = call
                self.buf = self.buf[m.end():]
                self._args_sent = 0
                out.append(self._delta({"id": call.id, "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}))
            end = _json_value_end(self.buf, 0)
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

    def _auto(self, final: bool) -> list[dict[str, Any]]:
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
            start = self.buf.find(OPEN)
            if start < 0:
                keep = 0 if final else _partial_suffix(self.buf, OPEN)
                text = self.buf[: len(self.buf) - keep]
                if text:
                    out.append({"content": text})
                self.buf = self.buf[len(text):]
                return out
            if start:
                out.append({"content": self.buf[:start]})
                self.buf = self.buf[start:]
            close = self.buf.find(CLOSE)
            if close < 0 and not final:
                return out
            block = self.buf if close < 0 else self.buf[: close + len(CLOSE)]
            self.buf = "" if close < 0 else self.buf[close + len(CLOSE):]
            m = _BLOCK.match(block)
            found = _block_call(m.group(1), self.names) if m else None
            if found is None or (not self.plan.parallel and self.calls):
                if found is None:
                    out.append({"content": block})
                continue
            out += self._whole(found)

    def _whole(self, call: ToolCall) -> list[dict[str, Any]]:
        self.calls.append(call)
        return [
            self._delta({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}),
            self._delta({"function": {"arguments": call.arguments}}),
        ]

    def _delta(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {"tool_calls": [{"index": len(self.calls) - 1, **entry}]}


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
