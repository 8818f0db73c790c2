"""The completion endpoints: protocol requests into engine requests, engine events into OpenAI answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from typing import Any, AsyncIterator, Union

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..engine.generation import Generation
from ..engine.types import ChatPrompt, GenerationRequest, SamplingParams, TextPrompt, TokenEvent, TokenPrompt
from ..errors import InvalidRequestError, PayloadTooLargeError
from ..http.limits import RequestLimits
from ..metrics import GenerationTimer, Metrics
from ..openai.protocol import ChatCompletionRequest, CompletionRequest, new_id, now, parse, usage_dict
from ..registry import ModelRegistry, Target
from .streams import DONE, Choice, TextOffsets, chat_logprob_entry, completion_logprobs, error_event, merged, sse
from .structured import Grammar, response_rule
from .tools import ToolPlan, ToolStream, check_history, parse_output, plan_tools, prompt_messages

log = logging.getLogger("nomoat.serving")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing oversized bodies (413) and malformed JSON (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequestError("the request body nests JSON arrays and objects too deeply") from None
    # json.loads accepts an escaped lone UTF-16 surrogate ("\ud800"), which no UTF-8 text can
    # hold: tokenizing it would fail deep in the engine as a 500.
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError("the request body is not valid JSON text: it holds an unpaired "
                                      "UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    return data


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def sampling_params(req: Union[ChatCompletionRequest, CompletionRequest], n_vocab: int, seed_offset: int) -> SamplingParams:
    bias = {}
    for key, value in (req.logit_bias or {}).items():
        token = int(key)
        if not 0 <= token < n_vocab:
            raise InvalidRequestError(f"logit_bias token id {token} is outside the vocabulary", param="logit_bias")
        bias[token] = value
    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        repeat_penalty=req.repeat_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        # Choices of one request must differ, and stay reproducible for a given seed.
        seed=None if req.seed is None else (req.seed + seed_offset) & 0xFFFFFFFF,
        logit_bias=bias,
    )


class CompletionService:
    """Handlers for /v1/chat/completions and /v1/completions."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics, limits: RequestLimits) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits

    async def chat(self, request: Request) -> Response:
        request.state.prompt_field = "messages"
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await read_json(request, self.limits.max_body_bytes))
        target = self._route(request, req.model, req.lora_pairs())
        if req.functions is not None or req.function_call is not None:
            raise InvalidRequestError("'functions' and 'function_call' are deprecated and not supported: "
                                      "use 'tools' and 'tool_choice'", param="functions" if req.functions is not None else "function_call")
        plan = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
        check_history(req.messages)
        grammar = chat_grammar(req, plan)
        native = target.engine.model.chat_template.supports_tools
        prompt = ChatPrompt(prompt_messages(req.template_messages(), plan, native),
                            tools=[t.openai() for t in plan.tools] if native and plan.active else None)
        max_tokens = self.limits.completion_tokens(
            req.token_limit, "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        )
        top = req.top_logprobs or 0
        if top and not req.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs: true", param="top_logprobs")
        gen_requests = [
            GenerationRequest(
                prompt=prompt,
                sampling=dataclasses.replace(sampling_params(req, target.engine.model.n_vocab, i), grammar=grammar),
                max_tokens=max_tokens,
                stop=req.stop_list(),
                adapters=target.adapters,
                logprobs=req.logprobs,
                top_logprobs=top,
            )
            for i in range(req.n)
        ]
        gens = await self._submit_all(target, gen_requests)
        timer = self._timer(request)
        if req.stream:
            return self._stream(gens, self._chat_chunks(request, req, plan, target, gens, timer), self._headers(target))
        choices = await self._collect(request, gens, timer)
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
            "usage": self._usage(request, choices, len(choices)),
        }, headers=self._headers(target))

    async def completions(self, request: Request) -> Response:
        req: CompletionRequest = parse(CompletionRequest, await read_json(request, self.limits.max_body_bytes))
        target = self._route(request, req.model, req.lora_pairs())
        if req.suffix:
            raise InvalidRequestError("suffix (fill-in-the-middle) is not supported", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise InvalidRequestError("best_of other than n is not supported", param="best_of")
        prompts = req.prompts()
        logprobs = req.logprobs is not None
        max_tokens = self.limits.completion_tokens(req.max_tokens, "max_tokens")
        gen_requests = [
            GenerationRequest(
                prompt=TextPrompt(p) if isinstance(p, str) else TokenPrompt(p),
                sampling=sampling_params(req, target.engine.model.n_vocab, i * req.n + j),
                max_tokens=max_tokens,
                stop=req.stop_list(),
                adapters=target.adapters,
                logprobs=logprobs,
                top_logprobs=req.logprobs or 0,
            )
            for i, p in enumerate(prompts)
            for j in range(req.n)
        ]
        gens = await self._submit_all(target, gen_requests)
        echo = [self._echo_text(target, p) if req.echo else "" for p in prompts for _ in range(req.n)]
        timer = self._timer(request)
        if req.stream:
            return self._stream(gens, self._completion_chunks(request, req, target, gens, echo, timer), self._headers(target))
        choices = await self._collect(request, gens, timer)
        return JSONResponse({
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": target.model_id,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": c.index,
                    "text": echo[c.index] + c.text,
                    "logprobs": completion_logprobs(c.tokens, TextOffsets(len(echo[c.index]))) if logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": self._usage(request, choices, req.n),
        }, headers=self._headers(target))

    # --- shared machinery -----------------------------------------------------------

    def _route(self, request: Request, model: str | None, lora: list[tuple[str, float]] | None) -> Target:
        """Resolve the model and adapters, and label the request for its log line and metrics."""
        target = self.registry.resolve(model, lora)
        request.state.model = target.model_id
        request.state.base_model = target.base_id
        request.state.adapter = adapter_label(target)
        return target

    def _timer(self, request: Request) -> GenerationTimer:
        return self.metrics.timer(request.state.base_model, request.state.adapter)

    async def _submit_all(self, target: Target, requests: list[GenerationRequest]) -> list[Generation]:
        gens: list[Generation] = []
        try:
            for gen_request in requests:
                gens.append(await target.engine.submit(gen_request))
        except BaseException:
            for gen in gens:
                gen.cancel()
            raise
        return gens

    def _echo_text(self, target: Target, prompt: Union[str, list[int]]) -> str:
        if isinstance(prompt, str):
            return prompt
        return b"".join(target.engine.model.piece(t) for t in prompt).decode("utf-8", "replace")

    def _headers(self, target: Target) -> dict[str, str]:
        # Always present, empty for the base alone: a silent fallback to the base shows.
        return {"x-nomoat-adapters": target.adapters.label()}

    def _usage(self, request: Request, choices: list[Choice], copies: int) -> dict[str, Any]:
        """Each distinct prompt counts once, as OpenAI counts it: `copies` choices share one prompt."""
        firsts = [c.usage for c in choices[::copies] if c.usage]
        prompt_tokens = sum(u.prompt_tokens for u in firsts)
        cached = sum(u.cached_tokens for u in firsts)
        completion = sum(c.usage.completion_tokens for c in choices if c.usage)
        labels = (request.state.base_model, request.state.adapter)
        self.metrics.prompt_tokens.labels(*labels).inc(prompt_tokens)
        self.metrics.cached_prompt_tokens.labels(*labels).inc(cached)
        self.metrics.completion_tokens.labels(*labels).inc(completion)
        request.state.tokens = (prompt_tokens, completion)
        return usage_dict(prompt_tokens, completion, cached)

    async def _collect(self, request: Request, gens: list[Generation], timer: GenerationTimer) -> list[Choice]:
        """Run every generation to its end, cancelling all of them if the client goes away."""
        choices = [Choice(index=i) for i in range(len(gens))]

        async def consume() -> None:
            async for i, event in merged(gens, self.limits.timeout):
                if event.token_id is not None:
                    timer.token(i)
                _accumulate(choices[i], event)
            request.state.ttft = timer.ttft

        consumer = asyncio.create_task(consume())
        watcher = asyncio.create_task(_wait_disconnect(request))
        try:
            await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not consumer.done():
                consumer.cancel()
                for gen in gens:
                    gen.cancel()
        if not consumer.done() or consumer.cancelled():
            raise ClientDisconnected
        consumer.result()
        return choices

    def _stream(self, gens: list[Generation], chunks: AsyncIterator[dict[str, str]], headers: dict[str, str]) -> Response:
        async def guarded() -> AsyncIterator[dict[str, str]]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                # A disconnect cancels this generator: stop generating at the next step.
                for gen in gens:
                    gen.cancel()

        return EventSourceResponse(guarded(), sep="\n", ping=15, headers=headers)

    async def _chat_chunks(self, request: Request, req: ChatCompletionRequest, plan: ToolPlan, target: Target,
                           gens: list[Generation], timer: GenerationTimer) -> AsyncIterator[dict[str, str]]:
        cid, created = new_id("chatcmpl"), now()

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, str]:
            return sse({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": target.model_id,
                "system_fingerprint": None,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            })

        # The role goes out at once, before the prompt is evaluated (clients time out otherwise).
        for i in range(len(gens)):
            yield chunk(i, {"role": "assistant", "content": ""})
        choices = [Choice(index=i) for i in range(len(gens))]
        tool_streams = [ToolStream(plan) if plan.active else None for _ in gens]
        async for i, event in merged(gens, self.limits.timeout):
            if event.error is not None:
                yield error_event(event.error, request.state.prompt_field if hasattr(request.state, "prompt_field") else "prompt")
                return
            if event.token_id is not None:
                timer.token(i)
            _accumulate(choices[i], event)
            logprobs = {"content": [chat_logprob_entry(event)], "refusal": None} if req.logprobs and event.logprob is not None else None
            tools = tool_streams[i]
            if tools is None:
                if event.text or logprobs:
                    yield chunk(i, {"content": event.text}, logprobs=logprobs)
            else:
                deltas = tools.feed(event.text) if event.text else []
                if event.finish_reason is not None:
                    deltas += tools.finish()
                if logprobs and not deltas:
                    deltas = [{"content": ""}]
                for k, delta in enumerate(deltas):
                    yield chunk(i, delta, logprobs=logprobs if k == 0 else None)
            if event.finish_reason is not None:
                finish = "tool_calls" if tools is not None and tools.n_calls else event.finish_reason
                yield chunk(i, {}, finish=finish)
        request.state.ttft = timer.ttft
        usage = self._usage(request, choices, len(choices))
        if req.include_usage:
            yield sse({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": target.model_id,
                "system_fingerprint": None, "choices": [], "usage": usage,
            })
        yield DONE

    async def _completion_chunks(self, request: Request, req: CompletionRequest, target: Target, gens: list[Generation],
                                 echo: list[str], timer: GenerationTimer) -> AsyncIterator[dict[str, str]]:
        cid, created = new_id("cmpl"), now()
        logprobs_on = req.logprobs is not None

        def chunk(index: int, text: str, finish: str | None, logprobs: Any = None) -> dict[str, str]:
            return sse({
                "id": cid, "object": "text_completion", "created": created, "model": target.model_id,
                "system_fingerprint": None,
                "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
            })

        for i, text in enumerate(echo):
            if text:
                yield chunk(i, text, None)
        offsets = [TextOffsets(len(t)) for t in echo]
        choices = [Choice(index=i) for i in range(len(gens))]
        async for i, event in merged(gens, self.limits.timeout):
            if event.error is not None:
                yield error_event(event.error, request.state.prompt_field if hasattr(request.state, "prompt_field") else "prompt")
                return
            if event.token_id is not None:
                timer.token(i)
            _accumulate(choices[i], event)
            logprobs = None
            if logprobs_on and event.logprob is not None:
                logprobs = completion_logprobs([event], offsets[i])
            if event.text or logprobs or event.finish_reason:
                yield chunk(i, event.text, event.finish_reason, logprobs)
        request.state.ttft = timer.ttft
        usage = self._usage(request, choices, req.n)
        if req.include_usage:
            yield sse({
                "id": cid, "object": "text_completion", "created": created, "model": target.model_id,
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
    rule = response_rule(g, fmt.type, fmt.json_schema.schema_ if fmt.json_schema else None)
    if plan.active:
        rule = g.add(f"{plan.calls_rule(g)} | {rule}")
    return g.text(rule)


def chat_message(choice: Choice, plan: ToolPlan) -> dict[str, Any]:
    """`message` and `finish_reason` of a finished chat choice, with its tool calls parsed out."""
    content, calls = parse_output(choice.text, plan)
    if not calls:
        return {"message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": choice.finish_reason}
    return {
        "message": {"role": "assistant", "content": content or None, "refusal": None,
                    "tool_calls": [c.openai() for c in calls]},
        "finish_reason": "tool_calls",
    }


def adapter_label(target: Target) -> str:
    """The adapter names a request runs under, for metrics and logs ("" for the base model)."""
    return ",".join(a.name for a in target.adapters.adapters)


class ClientDisconnected(Exception):
    """The client went away before a non-streaming answer was ready; nobody reads a reply."""


def _accumulate(choice: Choice, event: TokenEvent) -> None:
    if event.error is not None:
        raise event.error
    choice.text += event.text
    if event.logprob is not None:
        choice.tokens.append(event)
    if event.finish_reason is not None:
        choice.finish_reason = event.finish_reason
        choice.usage = event.usage


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
