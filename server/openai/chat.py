"""POST /v1/chat/completions: chat requests into engine requests, engine events into chat answers and chunks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import parse, speculation
from ..core.generate import Choice, GenerationCore, Run, event_stream
from ..core.images import load_images
from ..core.reading import Reading
from ..core.reasoning import Kind
from ..core.structured import Grammar
from ..core.tools import ToolPlan, call_syntax, check_history, output_grammar, plan_tools, tool_prompt
from ..engine.types import ChatPrompt, GenerationRequest, ModelInfo
from .protocol import ChatCompletionRequest
from .render import DONE, chat_logprob_entry, error_event, new_id, now, sse, usage_dict
from .sampling import grammar_refusal, request_grammar, sampling_params


class ChatCompletions:
    """The handler; one per app."""

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def handle(self, request: Request) -> Response:
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await self.core.body(request, "messages"))
        target = await self.core.route(request, req.model, req.lora_pairs(), req.keep_alive)
        plan = read_tools(req)
        # A large schema takes a while to turn into a grammar: never on the event loop (and no thread
        # hop for the plain chats that need none).
        grammar = await asyncio.to_thread(chat_grammar, req, plan, target.info) if _server_grammar(req, plan) else None
        grammar = grammar or await request_grammar(req)
        prompt = chat_prompt(req, plan, target.info)
        refs = req.image_refs()
        if refs:
            prompt = dataclasses.replace(prompt, images=await load_images(refs, self.core.limits.images))
        max_tokens = self.core.limits.completion_tokens(
            req.token_limit, "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens",
            target.sampling.max_tokens,
        )
        n_vocab = target.info.n_vocab
        with grammar_refusal(req):
            run = await self.core.start(request, target, [
                GenerationRequest(
                    prompt=prompt,
                    sampling=sampling_params(req, n_vocab, i, grammar, target.sampling),
                    max_tokens=max_tokens,
                    stop=req.stop_list(),
                    adapters=target.adapters,
                    logprobs=req.logprobs,
                    top_logprobs=req.top_logprobs or 0,
                    speculative=speculation(req.speculative),
                    cache_prompt=req.cache_prompt,
                )
                for i in range(req.n)
            ])
        reading = run.reading(req.reasoning_format, _server_grammar(req, plan))
        if req.stream:
            return event_stream(run, _chunks(run, req, plan, reading))
        choices = await run.collect()
        usage = usage_dict(run.record_usage(copies=len(choices)))
        return JSONResponse({
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": now(),
            "model": target.model_id,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": c.index,
                    **chat_message(c, plan, reading),
                    "logprobs": {"content": [chat_logprob_entry(t) for t in c.tokens], "refusal": None}
                    if req.logprobs else None,
                }
                for c in choices
            ],
            "usage": usage,
        }, headers=run.headers)


async def _chunks(run: Run, req: ChatCompletionRequest, plan: ToolPlan,
                  reading: Reading) -> AsyncIterator[dict[str, str]]:
    cid, created, model = new_id("chatcmpl"), now(), run.target.model_id

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, str]:
        return sse({
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        })

    # The role goes out at once, before the prompt is evaluated (clients time out otherwise). As
    # OpenAI's, a stream that can only be tool calls starts with content null, a text stream with "".
    first = {"role": "assistant", "content": None if plan.mode == "forced" else "", "refusal": None}
    for i in range(len(run.gens)):
        yield chunk(i, first)
    streams = [ChoiceDeltas(plan, reading) for _ in run.gens]
    async for i, event in run.events():
        if event.error is not None:
            yield error_event(event.error, "messages")
            return
        logprobs = {"content": [chat_logprob_entry(event)], "refusal": None} \
            if req.logprobs and event.logprob is not None else None
        cut = event.finish_reason == "length"
        deltas = streams[i].feed(event.text) if event.text else []
        if event.finish_reason is not None:
            deltas += streams[i].finish(cut=cut)
        if logprobs and not deltas:
            deltas = [{"content": "", "refusal": None}]
        for k, delta in enumerate(deltas):
            yield chunk(i, delta, logprobs=logprobs if k == 0 else None)
        if event.finish_reason is not None:
            # A call max_tokens cut is not a finished call: the reason stays "length".
            calls = streams[i].n_calls and not cut
            yield chunk(i, {}, finish="tool_calls" if calls else event.finish_reason)
    usage = usage_dict(run.record_usage(copies=len(run.gens)))
    if req.include_usage:
        yield sse({
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": usage,
        })
    yield DONE


class ChoiceDeltas:
    """One streamed choice's text as chat deltas: the thinking block split off first, tool calls then
    parsed out of what follows it, both as the model's family writes them (`reading`)."""

    def __init__(self, plan: ToolPlan, reading: Reading) -> None:
        self._splitter = reading.splitter()
        self._tools = reading.tool_stream(plan)

    @property
    def n_calls(self) -> int:
        return self._tools.n_calls if self._tools is not None else 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        pieces = self._splitter.feed(text)
        return _refusal_null(self._deltas(pieces))

    def finish(self, cut: bool) -> list[dict[str, Any]]:
        deltas = self._deltas(self._splitter.finish())
        if self._tools is not None:
            deltas += self._tools.finish(cut=cut)
        return _refusal_null(deltas)

    def _deltas(self, pieces: list[tuple[Kind, str]]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for kind, text in pieces:
            if kind == "reasoning":
                deltas.append({"reasoning_content": text})
            elif self._tools is not None:
                deltas += self._tools.feed(text)
            else:
                deltas.append({"content": text})
        return deltas


def _refusal_null(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # As OpenAI's, a delta with content says `refusal: null`.
    return [{**d, "refusal": None} if "content" in d else d for d in deltas]


def chat_grammar(req: ChatCompletionRequest, plan: ToolPlan, info: ModelInfo) -> str | None:
    """The grammar a chat request's output must follow, if any (core/tools.py's output_grammar); forced
    calls in the model family's own syntax."""
    fmt = req.response_format
    return output_grammar(plan, fmt.type if fmt else None, fmt.schema_to_enforce if fmt else None,
                          Grammar("response_format"), syntax=call_syntax(info))


def chat_message(choice: Choice, plan: ToolPlan, reading: Reading) -> dict[str, Any]:
    """`message` and `finish_reason` of a finished chat choice: its thinking block split off first,
    then its tool calls parsed out of the rest (`reading`: as its model's family writes them)."""
    cut = choice.finish_reason == "length"
    reasoning, text = reading.split(choice.text)
    content, calls = reading.parse(text, plan, cut=cut)
    thought = {"reasoning_content": reasoning} if reasoning else {}
    if not calls:
        return {"message": {"role": "assistant", "content": content, **thought, "refusal": None},
                "finish_reason": choice.finish_reason}
    return {
        "message": {"role": "assistant", "content": content or None, **thought, "refusal": None,
                    "tool_calls": [c.openai() for c in calls]},
        "finish_reason": "length" if cut else "tool_calls",
    }


def read_tools(req: ChatCompletionRequest) -> ToolPlan:
    """What the request asks of tools; its tools and its history of calls checked."""
    plan = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    check_history(req.messages)
    return plan


def chat_prompt(req: ChatCompletionRequest, plan: ToolPlan, info: ModelInfo) -> ChatPrompt:
    """What the model's chat template renders for this request (POST /apply-template shows the same text)."""
    return tool_prompt(req.template_messages(), plan, info, req.template_variables())


def _server_grammar(req: ChatCompletionRequest, plan: ToolPlan) -> bool:
    """Whether the server constrains the output itself: a forced tool call or a JSON response_format."""
    return plan.mode == "forced" or (req.response_format is not None and req.response_format.type != "text")
