"""POST /v1/completions: raw prompts (no chat template) into engine requests, events into text completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import parse, speculation
from ..core.generate import GenerationCore, Run, event_stream
from ..engine.face import Vocabulary
from ..engine.types import GenerationRequest, TextPrompt, TokenPrompt
from ..registry import Target
from .protocol import CompletionRequest
from .render import DONE, TextOffsets, completion_logprobs, error_event, new_id, now, sse, usage_dict
from .sampling import grammar_refusal, request_grammar, sampling_params


class Completions:
    """The handler; one per app."""

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def handle(self, request: Request) -> Response:
        req: CompletionRequest = parse(CompletionRequest, await self.core.body(request, "prompt"))
        target = await self.core.route(request, req.model, req.lora_pairs(), req.keep_alive)
        prompts = req.prompts()
        logprobs = req.logprobs is not None
        max_tokens = self.core.limits.completion_tokens(req.max_tokens, "max_tokens", target.sampling.max_tokens)
        n_vocab = target.info.n_vocab
        grammar = await request_grammar(req)
        with grammar_refusal(req):
            run = await self.core.start(request, target, [
                GenerationRequest(
                    prompt=TextPrompt(p) if isinstance(p, str) else TokenPrompt(p),
                    sampling=sampling_params(req, n_vocab, i * req.n + j, grammar, target.sampling),
                    max_tokens=max_tokens,
                    stop=req.stop_list(),
                    adapters=target.adapters,
                    logprobs=logprobs,
                    top_logprobs=req.logprobs or 0,
                    speculative=speculation(req.speculative),
                    cache_prompt=req.cache_prompt,
                )
                for i, p in enumerate(prompts)
                for j in range(req.n)
            ])
        try:
            echo = await _echo_texts(target, prompts, req.n) if req.echo else [""] * (len(prompts) * req.n)
        except BaseException:
            run.cancel()
            raise
        if req.stream:
            return event_stream(run, _chunks(run, req, echo))
        choices = await run.collect()
        usage = usage_dict(run.record_usage(copies=req.n))
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
            "usage": usage,
        }, headers=run.headers)


async def _chunks(run: Run, req: CompletionRequest, echo: list[str]) -> AsyncIterator[dict[str, str]]:
    cid, created, model = new_id("cmpl"), now(), run.target.model_id
    logprobs_on = req.logprobs is not None

    def chunk(index: int, text: str, finish: str | None, logprobs: Any = None) -> dict[str, str]:
        return sse({
            "id": cid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        })

    for i, text in enumerate(echo):
        if text:
            yield chunk(i, text, None)
    offsets = [TextOffsets(len(t)) for t in echo]
    async for i, event in run.events():
        if event.error is not None:
            yield error_event(event.error, "prompt")
            return
        logprobs = None
        if logprobs_on and event.logprob is not None:
            logprobs = completion_logprobs([event], offsets[i])
        if event.text or logprobs or event.finish_reason:
            yield chunk(i, event.text, event.finish_reason, logprobs)
    usage = usage_dict(run.record_usage(copies=req.n))
    if req.include_usage:
        yield sse({
            "id": cid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": usage,
        })
    yield DONE


async def _echo_texts(target: Target, prompts: list[str | list[int]], copies: int) -> list[str]:
    """Each prompt as text, once per copy. Token prompts become text in the tokenizer pool, and only once
    `start` has checked their ids against the vocabulary."""
    if any(isinstance(p, list) for p in prompts):
        texts = await target.engine.read_vocabulary(lambda vocab: [_text(vocab, p) for p in prompts])
    else:
        texts = [p for p in prompts if isinstance(p, str)]
    return [text for text in texts for _ in range(copies)]


def _text(vocab: Vocabulary, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return b"".join(vocab.piece(t) for t in prompt).decode("utf-8", "replace")
