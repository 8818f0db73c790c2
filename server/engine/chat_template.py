"""Chat templates: render OpenAI messages with the Jinja template a GGUF carries (as transformers does)."""

from __future__ import annotations

import json
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


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise InvalidInput(f"the chat template refused these messages: {message}")


# A plain ChatML fallback for GGUFs without a template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# What the server itself passes every template: a request's own variables may not replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "bos_token", "eos_token", "add_generation_prompt",
                                "raise_exception", "strftime_now"})


class ChatTemplate:
    """A compiled chat template with the model's BOS/EOS strings bound."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
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
        self.supports_tools = "tools" in variables
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, variables: dict[str, Any] | None = None) -> str:
        """The prompt text; `variables` are more names the template may read (`enable_thinking`)."""
        clash = sorted(RESERVED_VARIABLES.intersection(variables or {}))
        if clash:
            raise InvalidInput(f"chat template variable {clash[0]!r} is set by the server, not the request")
        try:
            return self._template.render(
                **(variables or {}),
                messages=messages,
                tools=tools,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=_raise_exception,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
            )
        except InvalidInput:
            raise
        except Exception as exc:  # a template bug must be a clear 400, not a 500
            raise InvalidInput(f"the model's chat template failed on these messages: {exc}") from None
