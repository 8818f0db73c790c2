"""POST /v1/responses, GET and DELETE /v1/responses/{id}, its input_items, and POST
/v1/responses/input_tokens: the Responses API over the generation core.

A request's input items (after those of the response it continues, `previous_response_id`) become
chat messages for the chat template; the output goes through one OutputWriter into `reasoning`,
`message` and `function_call` items, streamed as semantic events or answered whole. A stored
response belongs to the key that made it: any other (but an admin key) gets the 404 of a missing id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import parse, speculation
from ..core.generate import GenerationCore, Run, Totals, event_stream
from ..core.images import load_images
from ..core.structured import Grammar
from ..core.tools import ToolPlan, call_syntax, make_plan, output_grammar, tool_prompt
from ..engine.types import ChatPrompt, GenerationRequest
from ..errors import InvalidRequestError, NomoatError, NotFoundError
from ..registry import Target
from ..wire.context import RequestContext
from ..wire.errors import answer_for
from ..wire.limits import RequestLimits
from ..wire.routes import Handler
from .response_db import Viewer
from .response_items import PageQuery, page, stored_items
from .response_store import Conversation, ResponseStore
from .responses_events import Event, OutputWriter, Sequencer, item_id
from .responses_protocol import FunctionChoice, ResponsesRequest, chat_messages, image_refs
from .sampling import grammar_refusal, request_grammar, sampling_params


@dataclass
class Turn:
    """One response being made: its id, the request it answers, its own input items (earlier turns' are
    stored with the responses they belong to) and the key that asked for it."""

    id: str
    created_at: int
    model: str
    req: ResponsesRequest
    input: list[dict[str, Any]]
    owner: str | None

    def body(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
             error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response object, with the request fields the SDK's `Response` model echoes."""
        req = self.req
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": self.model, "output": output, "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
            "store": req.store, "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": _format_echo(req)},
            "tool_choice": _choice_echo(req),
            "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                       "strict": True if t.strict is None else t.strict} for t in req.tools or []],
            "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": "disabled",
            "usage": usage, "user": req.user, "metadata": req.metadata or {},
        }


def _choice_echo(req: ResponsesRequest) -> str | dict[str, Any]:
    choice = req.tool_choice
    return choice.model_dump(exclude_none=True) if isinstance(choice, FunctionChoice) else (choice or "auto")


