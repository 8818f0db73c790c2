"""The OpenAI Responses API's requests: pydantic models that check every field they hold, and the
conversation they describe as chat messages (what the chat template and the tool prompt read).

Input items are one lenient model checked by `type` (a bad item is a 400 naming `input[i]...`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from ..core.fields import Lenient
from ..core.images import MEDIA_MARKER, ImageRef
from ..core.tools import Tool
from ..errors import InvalidRequestError
from .protocol import JsonSchemaFormat, _SamplingFields

# Content part types read as text; input_image goes to the model's vision projector; the rest (input_file,
# input_audio) is refused.
_TEXT_PARTS = {"input_text", "output_text", "text"}


class ContentPart(Lenient):
    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None  # input_image: a data URL, or an http(s) one (allow_remote_images)
    file_id: str | None = None


class InputItem(Lenient):
    """One item of `input`: a message (with or without `type`), a function call or its output, or a
    reasoning item (kept in the conversation's record, left out of the prompt as chat templates do)."""

    id: str | None = Field(None, max_length=256)  # kept for input_items (outputs sent back carry theirs)
    type: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | dict[str, Any] | None = None
    output: str | list[ContentPart] | None = None

    @property
    def kind(self) -> str:
        return self.type or "message"

    def check(self, i: int) -> None:
        """A 400 naming the field when the item cannot be served."""
        where = f"input[{i}]"
        if self.kind == "message":
            if self.role is None:
                raise InvalidRequestError("a message item needs 'role'", param=f"{where}.role",
                                          code="missing_required_parameter")
            _text(self.content, f"{where}.content")
        elif self.kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if getattr(self, key) is None:
                    raise InvalidRequestError(f"a function_call item needs '{key}'", param=f"{where}.{key}",
                                              code="missing_required_parameter")
        elif self.kind == "function_call_output":
            for key in ("call_id", "output"):
                if getattr(self, key) is None:
                    raise InvalidRequestError(f"a function_call_output item needs '{key}'", param=f"{where}.{key}",
                                              code="missing_required_parameter")
            _text(self.output, f"{where}.output")
        elif self.kind != "reasoning":
            raise InvalidRequestError(
                f"input item type {self.kind!r} is not supported: use messages, function_call and "
                "function_call_output items", param=f"{where}.type", code="invalid_value")


def _text(content: str | list[ContentPart] | None, where: str) -> str:
    """A message's (or a call output's) text; parts are joined, non-text parts refused."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type == "refusal":
            texts.append(part.refusal or "")
            continue
        if part.type == "input_image":  # where the image stands; image_refs() lists them in the same order
            texts.append(MEDIA_MARKER)
            continue
        if part.type not in _TEXT_PARTS:
            raise InvalidRequestError(f"content part type {part.type!r} is not supported: this model reads text only",
                                      param=f"{where}[{j}].type", code="invalid_value")
        if part.text is None:
            raise InvalidRequestError("a text content part needs 'text'", param=f"{where}[{j}].text",
                                      code="missing_required_parameter")
        texts.append(part.text)
    return "".join(texts)


class FunctionTool(Lenient):
    type: str
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(Lenient):
    type: str
    name: str | None = None


class TextFormat(JsonSchemaFormat):
    """`text.format`: chat's `response_format` with the json_schema fields at the top level."""

    type: Literal["text", "json_object", "json_schema"]

    @property
    def schema_to_enforce(self) -> Any:
        """The JSON schema the output must follow (None: any JSON object, or free text)."""
        return self.schema_ if self.type == "json_schema" else None


class TextConfig(Lenient):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_SamplingFields):
    """POST /v1/responses. The sampling extensions (top_k, min_p, seed, `lora`...) are chat's."""

    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    text: TextConfig | None = None
    parallel_tool_calls: bool = True
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _servable(self) -> ResponsesRequest:
        for i, tool in enumerate(self.tools or []):
            if tool.type != "function":
                raise InvalidRequestError(f"tool type {tool.type!r} is not supported: only function tools are",
                                          param=f"tools[{i}].type", code="invalid_value")
            if tool.name is None:
                raise InvalidRequestError("a function tool needs 'name'", param=f"tools[{i}].name",
                                          code="missing_required_parameter")
        choice = self.tool_choice
        if isinstance(choice, FunctionChoice):
            if choice.type != "function":
                raise InvalidRequestError(f"tool_choice type {choice.type!r} is not supported: only function tools are",
                                          param="tool_choice.type", code="invalid_value")
            if choice.name is None:
                raise InvalidRequestError("tool_choice needs 'name'", param="tool_choice.name",
                                          code="missing_required_parameter")
        fmt = self.format
        if fmt is not None and fmt.type == "json_schema" and "schema_" not in fmt.model_fields_set:
            raise InvalidRequestError("text.format type 'json_schema' needs a 'schema'", param="text.format.schema",
                                      code="missing_required_parameter")
        for i, item in enumerate(self.items()):
            item.check(i)
        if self.previous_response_id is None and not self.items():
            raise InvalidRequestError("'input' must not be empty", param="input", code="invalid_value")
        return self

    def items(self) -> list[InputItem]:
        """`input` as items: a string is one user message."""
        if isinstance(self.input, str):
            return [InputItem(type="message", role="user", content=self.input)]
        return self.input

    @property
    def format(self) -> TextFormat | None:
        return self.text.format if self.text is not None else None

    def function_tools(self) -> list[Tool]:
        return [Tool(str(t.name), t.description or "", t.parameters) for t in self.tools or []]

    def choice(self) -> tuple[str | None, str | None]:
        """`tool_choice` as make_plan reads it: the mode, and the function a named choice forces."""
        if isinstance(self.tool_choice, FunctionChoice):
            return "function", self.tool_choice.name
        return self.tool_choice, None


def image_refs(items: list[dict[str, Any]]) -> list[ImageRef]:
    """Every input_image of the conversation, in the order chat_messages() marks them."""
    refs = []
    for i, raw in enumerate(items):
        item = InputItem.model_validate(raw)
        content = item.content if item.kind == "message" else item.output if item.kind == "function_call_output" else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if part.type != "input_image":
                continue
            param = f"input[{i}].{'content' if item.kind == 'message' else 'output'}[{j}]"
            if part.image_url is None:
                raise InvalidRequestError("an input_image needs 'image_url' (a data URL); file_id images are not "
                                          "supported", param=f"{param}.image_url", code="missing_required_parameter")
            refs.append(ImageRef(part.image_url, f"{param}.image_url"))
    return refs


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as chat messages: function calls join the assistant turn they follow, their
    outputs become `tool` messages, reasoning items are left out. `items` are checked (InputItem.check)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for raw in items:
        item = InputItem.model_validate(raw)
        if item.kind == "message":
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": _text(item.content, "input")})
        elif item.kind == "function_call":
            args = item.arguments if isinstance(item.arguments, str) else json.dumps(item.arguments)
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": args}}
            if not out or out[-1]["role"] != "assistant":
                out.append({"role": "assistant", "content": ""})
            out[-1] = {**out[-1], "tool_calls": [*out[-1].get("tool_calls", []), call]}
        elif item.kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output, "input")})
    return out
