"""Chat templates: render OpenAI messages with the Jinja template a GGUF carries (as transformers does).

The environment is transformers' (ImmutableSandboxedEnvironment, `tojson`, `raise_exception`,
`strftime_now`, `{% generation %}`, loop controls); the inputs are shaped as llama.cpp's common/chat
shapes them, so every template of llama.cpp's corpus renders: content is never null, `tools` is
undefined when there are none, `date_string`/`datetime` default to today, a template without a system
role gets the system prompt in the first user message, and tool-call arguments are a mapping or a
JSON string as the template was found to read them (`TemplateCaps`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InvalidInput, TemplateError


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass-through for Hugging Face's `{% generation %}` tag."""

    tags = {"generation"}  # noqa: RUF012  (jinja2.ext.Extension declares tags as a plain class-level set)

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TemplateEnvironment(ImmutableSandboxedEnvironment):
    """transformers' sandbox, less its ban on a list's own append/pop.

    Templates build queues of their own (Kimi K2 pairs tool results with call ids through
    `ns.ids.append(...)` / `ns.ids.pop(0)`, as llama.cpp's engine allows). Every render gets a deep
    copy of its inputs, so a template can only change data of that render: nothing the server keeps.
    """

    _LIST_METHODS = frozenset({"append", "extend", "insert", "pop"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, list) and attr in self._LIST_METHODS:
            return True
        return super().is_safe_attribute(obj, attr, value)


def _json_default(x: Any) -> Any:
    # jinja2's map/select/reject filters yield generators where llama.cpp's engine yields lists
    # (llama.cpp's DeepSeek R1 template writes `tools | map(attribute='function') | tojson`).
    if isinstance(x, jinja2.Undefined):
        return None
    if isinstance(x, Iterable) and not isinstance(x, (str, bytes)):
        return list(x)
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys,
                      default=_json_default)


def _raise_exception(message: str) -> None:
    raise InvalidInput(f"the chat template refused these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# A plain ChatML fallback for GGUFs without a template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# What the server itself passes every template: a request's own variables may not replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "bos_token", "eos_token", "add_generation_prompt",
                                "raise_exception", "strftime_now"})


@dataclass(frozen=True)
class TemplateCaps:
    """What a template was found to do with its inputs, probed once by rendering (as llama.cpp's
    jinja/caps.cpp does; it watches which values are read, here the rendered text is read instead)."""

    system_role: bool = True  # a system message's text reaches the prompt
    object_arguments: bool = True  # history calls' arguments are read as a mapping, not a JSON string
    # An assistant message's calls are written only when its content is null (DeepSeek R1's
    # `message['content'] is none`); elsewhere a null content is "", as llama.cpp passes it.
    null_call_content: bool = False


_NEEDLE = "argument_needle"
_PROBE_ARGUMENTS = {_NEEDLE: "print('Hello, World!')"}
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": "tool1", "description": "Tool description",
    "parameters": {"type": "object", "properties": {_NEEDLE: {"type": "string", "description": "Arg description"}},
                   "required": [_NEEDLE]}}}]
# The shapes a history call is tried in (content, arguments as a mapping), the likeliest first.
_CALL_SHAPES = (("", True), ("", False), (None, True), (None, False))


def _probe_calls(content: str | None, arguments: Any) -> list[dict[str, Any]]:
    # llama.cpp's probe conversation; "call00001" is 9 alphanumerics, as Mistral's templates demand.
    call = {"id": "call00001", "type": "function", "function": {"name": "tool1", "arguments": arguments}}
    return [{"role": "user", "content": "User message"},
            {"role": "assistant", "content": content, "tool_calls": [call]},
            {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
            {"role": "assistant", "content": "The tool response was 'tool response'"},
            {"role": "user", "content": "User message"}]


def _reads_arguments(rendered: str | None, as_object: bool) -> bool:
    if rendered is None:
        return False
    if as_object:
        # Written out as JSON or XML writes a key, not as Python's repr: `{{ arguments }}` prints
        # {'argument_needle': ...}, and such a template wants the JSON string.
        return _NEEDLE in rendered and f"'{_NEEDLE}'" not in rendered
    return json.dumps(_PROBE_ARGUMENTS) in rendered


def probe_caps(render: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]) -> TemplateCaps:
    """The template's caps, from renders of llama.cpp's probe conversations through `render`."""
    def attempt(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str | None:
        try:
            return render(messages, tools)
        except Exception:  # a probe that fails only tells us the template does not take that shape
            return None

    system = attempt([{"role": "system", "content": "<System Needle>"}, {"role": "user", "content": "Hi"}], None)
    renders = {(content, as_object): attempt(_probe_calls(content, _PROBE_ARGUMENTS if as_object
                                                          else json.dumps(_PROBE_ARGUMENTS)), _PROBE_TOOLS)
               for content, as_object in _CALL_SHAPES}
    # The first shape whose call reaches the prompt; else the first that renders at all.
    shape = next((s for s in _CALL_SHAPES if _reads_arguments(renders[s], s[1])),
                 next((s for s in _CALL_SHAPES if renders[s] is not None), _CALL_SHAPES[0]))
    return TemplateCaps(system_role=system is not None and "<System Needle>" in system,
                        object_arguments=shape[1], null_call_content=shape[0] is None)


def _arguments(value: Any, as_object: bool) -> Any:
    if as_object and isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value  # not JSON: the text stays text, as server/core/tools.py leaves it
    if not as_object and isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False)
    return value


