"""Tool calling: tool definitions into the prompt, forced calls into a grammar, output into tool_calls.

The model writes each call as a `<tool_call>` block holding one JSON object (the format of
Hermes and Qwen, which many fine-tunes know):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

- Models whose chat template renders `tools` get the definitions through their own
  template. For the others (SmolLM2 among them) a system message describes the tools and
  this format, and the conversation's earlier calls and results are written the same way.
- `tool_choice: "required"` or a named function constrains the output with a grammar, so
  the call always parses and its arguments validate against the function's parameters.
- `auto` lets the model choose; whatever it writes as a block (or, whole, as a bare JSON
  call as Llama 3 models do) that names a known tool and parses becomes a call, and the
  rest is content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError
from .structured import Grammar, literal

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)
# Parallel calls a forced grammar allows: one per tool, and never more than this.
MAX_FORCED_CALLS = 8


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                  "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of tools: which are offered, and whether a call is forced."""

    tools: tuple[Tool, ...] = ()
    mode: str = "none"  # none | auto | forced
    forced: tuple[str, ...] = ()  # the names a forced call may use
    parallel: bool = True

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    @property
    def max_calls(self) -> int:
        if not self.parallel or self.mode != "forced" or len(self.forced) == 1:
            return 1
        return min(len(self.forced), MAX_FORCED_CALLS)

    def calls_rule(self, g: Grammar) -> str:
        """A grammar rule for 1..max_calls blocks calling the allowed tools with valid arguments."""
        names = self.forced if self.mode == "forced" else tuple(t.name for t in self.tools)
        ws = g.base("ws")
        alts = []
        for i, tool in enumerate(self.tools):
            if tool.name not in names:
                continue
            args = g.schema_rule(tool.parameters, doc_id=f"tool{i}", path="", param=f"tools[{i}].function.parameters")
            alts.append(g.add(f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {literal(json.dumps(tool.name))} "," {ws} '
                              f'"\\"arguments\\"" {ws} ":" {ws} {args} {ws} "}}"'))
        block = g.add(f'{literal(OPEN + chr(10))} ({" | ".join(alts)}) {literal(chr(10) + CLOSE)}')
        if self.max_calls == 1:
            return block
        return g.add(f'{block} ("\\n" {block}){{0,{self.max_calls - 1}}}')


def plan_tools(tools: list[Any] | None, tool_choice: Any, parallel: bool) -> ToolPlan:
    """Check the request's tools and tool_choice (400s name the field) and say what they ask."""
    defs = []
    seen: set[str] = set()
    for i, t in enumerate(tools or []):
        fn = t.function
        if fn.name in seen:
            raise InvalidRequestError(f"two tools are named {fn.name!r}", param=f"tools[{i}].function.name")
        seen.add(fn.name)
        params = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InvalidRequestError("a function's parameters must be a JSON schema of type object",
                                      param=f"tools[{i}].function.parameters")
        defs.append(Tool(fn.name, fn.description or "", params))
    if isinstance(tool_choice, str) or tool_choice is None:
        choice = tool_choice or ("auto" if defs else "none")
        if choice != "none" and not defs:
            raise InvalidRequestError(f"tool_choice {choice!r} needs at least one tool in 'tools'", param="tool_choice")
        if choice == "required":
            return ToolPlan(tuple(defs), "forced", tuple(d.name for d in defs), parallel)
        return ToolPlan(tuple(defs), choice, (), parallel)
    name = tool_choice.function.name
    if name not in seen:
        raise InvalidRequestError(f"tool_choice names the function {name!r}, which is not in 'tools'",
                                  param="tool_choice.function.name")
    return ToolPlan(tuple(defs), "forced", (name,), parallel)


# --- the prompt ------------------------------------------------------------------------------


def system_text(plan: ToolPlan) -> str:
    """How tools are described to a model whose chat template knows nothing of them."""
    lines = "\n".join(json.dumps(t.openai()["function"], ensure_ascii=False) for t in plan.tools)
    must = ("You must call one of them." if plan.mode == "forced"
            else "Call one when it helps answer the user; otherwise answer directly.")
    return (
        "You can call these functions (JSON schemas in <tools></tools>):\n"
        f"<tools>\n{lines}\n</tools>\n"
        f"{must} To call a function, write a JSON object with its name and arguments inside "
        f"{OPEN}{CLOSE} tags:\n"
        f'{OPEN}\n{{"name": "<function name>", "arguments": {{<arguments>}}}}\n{CLOSE}'
    )


def prompt_messages(messages: list[dict[str, Any]], plan: ToolPlan, native: bool) -> list[dict[str, Any]]:
    """Messages for the chat template; without native tool support, calls and results become text."""
    out = []
    for m in messages:
        if native:
            if m.get("tool_calls"):
                m = {**m, "tool_calls": [_native_call(c) for c in m["tool_calls"]]}
            out.append(m)
            continue
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = [f"{OPEN}\n{json.dumps(_call_json(c), ensure_ascii=False)}\n{CLOSE}" for c in m["tool_calls"]]
            text = "\n".join(([m["content"]] if m.get("content") else []) + blocks)
            out.append({"role": "assistant", "content": text})
        elif m["role"] in ("tool", "function"):
            out.append({"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    if plan.active and not native:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{system_text(plan)}"}
        else:
            out.insert(0, {"role": "system", "content": system_text(plan)})
    return out


def _call_json(call: Any) -> dict[str, Any]:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    return {"name": fn.get("name", ""), "arguments": args}


def _native_call(call: Any) -> Any:
    # Hugging Face templates expect arguments as a mapping (OpenAI sends a JSON string).
    if not isinstance(call, dict):
        return call
    fn = call.get("function", {})
    parsed = _call_json(call)
    return {**call, "function": {**fn, "arguments": parsed["arguments"]}}


def check_history(messages: list[Any]) -> None:
    """Assistant tool calls in the history must name a function; a 400 beats a template crash."""
    for i, m in enumerate(messages):
        for j, call in enumerate(m.tool_calls or []):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise InvalidRequestError("each tool call needs function.name", param=f"messages[{i}].tool_calls[{j}].function")
            if not isinstance(fn.get("arguments", ""), (str, dict)):
                raise InvalidRequestError("function.arguments must be a JSON string",
                                          param=f"messages[{i}].tool_calls[{j}].function.arguments")


# --- the output ------------------------------------------------------------------------------


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
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _block_call(inner: str, names: set[str]) -> ToolCall | None:
    """The call a `<tool_call>` block's inside holds, if it parses and names a known tool."""
    try:
        return _as_call(json.loads(inner), names)
    except json.JSONDecodeError:
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
    if not text[:1] in ("{", "["):
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
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
                if len(self.calls) >= self.plan.max_calls or not self.plan.parallel and self.calls:
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
            call = _block_call(m.group(1), self.names) if m else None
            if call is None or (not self.plan.parallel and self.calls):
                if call is None:
                    out.append({"content": block})
                continue
            out += self._whole(call)

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
