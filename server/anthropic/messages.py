"""POST /v1/messages and /v1/messages/count_tokens: Anthropic requests into engine requests through the
generation core, engine events into Anthropic messages and SSE events (server/anthropic/render.py)."""

from __future__ import annotations

import asyncio
import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import parse, speculation
from ..core.generate import GenerationCore, event_stream
from ..core.images import load_images
from ..core.structured import Grammar
from ..core.tools import Tool, ToolPlan, call_syntax, make_plan, output_grammar, tool_prompt
from ..engine.types import ChatPrompt, GenerationRequest, SamplingParams
from ..registry import Target
from .protocol import CountTokensRequest, MessagesRequest
from .render import message_json, stream_events

# Anthropic's tool_choice types as the core's choices: "any" forces a call to some tool, "tool" to one.
_CHOICES = {"auto": "auto", "any": "required", "tool": "function", "none": "none"}


class Messages:
    """The handlers; one per app."""

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def handle(self, request: Request) -> Response:
        req: MessagesRequest = parse(MessagesRequest, await self.core.body(request, "messages"))
        target, plan, prompt = await self._prompt(request, req)
        schema = req.output_schema
        # A large schema takes a while to turn into a grammar: never on the event loop.
        constrained = plan.mode == "forced" or schema is not None
        grammar = await asyncio.to_thread(output_grammar, plan, "json_schema" if schema is not None else None, schema,
                                          Grammar("output_config.format.schema"), "output_config.format.schema",
                                          call_syntax(target.info)) \
            if constrained else None
        defaults = target.sampling  # max_tokens is required here: only the sampling fields have defaults
        sampling = SamplingParams(
            temperature=defaults.temperature if req.temperature is None else req.temperature,
            top_p=defaults.top_p if req.top_p is None else req.top_p,
            top_k=defaults.top_k if req.top_k is None else req.top_k,
            min_p=defaults.min_p, repeat_penalty=defaults.repeat_penalty,
            grammar=grammar,
        )
        run = await self.core.start(request, target, [GenerationRequest(
            prompt=prompt,
            sampling=sampling,
            max_tokens=self.core.limits.completion_tokens(req.max_tokens, "max_tokens"),
            stop=list(req.stop_sequences or []),
            adapters=target.adapters,
            speculative=speculation(req.speculative),
            cache_prompt=req.cache_prompt,
        )])
        reading = run.reading(None, constrained)
        if req.stream:
            return event_stream(run, stream_events(run, plan, reading))
        (choice,) = await run.collect()
        return JSONResponse(message_json(run, choice, plan, reading), headers=run.headers)

    async def count_tokens(self, request: Request) -> Response:
        """The prompt's tokens as a generation would count them: the same messages through the chat template."""
        req: CountTokensRequest = parse(CountTokensRequest, await self.core.body(request, "messages"))
        target, _, prompt = await self._prompt(request, req)
        return JSONResponse({"input_tokens": await target.engine.count_tokens(prompt)},
                            headers={"x-nomoat-adapters": target.adapters.label()})

    async def _prompt(self, request: Request, req: CountTokensRequest) -> tuple[Target, ToolPlan, ChatPrompt]:
        target = await self.core.route(request, req.model, req.lora_pairs(), req.keep_alive)
        plan = tool_plan(req)
        prompt = tool_prompt(req.template_messages(), plan, target.info)
        refs = req.image_refs()
        if refs:
            prompt = dataclasses.replace(prompt, images=await load_images(refs, self.core.limits.images))
        return target, plan, prompt


def tool_plan(req: CountTokensRequest) -> ToolPlan:
    """What `tools` and `tool_choice` ask, checked by the core (400s name Anthropic's fields)."""
    tools = [Tool(t.name, t.description, t.input_schema) for t in req.tools or []]
    choice = req.tool_choice
    return make_plan(
        tools,
        _CHOICES[choice.type] if choice else None,
        choice.name if choice else None,
        not (choice and choice.disable_parallel_tool_use),
        tool_param=lambda i, key: f"tools[{i}].{key}",
        schema_key="input_schema",
        named_param="tool_choice.name",
    )
