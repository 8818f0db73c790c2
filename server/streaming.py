"""Engine token events into OpenAI responses: chat and completion chunks, SSE framing, whole bodies."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .engine.generation import Generation
from .engine.types import TokenEvent, Usage
from .errors import NomoatError

log = logging.getLogger("nomoat.streaming")


@dataclass
class Choice:
    """What one generation produced, accumulated for a non-streaming answer."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tokens: list[TokenEvent] = field(default_factory=list)


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
    timer = asyncio.get_running_loop().call_later(timeout, queue.put_nowait, (_EXPIRED, None)) if timeout else None
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


_EXPIRED = -1


def error_event(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, NomoatError):
        body = exc.to_dict()
    else:
        body = {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
    return {"data": json.dumps(body)}


def sse(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}


DONE = {"data": "[DONE]"}


# --- chat logprobs --------------------------------------------------------------------


def chat_logprob_entry(event: TokenEvent) -> dict[str, Any]:
    return {
        "token": event.token_text,
        "logprob": event.logprob,
        "bytes": event.token_bytes,
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in (event.top_logprobs or [])
        ],
    }


# --- completion (legacy) logprobs -----------------------------------------------------


def completion_logprobs(events: list[TokenEvent], start_offset: int) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = start_offset
    for event in events:
        tokens.append(event.token_text)
        token_logprobs.append(event.logprob)
        tops.append({t.token: t.logprob for t in (event.top_logprobs or [])})
        offsets.append(offset)
        offset += len(event.token_text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