def _format_echo(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.format
    if fmt is None or fmt.type != "json_schema":
        return {"type": fmt.type if fmt else "text"}
    return {"type": "json_schema", "name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict,
            "description": fmt.description}


def usage_body(totals: Totals, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": totals.prompt_tokens,
        "input_tokens_details": {"cached_tokens": totals.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": totals.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": totals.prompt_tokens + totals.completion_tokens,
    }


class Responses:
    """The handlers; one per app."""

    def __init__(self, core: GenerationCore, store: ResponseStore) -> None:
        self.core = core
        self.store = store

    def handlers(self) -> dict[str, Handler]:
        """The routes, by their names in the route table."""
        return {"create_response": self.create, "get_response": self.get, "delete_response": self.delete,
                "list_response_input_items": self.input_items, "count_response_tokens": self.input_tokens}

    async def create(self, request: Request) -> Response:
        req, viewer, target, plan, earlier = await self._read(request)
        own = stored_items(req.items())
        turn = Turn(item_id("resp"), int(time.time()), target.model_id, req, own, viewer.key_id)
        # Refused before any token is spent: what could not be answered as JSON or stored in the limits.
        self.store.admit(turn.body("in_progress", []), own, earlier.head if earlier else None, req.store)
        items = (earlier.items() if earlier else []) + own
        with grammar_refusal(req):
            run = await self.core.start(request, target, [await generation(req, target, plan, items, self.core.limits)])
        fmt = req.format
        writer = OutputWriter(plan, run.reading(None, plan.mode == "forced" or (fmt is not None and fmt.type != "text")))
        if req.stream:
            return event_stream(run, self._events(run, turn, writer))
        await run.collect(writer.feed)
        return JSONResponse(await self._finished(run, turn, writer), headers=run.headers)

    async def _events(self, run: Run, turn: Turn, writer: OutputWriter) -> AsyncIterator[dict[str, str]]:
        send = Sequencer()
        # Sent at once, before the prompt is evaluated: clients time out on a silent stream.
        yield send({"type": "response.created", "response": turn.body("in_progress", [])})
        yield send({"type": "response.in_progress", "response": turn.body("in_progress", [])})
        async for _, event in run.events():
            if event.error is not None:
                for payload in failure(event.error, turn, writer):
                    yield send(payload)
                return
            for payload in writer.feed(event):
                yield send(payload)
        try:
            body = await self._finished(run, turn, writer)
        except NomoatError as exc:  # the store refused it (unavailable, too large): the stream still ends whole
            for payload in failure(exc, turn, writer):
                yield send(payload)
            return
        yield send({"type": f"response.{body['status']}", "response": body})

    async def _finished(self, run: Run, turn: Turn, writer: OutputWriter) -> dict[str, Any]:
        """The finished response, counted into usage and kept when the request says `store`."""
        cut = run.choices[0].finish_reason == "length"
        body = turn.body("incomplete" if cut else "completed", writer.items,
                         usage_body(run.record_usage(copies=1), writer.reasoning_tokens))
        if turn.req.store:
            await self.store.put(body, turn.input, turn.req.previous_response_id, turn.owner)
        return body

    async def _earlier(self, previous_id: str | None, viewer: Viewer) -> Conversation | None:
        """The conversation this request continues (None for a new one)."""
        if previous_id is None:
            return None
        conversation = await self.store.conversation(previous_id, viewer)
        if conversation is None:
            raise NotFoundError(f"Previous response with id '{previous_id}' not found.",
                                param="previous_response_id", code="previous_response_not_found")
        _check_whole(conversation, "previous_response_id")
        return conversation

    async def get(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        stored = await self.store.get(response_id, self._viewer(request))
        if stored is None:
            raise _not_found(response_id)
        return JSONResponse(stored)

    async def delete(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        if not await self.store.delete(response_id, self._viewer(request)):
            raise _not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        """The items a stored response ran on (earlier turns' included), a cursor page at a time."""
        response_id = request.path_params["response_id"]
        query = PageQuery.parse(request.query_params)
        conversation = await self.store.conversation(response_id, self._viewer(request))
        if conversation is None:
            raise _not_found(response_id)
        _check_whole(conversation, "response_id")
        return JSONResponse(page(conversation.input_items(), query))

    async def input_tokens(self, request: Request) -> Response:
        """The prompt tokens a request would have: the same conversation through the same template."""
        req, _, target, plan, earlier = await self._read(request)
        items = (earlier.items() if earlier else []) + stored_items(req.items())
        count = await target.engine.count_tokens(await conversation_prompt(req, target, plan, items, self.core.limits))
        return JSONResponse({"object": "response.input_tokens", "input_tokens": count},
                            headers={"x-nomoat-adapters": target.adapters.label()})

    async def _read(self, request: Request) -> tuple[ResponsesRequest, Viewer, Target, ToolPlan, Conversation | None]:
        """What creating a response and counting its tokens both start from: the request, who asks, the model it
        resolves to, its tool plan and the conversation it continues (checked against who asks)."""
        req: ResponsesRequest = parse(ResponsesRequest, await self.core.body(request, "input"))
        viewer = self._viewer(request)
        target = await self.core.route(request, req.model, req.lora_pairs(), req.keep_alive)
        return req, viewer, target, tool_plan(req), await self._earlier(req.previous_response_id, viewer)

    def _viewer(self, request: Request) -> Viewer:
        """Who asks: the auth middleware's key id, and whether that key is an admin's."""
        context = RequestContext.of(request)
        return Viewer(context.key_id, context.key_id is not None and context.admin)


async def generation(req: ResponsesRequest, target: Target, plan: ToolPlan, items: list[dict[str, Any]],
                     limits: RequestLimits) -> GenerationRequest:
    """What the engine runs for a request: the conversation through the chat template, under its grammar."""
    fmt = req.format
    grammar = None
    if plan.mode == "forced" or (fmt is not None and fmt.type != "text"):
        # A large schema takes a while to turn into a grammar: never on the event loop.
        grammar = await asyncio.to_thread(
            output_grammar, plan, fmt.type if fmt else None, fmt.schema_to_enforce if fmt else None,
            Grammar("text.format"), "text.format.schema", call_syntax(target.info))
    if grammar is not None and req.grammar is not None:
        raise InvalidRequestError("'grammar' and a JSON 'text.format' or a forced tool call both constrain the "
                                  "output: send one of them", param="grammar")
    grammar = grammar or await request_grammar(req)
    prompt = await conversation_prompt(req, target, plan, items, limits)
    asked = req.max_output_tokens if req.max_output_tokens is not None else req.max_tokens
    return GenerationRequest(
        prompt=prompt, sampling=sampling_params(req, target.info.n_vocab, 0, grammar, target.sampling),
        max_tokens=limits.completion_tokens(asked, "max_output_tokens", target.sampling.max_tokens),
        stop=req.stop_list(), adapters=target.adapters,
        speculative=speculation(req.speculative), cache_prompt=req.cache_prompt,
    )


async def conversation_prompt(req: ResponsesRequest, target: Target, plan: ToolPlan, items: list[dict[str, Any]],
                              limits: RequestLimits) -> ChatPrompt:
    """The conversation as the chat template reads it, tools and images included."""
    prompt = tool_prompt(chat_messages(req.instructions, items), plan, target.info)
    refs = image_refs(items)
    return dataclasses.replace(prompt, images=await load_images(refs, limits.images)) if refs else prompt


def tool_plan(req: ResponsesRequest) -> ToolPlan:
    """What `tools` and `tool_choice` ask, checked by the core."""
    choice, named = req.choice()
    return make_plan(req.function_tools(), choice, named, req.parallel_tool_calls,
                     tool_param=lambda i, k: f"tools[{i}].{k}", named_param="tool_choice.name")


def _check_whole(conversation: Conversation, param: str) -> None:
    if conversation.missing is not None:
        raise NotFoundError(
            f"an earlier response of this conversation ('{conversation.missing}') is no longer stored (the store's "
            "retention limits removed it): start the conversation again with its items as input",
            param=param, code="previous_response_not_found")


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")


def failure(exc: BaseException, turn: Turn, writer: OutputWriter) -> list[Event]:
    """A generation that failed mid-stream: the `error` event, then `response.failed` (nothing is stored)."""
    error = answer_for(exc, "input").body["error"]
    return [
        {"type": "error", "code": error["code"], "message": error["message"], "param": error["param"]},
        {"type": "response.failed", "response": turn.body(
            "failed", writer.items, error={"code": error["code"] or "server_error", "message": error["message"]})},
    ]
