"""POST /v1/chat/completions: chat requests into engine requests, engine events into chat answers and chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.generate import Choice, GenerationCore, Run, event_stream
from ..core.structured import Grammar, response_rule
from ..core.tool_calls import ToolStream, parse_output
from ..core.tools import ToolPlan, check_history, plan_tools, prompt_messages
from ..engine.types import ChatPrompt, GenerationRequest
from .protocol import ChatCompletionRequest, parse
from .render import DONE, chat_logprob_entry, error_event, new_id, now, sse, usage_dict
from .sampling import sampling_params


class ChatCompletions:
    """The handler; one per app."""

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def handle(self, request: Request) -> Response:
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await self.core.body(request, "messages"))
        target = self.core.route(request, req.model, req.lora_pairs())
        plan = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
        check_history(req.messages)
        # A large schema takes a while to turn into a grammar: never on the event loop (and no thread
        # hop for the plain chats that need none).
        constrained = plan.mode == "forced" or (req.response_format is not None and req.response_format.type != "text")
        grammar = await asyncio.to_thread(chat_grammar, req, plan) if constrained else None
        native = target.engine.model.chat_template.supports_tools
        prompt = ChatPrompt(prompt_messages(req.template_messages(), plan, native),
                            tools=[t.openai() for t in plan.tools] if native and plan.active else None)
        max_tokens = self.core.limits.completion_tokens(
            req.token_limit, "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        )
        n_vocab = target.engine.model.n_vocab
        run = await self.core.start(request, target, [
            GenerationRequest(
                prompt=prompt,
                sampling=sampling_params(req, n_vocab, i, grammar),
                max_tokens=max_tokens,
                stop=req.stop_list(),
                adapters=target.adapters,
                logprobs=req.logprobs,
                top_logprobs=req.top_logprobs or 0,
            )
            for i in range(req.n)
        ])
        if req.stream:
            return event_stream(run, _chunks(run, req, plan))
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
                    **chat_message(c, plan),
                    "logprobs": {"content": [chat_logprob_entry(t) for t in c.tokens], "refusal": None}
                    if req.logprobs else None,
                }
                for c in choices
            ],
            "usage": usage,
        }, headers=run.headers)


async def _chunks(run: Run, req: ChatCompletionRequest, plan: ToolPlan) -> AsyncIterator[dict[str, str]]:
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
    tool_streams = [ToolStream(plan) if plan.active else None for _ in run.gens]
    async for i, event in run.events():
        if event.error is not None:
            yield error_event(event.error, "messages")
            return
        logprobs = {"content": [chat_logprob_entry(event)], "refusal": None} \
            if req.logprobs and event.logprob is not None else None
        tools = tool_streams[i]
        cut = event.finish_reason == "length"
        if tools is None:
            deltas = [{"content": event.text, "refusal": None}] if event.text or logprobs else []
        else:
            deltas = tools.feed(event.text) if event.text else []
            if event.finish_reason is not None:
                deltas += tools.finish(cut=cut)
            deltas = [{**d, "refusal": None} if "content" in d else d for d in deltas]
            if logprobs and not deltas:
                deltas = [{"content": "", "refusal": None}]
        for k, delta in enumerate(deltas):
            yield chunk(i, delta, logprobs=logprobs if k == 0 else None)
        if event.finish_reason is not None:
            # A call max_tokens cut is not a finished call: the reason stays "length".
            calls = tools is not None and tools.n_calls and not cut
            yield chunk(i, {}, finish="tool_calls" if calls else event.finish_reason)
    usage = usage_dict(run.record_usage(copies=len(run.gens)))
    if req.include_usage:
        yield sse({
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": usage,
        })
    yield DONE


def chat_grammar(req: ChatCompletionRequest, plan: ToolPlan) -> str | None:
    """The grammar a chat request's output must follow, if any.

    A forced tool call: the calls. `response_format` JSON: that JSON, or (tools offered with
    `auto`) a call instead of it. Otherwise none: the output is free.
    """
    g = Grammar("response_format")
    if plan.mode == "forced":
        return g.text(plan.calls_rule(g))
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    rule = response_rule(g, fmt.type, fmt.schema_to_enforce)
    if plan.active:
        rule = g.add(f"{plan.calls_rule(g)} | {rule}")
    return g.text(rule)


def chat_message(choice: Choice, plan: ToolPlan) -> dict[str, Any]:
    """`message` and `finish_reason` of a finished chat choice, with its tool calls parsed out."""
    cut = choice.finish_reason == "length"
    content, calls = parse_output(choice.text, plan, cut=cut)
    if not calls:
        return {"message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": choice.finish_reason}
    return {
        "message": {"role": "assistant", "content": content or None, "refusal": None,
                    "tool_calls": [c.openai() for c in calls]},
        "finish_reason": "length" if cut else "tool_calls",
    }
