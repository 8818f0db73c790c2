"""The generation core every wire protocol uses: resolve the target, submit the generations, race
the client's disconnect, collect or stream the events, and count usage and metrics once.

A protocol module only turns its request into engine requests (`GenerationRequest`) and the
events a `Run` yields into its own JSON and chunks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..engine.generation import Generation
from ..engine.types import GenerationRequest, TokenEvent, Usage
from ..errors import InvalidRequestError
from ..metrics import GenerationTimer, Metrics
from ..registry import EmbeddingTarget, ModelRegistry, Target
from ..wire.body import ClientDisconnected, race_disconnect, read_json
from ..wire.context import RequestContext
from ..wire.limits import RequestLimits
from .reading import Reading

log = logging.getLogger(__name__)


@dataclass
class Choice:
    """What one generation produced, accumulated while it runs."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tokens: list[TokenEvent] = field(default_factory=list)  # events with logprobs, when asked for
    stop_sequence: str | None = None  # the stop string that ended it, if one did

    def add(self, event: TokenEvent) -> None:
        self.text += event.text
        if event.logprob is not None:
            self.tokens.append(event)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            self.usage = event.usage
            self.stop_sequence = event.stop_sequence


@dataclass(frozen=True)
class Totals:
    """A request's token counts, each distinct prompt counted once as OpenAI counts it."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class GenerationCore:
    """Shared by every generating endpoint; holds nothing per request."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics, limits: RequestLimits) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits

    async def body(self, request: Request, prompt_field: str) -> Any:
        """The request's JSON body. `prompt_field` names where the prompt lives in this protocol, for errors.

        A `model` that names nothing served is a 404 before any other field is checked, as OpenAI answers a
        body with no `messages` and an unknown model (nothing is loaded here: `route()` does that).
        """
        RequestContext.of(request).prompt_field = prompt_field
        data = await read_json(request, self.limits.max_body_bytes, self.limits.body_timeout)
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, str) and model:
            self.registry.check_known(model)
        return data

    async def route(self, request: Request, model: str | None, lora: list[tuple[str, float]] | None,
                    keep_alive: float | None = None) -> Target:
        """Resolve the model and adapters (loading the model if need be: `keep_alive` is how long it then stays
        loaded once idle), held busy until the request's last byte, and label the request for its log line and
        metrics."""
        target = await self.registry.resolve(model, lora, keep_alive)
        context = RequestContext.of(request)
        context.hold(target.lease)
        label(context, target.model_id, target.base_id, adapter_label(target))
        if target.info.kind == "reranker":  # its context pools every sequence to a score: there is nothing to sample
            raise InvalidRequestError(
                f"model {target.model_id!r} is a reranker: it scores documents at /v1/rerank and /v1/score, "
                "and cannot chat, complete or tokenize", param="model", code="model_not_supported",
            )
        return target

    async def embedding_target(self, request: Request, model: str | None, keep_alive: float | None) -> EmbeddingTarget:
        """`route()` for embeddings: the model's embedder, held and labelled the same way."""
        target = await self.registry.embedder(model, keep_alive)
        context = RequestContext.of(request)
        context.hold(target.lease)
        label(context, target.model_id, target.base_id, "")
        return target

    async def start(self, request: Request, target: Target, requests: list[GenerationRequest]) -> Run:
        """Submit every generation, or none: a refusal cancels those already admitted."""
        gens: list[Generation] = []
        try:
            for gen_request in requests:
                gens.append(await target.engine.submit(gen_request))
        except BaseException:
            for gen in gens:
                gen.cancel()
            raise
        timer = self.metrics.timer(target.base_id, adapter_label(target))
        return Run(self, request, target, gens, timer)


