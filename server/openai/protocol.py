"""The OpenAI wire format's requests: pydantic models, lenient (unknown fields are ignored), that check
every field they hold, so handlers receive only requests that can be served."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..core.fields import KeepAlive, Lenient, LoraRef, SpeculativeOptions
from ..core.images import MEDIA_MARKER, ImageRef
from ..engine.chat_template import RESERVED_VARIABLES
from ..errors import InvalidRequestError

# Non-OpenAI fields accepted as in llama.cpp's server and vLLM: top_k, min_p, repeat_penalty.
_TOKEN_ID = re.compile(r"-?[0-9]{1,10}")


class StreamOptions(Lenient):
    include_usage: bool = False


class ImageURL(Lenient):
    url: str
    detail: str | None = None  # OpenAI's resolution hint: libmtmd sizes images by the projector's own rules


class TextPart(Lenient):
    """A content part: `text`, or `image_url` (docs/images.md)."""

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None  # a bare string as some clients send it


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self, index: int) -> str:
        """The message's text; a list of parts is joined, non-text parts are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for j, part in enumerate(self.content):
            if part.type == "text" and part.text is None:
                raise InvalidRequestError("a text content part needs 'text'", param=f"messages[{index}].content[{j}].text")
            if part.type == "image_url":  # the model's vision projector reads it there (engine/vision.py)
                texts.append(MEDIA_MARKER)
                continue
            if part.type != "text":
                raise InvalidRequestError(
                    f"content part type {part.type!r} is not supported: this model reads text only",
                    param=f"messages[{index}].content[{j}].type",
                )
            texts.append(part.text or "")
        return "".join(texts)

    def image_refs(self, index: int) -> list[ImageRef]:
        """The message's images, in the order text() marks them."""
        refs = []
        for j, part in enumerate(self.content if isinstance(self.content, list) else ()):
            if part.type != "image_url":
                continue
            param = f"messages[{index}].content[{j}].image_url"
            if part.image_url is None:
                raise InvalidRequestError("an image_url content part needs 'image_url': {\"url\": ...}", param=param)
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            refs.append(ImageRef(url, param))
        return refs


class _SamplingFields(KeepAlive):
    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # nomoat: the whole adapter set for this request, e.g. [{"name": "sql", "scale": 0.8}].
    # When present, `model` only selects the base; [] means the base model alone.
    lora: list[LoraRef] | None = Field(None, max_length=16)
    # llama.cpp's server: a GBNF grammar (root rule `root`) every answer must follow.
    grammar: str | None = None
    speculative: SpeculativeOptions | None = None
    # llama.cpp's server: false keeps this request's prompt out of the prompt cache (neither saved nor restored).
    cache_prompt: bool = True

    def lora_pairs(self) -> list[tuple[str, float]] | None:
        if self.lora is None:
            return None
        merged: dict[str, float] = {}
        for ref in self.lora:  # naming one adapter twice adds its scales, as a sum of deltas would
            merged[ref.name] = merged.get(ref.name, 0.0) + ref.scale
        return list(merged.items())

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not _TOKEN_ID.fullmatch(key):  # ASCII digits only: str.isdigit() also takes "²"
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {bias}")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionDef(Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Lenient):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(Lenient):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | bool = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Lenient):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    # llama.cpp's server form, which some clients send: a schema on json_object. Enforced, never ignored.
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")

    @property
    def schema_to_enforce(self) -> Any:
        """The JSON schema the output must follow (None: any JSON object)."""
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_
        return self.schema_

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # The pre-tools API: refused with a pointer to its replacement rather than ignored.
    functions: list[Any] | None = None
    function_call: Any = None
    # As llama.cpp's server: more variables for the model's chat template (`{"enable_thinking": false}`),
    # and how a thinking block is returned (`none`: left in the content; default: the model's setting).
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_format: Literal["auto", "deepseek", "none"] | None = None
    # OpenAI's; passed to the chat template as `reasoning_effort` (some templates read it).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _own_variables(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        clash = sorted(RESERVED_VARIABLES.intersection(value or {}))
        if clash:
            raise ValueError(f"{clash[0]!r} is set by the server and cannot be overridden")
        return value

    @model_validator(mode="after")
    def _servable(self) -> ChatCompletionRequest:
        if self.functions is not None or self.function_call is not None:
            raise InvalidRequestError(
                "'functions' and 'function_call' are deprecated and not supported: use 'tools' and 'tool_choice'",
                param="functions" if self.functions is not None else "function_call",
            )
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs: true", param="top_logprobs")
        if self.grammar is not None:
            if self.response_format is not None and self.response_format.type != "text":
                raise InvalidRequestError("'grammar' and a JSON 'response_format' both constrain the output: "
                                          "send one of them", param="grammar")
            if self.tools and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)):
                raise InvalidRequestError("'grammar' and a forced tool call ('tool_choice') both constrain the "
                                          "output: send one of them", param="grammar")
        return self

    def template_variables(self) -> dict[str, Any]:
        """What the chat template reads besides the messages and tools."""
        variables = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            variables["reasoning_effort"] = self.reasoning_effort
        return variables

    @property
    def token_limit(self) -> int | None:
        # LangChain sends max_completion_tokens; older clients max_tokens. The newer name wins.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def image_refs(self) -> list[ImageRef]:
        """Every image of the conversation, in order."""
        return [ref for i, m in enumerate(self.messages) for ref in m.image_refs(i)]

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as the chat template wants them: `developer` is a system message, content is text."""
        out = []
        for i, m in enumerate(self.messages):
            msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
            for key in ("name", "tool_calls", "tool_call_id"):
                if getattr(m, key) is not None:
                    msg[key] = getattr(m, key)
            out.append(msg)
        return out


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _servable(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidRequestError("suffix (fill-in-the-middle) is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of other than n is not supported", param="best_of")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt the request holds: a string, a list of strings, tokens or a list of token lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]
