"""The Anthropic Messages API's requests: pydantic models with Anthropic's names, that check every field they
hold and turn a conversation into the OpenAI-shaped messages the chat template and the tool core read.

- A top-level field Anthropic does not document is a 400 naming it, as Anthropic answers ("x: Extra inputs
  are not permitted"), not silently ignored; content blocks inside stay lenient. `thread` (message threads:
  the server would keep the conversation) is a 400 with `error.details.error_code`
  "thread_unsupported_request", on which the anthropic SDK resends the whole history instead.
- Documented fields a local model has no use for (`service_tier`, `container`, `mcp_servers`,
  `context_management`, `cache_control`...) are accepted and ignored, as `thinking` is: the model thinks
  (or not) as its chat template makes it; a `<think>` block it writes is answered as a `thinking` block.
- `output_config.format` (`{"type": "json_schema", "schema": ...}`), or the older beta's top-level
  `output_format`, is enforced with a grammar.
- Extra, non-Anthropic: `lora` ([{"name", "scale"}]) as chat completions has it, `keep_alive`,
  `speculative`; `model` may be left out for the default model.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from ..core.fields import KeepAlive, Lenient, LoraRef, SpeculativeOptions
from ..core.images import MEDIA_MARKER, ImageRef
from ..errors import InvalidRequestError, UnsupportedFeatureError

__all__ = ["CountTokensRequest", "MessagesRequest"]

# The content blocks a text model can read; a thinking block sent back is dropped, as Anthropic drops
# earlier turns' thinking.
_READABLE = {"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"}
_MEDIA = {"image", "document", "file", "container_upload", "search_result"}


class TextBlock(Lenient):
    type: Literal["text"]
    text: str


class ImageSource(Lenient):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Lenient):
    """An image for the model's vision projector (docs/images.md)."""

    type: Literal["image"]
    source: ImageSource

    def ref(self, param: str) -> ImageRef:
        source = self.source
        if source.type == "url":
            if not source.url:
                raise InvalidRequestError("an image source of type 'url' needs 'url'", param=f"{param}.source.url")
            return ImageRef(source.url, f"{param}.source.url")
        if source.data is None or not source.media_type:
            raise InvalidRequestError("a base64 image source needs 'media_type' and 'data'", param=f"{param}.source")
        return ImageRef(f"data:{source.media_type};base64,{source.data}", f"{param}.source.data")


class ToolUseBlock(Lenient):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(Lenient):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: list[TextBlock] | str = ""
    is_error: bool = False

    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(Lenient):
    type: Literal["thinking", "redacted_thinking"]


def _block_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _TAGS.get(kind) if isinstance(kind, str) else None


# Tags capitalised, so that a 400's field path leaves them out (messages[0].content[1].id).
_TAGS = {"text": "Text", "image": "Image", "tool_use": "ToolUse", "tool_result": "ToolResult", "thinking": "Thinking",
         "redacted_thinking": "Thinking"}
Block = Annotated[
    Annotated[TextBlock, Tag("Text")] | Annotated[ImageBlock, Tag("Image")] | Annotated[ToolUseBlock, Tag("ToolUse")]
    | Annotated[ToolResultBlock, Tag("ToolResult")] | Annotated[ThinkingBlock, Tag("Thinking")],
    Discriminator(_block_tag, custom_error_type="invalid_block",
                  custom_error_message="each content block needs a 'type': text, image, tool_use or tool_result"),
]


class InputMessage(Lenient):
    role: Literal["user", "assistant"]
    content: list[Block] | str  # the list first: a wrong block is reported, not "not a string"


class ToolParam(Lenient):
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    description: str = ""
    input_schema: dict[str, Any]


class ToolChoice(Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("type 'tool' needs the 'name' of the tool to call")
        return self


class OutputFormat(Lenient):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Lenient):
    format: OutputFormat | None = None