def shape_messages(messages: list[dict[str, Any]], caps: TemplateCaps) -> list[dict[str, Any]]:
    """A deep copy of `messages` in the shape llama.cpp gives templates (common/chat.cpp's workarounds)."""
    out = copy.deepcopy(messages)
    for msg in out:
        if caps.null_call_content and msg.get("tool_calls") and not msg.get("content"):
            msg["content"] = None
        elif msg.get("content") is None:
            msg["content"] = ""  # templates test `'</think>' in content` or concatenate it
        for call in msg.get("tool_calls") or ():
            function = call.get("function")
            if isinstance(function, dict) and "arguments" in function:
                function["arguments"] = _arguments(function["arguments"], caps.object_arguments)
    if not caps.system_role and out and out[0].get("role") == "system":
        system = out.pop(0)
        if out and out[0].get("role") == "user" and isinstance(out[0]["content"], str):
            out[0]["content"] = f"{system['content']}\n{out[0]['content']}"
        else:
            out.insert(0, {"role": "user", "content": system["content"]})
    return out


class ChatTemplate:
    """A compiled chat template with the model's BOS/EOS strings bound."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = _TemplateEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
            variables = jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template is not valid Jinja: {exc}") from None
        # Whether the template writes tool definitions itself (Qwen, Llama 3.1, Hermes, ...).
        # FireFunction v2 reads its tools as a JSON text named `functions`, not as `tools`.
        self._reads_functions = "functions" in variables
        self.supports_tools = "tools" in variables or self._reads_functions
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.caps = probe_caps(lambda messages, tools: self._render(messages, tools, True, {}))

    def render(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, variables: dict[str, Any] | None = None) -> str:
        """The prompt text; `variables` are more names the template may read (`enable_thinking`)."""
        clash = sorted(RESERVED_VARIABLES.intersection(variables or {}))
        if clash:
            raise InvalidInput(f"chat template variable {clash[0]!r} is set by the server, not the request")
        try:
            return self._render(shape_messages(messages, self.caps), tools, add_generation_prompt,
                                copy.deepcopy(variables or {}))
        except InvalidInput:
            raise
        except Exception as exc:  # a template bug must be a clear 400, not a 500
            raise InvalidInput(f"the model's chat template failed on these messages: {exc}") from None

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                add_generation_prompt: bool, variables: dict[str, Any]) -> str:
        now = datetime.now()
        context: dict[str, Any] = {
            # llama.cpp's common_chat_extra_context: Llama 3.1 reads date_string, FireFunction datetime.
            "date_string": now.strftime("%d %b %Y"),
            "datetime": now.strftime("%b %d %Y"),
            # As llama.cpp's server passes by default: templates that test `not enable_thinking` (QwQ's and
            # DeepSeek-R1's in its corpus) open the thinking block unless a request says false.
            "enable_thinking": True,
            **variables,
            "messages": messages,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_generation_prompt": add_generation_prompt,
            "raise_exception": _raise_exception,
            "strftime_now": _strftime_now,
        }
        if tools:
            # Undefined when there are none, as llama.cpp passes it: Hermes and Command R+ iterate
            # `tools` unguarded, which an undefined allows and None does not.
            context["tools"] = copy.deepcopy(tools)
        if self._reads_functions and "functions" not in variables:
            functions = [t.get("function", t) for t in tools or ()]
            context["functions"] = json.dumps(functions, ensure_ascii=False, indent=4) if functions else ""
        return self._template.render(**context)
