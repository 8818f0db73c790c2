"""What a fine-tune file must hold (OpenAI's chat format, JSONL), checked line by line, and its examples read back
for the trainer. No torch here: the server checks uploads with it, the trainer builds its dataset from it.

One example per line: `{"messages": [...], "tools": [...]?, "parallel_tool_calls": bool?}`. Messages have a
`role` (system, developer, user, assistant, tool) and `content` (a string or a list of text parts); an assistant
message may carry `tool_calls` (then `content` may be absent or null) and `weight` 0 or 1 (0: not trained on).
Every example needs an assistant message with a weight other than 0. OpenAI asks for at least 10 examples; a
model on this box is tuned on far smaller sets (one fact, a handful of lines), so one example is enough here.
Errors name the line and the field (`line 7: messages[2].role must be one of ...`): a 400 with `param` "file".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
MIN_EXAMPLES = 1
_EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
_MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "weight"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
CODE = "invalid_file_format"


@dataclass(frozen=True)
class Example:
    """One training example. `messages` are plain chat messages as a chat template takes them: content joined
    into one string, `weight` taken out; `weights[i]` is 1 where messages[i] is an assistant message trained on,
    0 elsewhere (every other role, and assistant messages with `weight: 0`)."""

    messages: list[dict[str, Any]]
    weights: tuple[int, ...]
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None


class FineTuneFormatError(InvalidRequestError):
    """A fine-tune file breaks the chat format; the message names the line and the field."""

    code = CODE


def check_fine_tune_file(path: Path, param: str = "file") -> int:
    """The number of examples in the file at `path`, or the first error found (FineTuneFormatError naming
    `param`). Blocking: call it off the event loop."""
    return sum(1 for _ in _examples(path, param))


def read_examples(path: Path, param: str = "file") -> list[Example]:
    """Every example of the file, checked as `check_fine_tune_file` does."""
    return list(_examples(path, param))


def _examples(path: Path, param: str) -> Iterator[Example]:
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, an empty last line) hold no example
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _error(number, "is not UTF-8 text", param) from None
            yield parse_line(number, text, param)
            count += 1
    if count < MIN_EXAMPLES:
        raise FineTuneFormatError(f"the file holds no example: a fine-tune file is JSONL, one JSON object with "
                                  f"`messages` a line, at least {MIN_EXAMPLES}", param=param)


def parse_line(number: int, text: str, param: str = "file") -> Example:
    """One line's example, or FineTuneFormatError naming line `number`."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _error(number, f"is not valid JSON ({exc})", param) from None
    if not isinstance(data, dict):
        raise _error(number, f"must be a JSON object with `messages`, not {_kind(data)}", param)
    extra = sorted(set(data) - _EXAMPLE_KEYS)
    if extra:
        raise _error(number, f"holds the unknown key {extra[0]!r}: an example holds messages, tools and "
                     "parallel_tool_calls", param)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _error(number, "messages must be a non-empty list of messages", param)
    tools = data.get("tools")
    if tools is not None:
        _check_tools(number, tools, param)
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _error(number, f"parallel_tool_calls must be true or false, not {_kind(parallel)}", param)
    plain, weights = [], []
    for index, message in enumerate(messages):
        message_out, weight = _message(number, index, message, param)
        plain.append(message_out)
        weights.append(weight)
    if not any(weights):
        raise _error(number, "needs an assistant message to train on (one with a weight other than 0)", param)
    return Example(plain, tuple(weights), tools, parallel)


def _message(number: int, index: int, message: Any, param: str) -> tuple[dict[str, Any], int]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _error(number, f"{where} must be an object with role and content, not {_kind(message)}", param)
    role = message.get("role")
    if role not in ROLES:
        raise _error(number, f"{where}.role must be one of {', '.join(ROLES)} (got {_shown(role)})", param)
    extra = sorted(set(message) - _MESSAGE_KEYS[role])
    if extra:
        raise _error(number, f"{where} holds the key {extra[0]!r}, which a {role} message cannot have", param)
    out: dict[str, Any] = {"role": role}
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        _check_tool_calls(number, f"{where}.tool_calls", tool_calls, param)
        out["tool_calls"] = tool_calls
    content = message.get("content")
    if content is None and tool_calls is None:
        raise _error(number, f"{where}.content must be a string or a list of text parts"
                     + (" (or tool_calls given)" if role == "assistant" else ""), param)
    if content is not None:
        out["content"] = _text(number, f"{where}.content", content, param)
    for key in ("name", "tool_call_id"):
        if key in message:
            if not isinstance(message[key], str):
                raise _error(number, f"{where}.{key} must be a string", param)
            out[key] = message[key]
    weight = message.get("weight", 1 if role == "assistant" else 0)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise _error(number, f"{where}.weight must be 0 or 1 (got {_shown(weight)})", param)
    return out, int(weight)


def _text(number: int, where: str, content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _error(number, f"{where} must be a string or a list of text parts, not {_kind(content)}", param)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _error(number, f"{where}[{i}] must be a text part, {{\"type\": \"text\", \"text\": \"...\"}} "
                         "(images are not trained on here)", param)
        texts.append(part["text"])
    return "".join(texts)


def _check_tool_calls(number: int, where: str, calls: Any, param: str) -> None:
    if not isinstance(calls, list) or not calls:
        raise _error(number, f"{where} must be a non-empty list of tool calls", param)
    for i, call in enumerate(calls):
        at = f"{where}[{i}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise _error(number, f"{at} must be an object with type \"function\"", param)
        if "id" in call and not isinstance(call["id"], str):
            raise _error(number, f"{at}.id must be a string", param)
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise _error(number, f"{at}.function.name must be a non-empty string", param)
        if not isinstance(function.get("arguments"), str):
            raise _error(number, f"{at}.function.arguments must be a string (JSON text)", param)


def _check_tools(number: int, tools: Any, param: str) -> None:
    if not isinstance(tools, list):
        raise _error(number, f"tools must be a list of tools, not {_kind(tools)}", param)
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _error(number, f"{at} must be an object with type \"function\"", param)
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise _error(number, f"{at}.function.name must be a non-empty string", param)
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _error(number, f"{at}.function.parameters must be a JSON schema object", param)


def _error(number: int, what: str, param: str) -> FineTuneFormatError:
    return FineTuneFormatError(f"line {number}: {what}", param=param)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