class CountTokensRequest(KeepAlive):
    """POST /v1/messages/count_tokens: what makes the prompt."""

    # Documented by Anthropic (the SDK's MessageCountTokensParams, beta included), of no use here: ignored.
    IGNORED: ClassVar[frozenset[str]] = frozenset({
        "cache_control", "context_management", "mcp_servers", "speed", "compaction", "billing_policy", "betas"})

    model: str | None = None
    messages: list[InputMessage] = Field(min_length=1)
    system: list[TextBlock] | str | None = None
    tools: list[ToolParam] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None  # the structured-outputs beta's place for it (2025-11)
    # nomoat: the whole adapter set for this request, e.g. [{"name": "sql", "scale": 0.8}]; `model` then
    # only selects the base, and [] means the base model alone.
    lora: list[LoraRef] | None = Field(None, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        """Anthropic refuses what it does not serve; a field silently dropped would change the answer unseen
        (`thread`: the model would lose the conversation)."""
        if not isinstance(data, dict):
            return data
        if data.get("thread") not in (None, False):
            raise UnsupportedFeatureError(
                "thread: message threads are not supported: this server keeps no conversation; send the whole "
                "conversation in 'messages' without 'thread'", param="thread", code="thread_unsupported_request")
        unknown = sorted(k for k, v in data.items() if v is not None and k not in cls.model_fields
                         and k not in cls.IGNORED and k != "thread")
        if unknown:
            raise InvalidRequestError(f"{unknown[0]}: Extra inputs are not permitted", param=unknown[0])
        return data

    @model_validator(mode="before")
    @classmethod
    def _readable(cls, data: Any) -> Any:
        """Blocks and tools a text model cannot serve are refused by name (a 400 naming the field)."""
        if not isinstance(data, dict):
            return data
        messages = data.get("messages")
        for i, m in enumerate(messages if isinstance(messages, list) else []):
            content = m.get("content") if isinstance(m, dict) else None
            for j, block in enumerate(content if isinstance(content, list) else []):
                _check_block(block, f"messages[{i}].content[{j}]")
                inner = block.get("content") if isinstance(block, dict) else None
                for k, part in enumerate(inner if isinstance(inner, list) else []):
                    _check_block(part, f"messages[{i}].content[{j}].content[{k}]", {"text"})
        tools = data.get("tools")
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in (None, "custom"):
                raise InvalidRequestError(f"tool type {kind!r} is not supported: only custom tools (name, description, "
                                          "input_schema) are served", param=f"tools[{i}].type")
        return data

    @model_validator(mode="after")
    def _turns(self) -> CountTokensRequest:
        for i, m in enumerate(self.messages):
            for j, block in enumerate([] if isinstance(m.content, str) else m.content):
                wrong = "assistant" if isinstance(block, ToolResultBlock) else "user"
                if isinstance(block, (ToolUseBlock, ToolResultBlock)) and m.role == wrong:
                    raise InvalidRequestError(f"a {block.type} block cannot be in a {wrong} message",
                                              param=f"messages[{i}].content[{j}]")
        return self

    def lora_pairs(self) -> list[tuple[str, float]] | None:
        """Each adapter once; naming one twice adds its scales, as a sum of deltas would."""
        if self.lora is None:
            return None
        names = dict.fromkeys(ref.name for ref in self.lora)
        return [(name, sum(ref.scale for ref in self.lora if ref.name == name)) for name in names]

    @property
    def output_schema(self) -> dict[str, Any] | None:
        fmt = self.output_config.format if self.output_config and self.output_config.format else self.output_format
        return fmt.schema_ if fmt else None

    def image_refs(self) -> list[ImageRef]:
        """Every image block of the conversation, in order."""
        return [b.ref(f"messages[{i}].content[{j}]") for i, m in enumerate(self.messages)
                if not isinstance(m.content, str) for j, b in enumerate(m.content) if isinstance(b, ImageBlock)]

    def template_messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI-shaped messages: `system` first, tool uses as `tool_calls`, each tool
        result a `tool` message (before the text of its user turn, as Anthropic orders them)."""
        out: list[dict[str, Any]] = []
        system = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system or [])
        if system:
            out.append({"role": "system", "content": system})
        for m in self.messages:
            if isinstance(m.content, str):
                out.append({"role": m.role, "content": m.content})
                continue
            # An image stands where its block is, in the order image_refs() lists them.
            text = "".join(b.text if isinstance(b, TextBlock) else MEDIA_MARKER
                           for b in m.content if isinstance(b, TextBlock | ImageBlock))
            calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                     for b in m.content if isinstance(b, ToolUseBlock)]
            results = [{"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text()}
                       for b in m.content if isinstance(b, ToolResultBlock)]
            out += results
            if calls:
                out.append({"role": "assistant", "content": text, "tool_calls": calls})
            elif text or not results:
                out.append({"role": m.role, "content": text})
        return out


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages; `metadata` is ignored."""

    # Documented by Anthropic (the SDK's MessageCreateParams, beta included), of no use here: ignored.
    IGNORED: ClassVar[frozenset[str]] = CountTokensRequest.IGNORED | {
        "service_tier", "container", "inference_geo", "diagnostics", "fallbacks", "fallback_credit_token"}

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
    stream: bool = False
    # nomoat: speculative decoding, as chat completions has it ({"type": "ngram", "n_max": 8}).
    speculative: SpeculativeOptions | None = None
    # llama.cpp's server: false keeps this request's prompt out of the prompt cache (neither saved nor restored).
    cache_prompt: bool = True


def _check_block(block: Any, param: str, readable: set[str] = _READABLE) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str) or kind in readable:
        return  # a missing or mistyped type is the model validation's to report
    if kind == "image":
        why = "an image in a tool_result is not read here; send it as an image block of the user turn"
    else:
        why = "this server reads text and images only" if kind in _MEDIA else "it is not a block a client sends to this server"
    raise InvalidRequestError(f"content block type {kind!r} is not supported: {why}", param=f"{param}.type")
