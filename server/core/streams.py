"""Engine token events into OpenAI responses: chat and completion chunks, SSE framing, whole bodies."""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..engine.generation import Generation
from ..engine.types import TokenEvent, Usage
from ..http.errors import answer_for

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


def error_event(exc: Exception, prompt_field: str = "prompt") -> dict[str, Any]:
    return {"data": json.dumps(answer_for(exc, prompt_field).body)}


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


class TextOffsets:
    """Where each token starts in the text, in characters.

    A token may hold only part of a character's UTF-8 bytes (its `token_text` is then U+FFFD),
    so offsets count the characters the bytes so far decode to, not the token strings' lengths.
    """

    def __init__(self, start: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = start

    def next(self, event: TokenEvent) -> int:
        offset = self._chars
        self._chars += len(self._decoder.decode(bytes(event.token_bytes or b"")))
        return offset


def completion_logprobs(events: list[TokenEvent], offsets: TextOffsets) -> dict[str, Any]:
    return {
        "tokens": [e.token_text for e in events],
        "token_logprobs": [e.logprob for e in events],
        "top_logprobs": [{t.token: t.logprob for t in (e.top_logprobs or [])} for e in events],
        "text_offset": [offsets.next(e) for e in events],
    }
