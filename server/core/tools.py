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

import contextlib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.types import ChatPrompt, ModelInfo
from ..errors import InvalidRequestError
from ..formats import GENERIC, HERMES, ToolRule, ToolSyntax
from ..formats.base import EitherSyntax
from ..formats.hermes import CLOSE, OPEN
from ..wire.body import bounded_loads
from .structured import Grammar, response_rule

# Parallel calls a forced grammar allows: one per tool, and never more than this.
MAX_FORCED_CALLS = 8


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any] | None

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                  "parameters": self.parameters}}


def _openai_tool_param(i: int, key: str) -> str:
    return f"tools[{i}].function.{key}"


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of tools: which are offered, and whether a call is forced."""

    tools: tuple[Tool, ...] = ()
    mode: str = "none"  # none | auto | forced
    forced: tuple[str, ...] = ()  # the names a forced call may use
    parallel: bool = True
    # How this protocol names a tool's field in errors (make_plan's `tool_param` and `schema_key`).
    tool_param: Callable[[int, str], str] = _openai_tool_param
    schema_key: str = "parameters"

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    @property
    def max_calls(self) -> int:
        if not self.parallel or self.mode != "forced" or len(self.forced) == 1:
            return 1
        return min(len(self.forced), MAX_FORCED_CALLS)

    def calls_rule(self, g: Grammar, syntax: ToolSyntax = HERMES) -> str:
        """A grammar rule for 1..max_calls calls to the allowed tools with valid arguments, written in
        `syntax` (the model family's own, so the model writes what it was trained to write)."""
        names = self.forced if self.mode == "forced" else tuple(t.name for t in self.tools)
        rules = []
        for i, tool in enumerate(self.tools):
            if tool.name not in names:
                continue
            param = self.tool_param(i, self.schema_key)
            args = g.schema_rule(tool.parameters, doc_id=f"tool{i}", path="", param=param)
            rules.append(ToolRule(tool.name, args, tool.parameters or {},
                                  functools.partial(_property_rule, g, f"tool{i}", param)))
        return syntax.calls_rule(g, rules, self.max_calls)


def _property_rule(g: Grammar, doc_id: str, param: str, schema: Any, key: str) -> str:
    g.param = param
    return g.property_rule(schema, doc_id=doc_id, path=f"/properties/{key}")


def output_grammar(plan: ToolPlan, kind: str | None, schema: Any, g: Grammar,
                   format_param: str | None = None, syntax: ToolSyntax = HERMES) -> str | None:
    """The grammar a request's output must follow, if any (slow for large schemas: run it in a thread).

    A forced tool call: the calls. JSON output (`kind` "json_object" or "json_schema", `schema` None
    for any object): that JSON, or (tools offered with `auto`) a call instead of it. Otherwise none.
    The plan names its tools' schemas in errors; `format_param` names the format's schema. Calls are
    written in `syntax`, the model family's (call_syntax).
    """
    if plan.mode == "forced":
        return g.text(plan.calls_rule(g, syntax))
    if kind is None or kind == "text":
        return None
    rule = response_rule(g, kind, schema, format_param)
    if plan.active:
        rule = g.add(f"{plan.calls_rule(g, syntax)} | {rule}")
    return g.text(rule)


def plan_tools(tools: list[Any] | None, tool_choice: Any, parallel: bool) -> ToolPlan:
    """Chat completions' `tools` and `tool_choice` (400s name the OpenAI field) and what they ask."""
    defs = [Tool(t.function.name, t.function.description or "", t.function.parameters) for t in tools or []]
    if isinstance(tool_choice, str) or tool_choice is None:
        return make_plan(defs, tool_choice, None, parallel)
    return make_plan(defs, "function", tool_choice.function.name, parallel, named_param="tool_choice.function.name")


def make_plan(tools: list[Tool], choice: str | None, named: str | None, parallel: bool, *,
              tool_param: Callable[[int, str], str] = _openai_tool_param,
              schema_key: str = "parameters", named_param: str = "tool_choice") -> ToolPlan:
    """Check a request's tools and its choice, in any wire protocol's shape, and say what they ask.

    `choice`: "none", "auto", "required" (a call to any tool) or "function" (a call to `named`);
    None means "auto" with tools and "none" without. `tool_param(i, key)` names a tool's field in
    this protocol's errors (`key` is "name" or `schema_key`); `named_param` the forced name's field.
    A tool whose parameters are None takes none (`{}`).
    """
    defs = []
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if t.name in seen:
            raise InvalidRequestError(f"two tools are named {t.name!r}", param=tool_param(i, "name"))
        seen.add(t.name)
        params = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InvalidRequestError(f"a function's {schema_key} must be a JSON schema of type object",
                                      param=tool_param(i, schema_key))
        defs.append(Tool(t.name, t.description, params))
    forced: tuple[str, ...]
    if choice == "function":
        if named not in seen:
            raise InvalidRequestError(f"tool_choice names the function {named!r}, which is not in 'tools'",
                                      param=named_param)
        mode, forced = "forced", (str(named),)
    else:
        choice = choice or ("auto" if defs else "none")
        if choice != "none" and not defs:
            raise InvalidRequestError(f"tool_choice {choice!r} needs at least one tool in 'tools'", param="tool_choice")
        mode, forced = ("forced", tuple(d.name for d in defs)) if choice == "required" else (choice, ())
    return ToolPlan(tuple(defs), mode, forced, parallel, tool_param, schema_key)


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


def call_syntax(info: ModelInfo) -> ToolSyntax:
    """How a model writes calls: its family's own syntax where its template renders tools. Where the template
    renders none (DeepSeek's), the tools are described in <tool_call> terms (system_text), and both that and
    the family's own syntax are read; a family with no syntax of its own gets the <tool_call> blocks alone."""
    fmt = info.chat_format
    if not fmt.native_tools or fmt.tools is GENERIC.tools:
        return GENERIC.tools
    return fmt.tools if info.supports_tools else EitherSyntax(fmt.tools, GENERIC.tools)


def prompt_messages(messages: list[dict[str, Any]], plan: ToolPlan, native: bool,
                    history_id: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
    """Messages for the chat template; without native tool support, calls and results become text.
    `history_id`: the call ids the template accepts, from the client's (the family's ChatFormat.history_id)."""
    out = []
    for m in messages:
        if native:
            if m.get("tool_calls"):
                m = {**m, "tool_calls": [_native_call(c, history_id) for c in m["tool_calls"]]}
            if history_id is not None and isinstance(m.get("tool_call_id"), str):
                m = {**m, "tool_call_id": history_id(m["tool_call_id"])}
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


def tool_prompt(messages: list[dict[str, Any]], plan: ToolPlan, info: ModelInfo,
                variables: dict[str, Any] | None = None) -> ChatPrompt:
    """A conversation and its tools as the model's chat template's prompt: where the template renders
    tools itself (`info.supports_tools`) they go there; otherwise they are text (prompt_messages)."""
    native = info.supports_tools
    return ChatPrompt(prompt_messages(messages, plan, native, info.chat_format.history_id),
                      tools=[t.openai() for t in plan.tools] if native and plan.active else None,
                      variables=variables or {})


def _call_json(call: Any) -> dict[str, Any]:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        # Held to the request body's rule (depth, finite numbers): text that is not JSON stays text.
        with contextlib.suppress(ValueError):
            args = bounded_loads(args, "function.arguments of a tool call in the conversation")
    return {"name": fn.get("name", ""), "arguments": args}


def _native_call(call: Any, history_id: Callable[[str], str] | None) -> Any:
    # Hugging Face templates expect arguments as a mapping (OpenAI sends a JSON string); the renderer gives a
    # template that reads the string the string back (engine/chat_template.py's caps).
    if not isinstance(call, dict):
        return call
    fn = call.get("function", {})
    parsed = _call_json(call)
    out = {**call, "function": {**fn, "arguments": parsed["arguments"]}}
    if history_id is not None and isinstance(call.get("id"), str):
        out["id"] = history_id(call["id"])
    return out


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