class Run:
    """The generations of one HTTP request, from submission to usage."""

    def __init__(self, core: GenerationCore, request: Request, target: Target, gens: list[Generation],
                 timer: GenerationTimer) -> None:
        self.core = core
        self.request = request
        self.target = target
        self.gens = gens
        self.timer = timer
        self.choices = [Choice(index=i) for i in range(len(gens))]

    @property
    def headers(self) -> dict[str, str]:
        # Always present, empty for the base alone: a silent fallback to the base shows.
        return {"x-nomoat-adapters": self.target.adapters.label()}

    async def events(self) -> AsyncIterator[tuple[int, TokenEvent]]:
        """Every event as it comes, tagged with its choice index, accumulated into `choices`.

        An event carrying an error is yielded as is and ends the run (the protocol reports it).
        """
        async for i, event in merged(self.gens, self.core.limits.timeout):
            if event.token_id is not None:
                self.timer.token(i)
            if event.error is None:
                self.choices[i].add(event)
            yield i, event
            if event.error is not None:
                return
        RequestContext.of(self.request).ttft = self.timer.ttft

    async def collect(self, on_event: Callable[[TokenEvent], object] | None = None) -> list[Choice]:
        """Run every generation to its end; the client going away first cancels them all.

        An engine error ends the request with that error (raised here, rendered by the HTTP layer).
        `on_event` sees every other event as it comes (a protocol that builds its answer on the way).
        """

        async def consume() -> None:
            async for _, event in self.events():
                if event.error is not None:
                    raise event.error
                if on_event is not None:
                    on_event(event)

        try:
            await race_disconnect(self.request.receive, consume())
        except ClientDisconnected:
            self.cancel()
            raise
        return self.choices

    def reading(self, reasoning_format: str | None, constrained: bool) -> Reading:
        """How to read this run's output (core/reading.py). Its thinking block is split off unless
        `reasoning_format` is "none" (by request or model) or the server constrains the output (JSON,
        forced calls); it starts in the block when the rendered prompt left one open."""
        info = self.target.info
        if (reasoning_format or info.reasoning_format) == "none" or constrained:
            return Reading.of(info, None)
        return Reading.of(info, info.chat_format.starts_in_reasoning(self.gens[0].prompt_text))

    def cancel(self) -> None:
        """Stop every generation at the engine's next step (a disconnect, or a stream that ended)."""
        for gen in self.gens:
            gen.cancel()

    def record_usage(self, copies: int) -> Totals:
        """Count the finished run's tokens into the metrics and the access log; returns the totals.

        `copies` choices share one prompt (n > 1), so each distinct prompt counts once.
        """
        firsts = [c.usage for c in self.choices[::copies] if c.usage]
        totals = Totals(
            prompt_tokens=sum(u.prompt_tokens for u in firsts),
            completion_tokens=sum(c.usage.completion_tokens for c in self.choices if c.usage),
            cached_tokens=sum(u.cached_tokens for u in firsts),
        )
        count_tokens(self.core.metrics, self.request, totals, self.timer.generating())
        return totals


def count_tokens(metrics: Metrics, request: Request, totals: Totals, generating: float = 0.0) -> None:
    """Token counters by model and adapter, and the access log's token fields; `generating` is the seconds
    from the first generated token to the last (GET /status's rates)."""
    context = RequestContext.of(request)
    labels = (context.base_model, context.adapter)
    metrics.prompt_tokens.labels(*labels).inc(totals.prompt_tokens)
    metrics.cached_prompt_tokens.labels(*labels).inc(totals.cached_tokens)
    metrics.completion_tokens.labels(*labels).inc(totals.completion_tokens)
    metrics.recent_tokens.add(totals.completion_tokens, generating)
    context.tokens = (totals.prompt_tokens, totals.completion_tokens)


def label(context: RequestContext, model_id: str, base_id: str, adapter: str) -> None:
    """What the access log and request metrics say of this request."""
    context.model, context.base_model, context.adapter = model_id, base_id, adapter


def adapter_label(target: Target) -> str:
    """The adapter names a request runs under, for metrics and logs ("" for the base model)."""
    return ",".join(a.name for a in target.adapters.adapters)


async def merged(gens: list[Generation], timeout: float | None = None) -> AsyncIterator[tuple[int, TokenEvent]]:
    """Events of several generations as they come, tagged with the choice index.

    After `timeout` seconds every unfinished generation is cancelled and ends with
    finish_reason "length" and the usage so far, as llama.cpp's server does when its
    time limit (t_max_predict_ms) stops a generation: the client keeps what was produced.
    """
    queue: asyncio.Queue[tuple[int, TokenEvent | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        async for event in gen:
            await queue.put((i, event))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    timer = asyncio.get_running_loop().call_later(timeout, queue.put_nowait, (-1, None)) if timeout else None
    running = set(range(len(gens)))
    generated = [0] * len(gens)
    try:
        while running:
            i, event = await queue.get()
            if event is None:
                log.warning("generation stopped after %gs (request_timeout_seconds)", timeout)
                for j in sorted(running):
                    gens[j].cancel()
                    usage = Usage(prompt_tokens=gens[j].n_prompt, completion_tokens=generated[j])
                    yield j, TokenEvent(finish_reason="length", usage=usage)
                return
            if event.token_id is not None:
                generated[i] += 1
            if event.final:
                running.discard(i)
            yield i, event
    finally:
        if timer is not None:
            timer.cancel()
        for task in tasks:
            task.cancel()


def event_stream(run: Run, chunks: AsyncIterator[dict[str, str]]) -> Response:
    """A server-sent-event response of `chunks`; when it ends for any reason (the client went away,
    stopped reading, or the stream finished) the run's generations stop at the engine's next step."""

    async def guarded() -> AsyncIterator[dict[str, str]]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            run.cancel()

    return _EventStream(guarded(), sep="\n", ping=15, headers=run.headers,
                        send_timeout=run.core.limits.send_timeout)


class _EventStream(EventSourceResponse):
    """A client that stops reading past `send_timeout` is let go like one that disconnected."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("a client stopped reading its stream for %gs; the stream is closed", self.send_timeout)
