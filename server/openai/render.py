"""Engine results in OpenAI's shapes: ids, usage, logprobs, and the SSE framing OpenAI clients read."""

from __future__ import annotations

import codecs
import json
import math
import time
import uuid
from typing import Any

from ..core.generate import Totals
from ..engine.types import TokenEvent
from ..wire.errors import answer_for

# What OpenAI reports for a token the model gives no probability at all; JSON has no -Infinity or NaN.
FLOOR_LOGPROB = -9999.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage_dict(totals: Totals) -> dict[str, Any]:
    return {
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.prompt_tokens + totals.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": totals.cached_tokens},
    }


def finite(logprob: float | None) -> float | None:
    """A logprob JSON can carry: an adapter with runaway weights can make llama.cpp's logits NaN or inf."""
    if logprob is None:
        return None
    return logprob if math.isfinite(logprob) else FLOOR_LOGPROB


# --- SSE, as OpenAI streams it: data lines only, then [DONE] ------------------------------------


def sse(payload: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}


DONE = {"data": "[DONE]"}


def error_event(exc: BaseException, prompt_field: str) -> dict[str, str]:
    """An error inside a stream that has begun: `data: {"error": {...}}`; the openai SDK raises it."""
    return {"data": json.dumps(answer_for(exc, prompt_field).body)}


# --- logprobs ------------------------------------------------------------------------------------


def chat_logprob_entry(event: TokenEvent) -> dict[str, Any]:
    return {
        "token": event.token_text,
        "logprob": finite(event.logprob),
        "bytes": event.token_bytes,
        "top_logprobs": [
            {"token": t.token, "logprob": finite(t.logprob), "bytes": t.bytes} for t in (event.top_logprobs or [])
        ],
    }


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
    """The legacy completions shape: parallel lists of tokens, logprobs, top alternatives and offsets."""
    return {
        "tokens": [e.token_text for e in events],
        "token_logprobs": [finite(e.logprob) for e in events],
        "top_logprobs": [{t.token: finite(t.logprob) for t in (e.top_logprobs or [])} for e in events],
        "text_offset": [offsets.next(e) for e in events],
    }
