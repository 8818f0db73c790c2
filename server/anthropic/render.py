"""Engine results in Anthropic's shapes: the message, its content blocks and usage, and the SSE events
(`event: <type>` + `data: <json>`) that the anthropic SDK's stream accumulator reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..core.generate import Choice, Run, Totals
from ..core.reading import Reading
from ..core.reasoning import Kind
from ..core.tool_calls import ToolCall
from ..core.tools import ToolPlan
from ..engine.types import TokenEvent
from ..wire.errors import answer_for


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_` id for the core's `call_` id: one call keeps one id, streamed or not."""
    return "toolu_" + call_id.removeprefix("call_")


def usage_json(totals: Totals) -> dict[str, int]:
    # Anthropic's input_tokens leaves out what was read from the cache; the three add up to the prompt.
    return {"input_tokens": totals.prompt_tokens - totals.cached_tokens, "output_tokens": totals.completion_tokens,
            "cache_read_input_tokens": totals.cached_tokens, "cache_creation_input_tokens": 0}


def stop_reason(finish: str | None, calls: bool, stop_sequence: str | None) -> str:
    """A call max_tokens cut is not a finished call: the reason stays max_tokens."""
    if finish == "length":
        return "max_tokens"
    if calls:
        return "tool_use"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def message_json(run: Run, choice: Choice, plan: ToolPlan, reading: Reading) -> dict[str, Any]:
    """The answer to a finished, non-streamed request; `reading` is Run.reading's answer."""
    cut = choice.finish_reason == "length"
    reasoning, text = reading.split(choice.text)
    content, calls = reading.parse(text, plan, cut=cut)
    blocks: list[dict[str, Any]] = []
    if reasoning is not None:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if content.strip():
        blocks.append({"type": "text", "text": content})
    blocks += [{**_tool_use(call), "input": _arguments(call)} for call in calls]
    return {
        **_message(run, blocks),
        "stop_reason": stop_reason(choice.finish_reason, bool(calls), choice.stop_sequence),
        "stop_sequence": choice.stop_sequence,
        "usage": usage_json(run.record_usage(copies=1)),
    }


def _message(run: Run, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": run.target.model_id,
            "content": content}


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name}


def _arguments(call: ToolCall) -> dict[str, Any]:
    """The call's input; a call max_tokens cut short has no whole object: {} (stop_reason says why)."""
    try:
        value = json.loads(call.arguments)
    except (json.JSONDecodeError, RecursionError):  # nested past the interpreter's limit: no object either
        return {}
    return value if isinstance(value, dict) else {}


# --- streaming ------------------------------------------------------------------------------------


def sse(payload: dict[str, Any]) -> dict[str, str]:
    return {"event": payload["type"], "data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}


async def stream_events(run: Run, plan: ToolPlan, reading: Reading) -> AsyncIterator[dict[str, str]]:
    """message_start, ping, each block's start/deltas/stop, message_delta, message_stop; an engine error
    ends the stream with an `error` event in Anthropic's error shape.

    message_start waits for the engine's first event, which says how much of the prompt came from the
    prefix cache: its usage splits input_tokens and cache_read_input_tokens as message_delta's does.
    """
    blocks = BlockStream(plan, reading)
    opened = False
    async for _, event in run.events():
        if not opened:
            opened = True
            yield sse({"type": "message_start", "message": _started(run, event)})
            yield sse({"type": "ping"})
        if event.error is not None:
            yield {"event": "error", "data": json.dumps(answer_for(event.error, "messages", "anthropic").body)}
            return
        for payload in blocks.feed(event.text) if event.text else []:
            yield sse(payload)
        if event.finish_reason is not None:
            cut = event.finish_reason == "length"
            for payload in blocks.finish(cut):
                yield sse(payload)
            reason = stop_reason(event.finish_reason, blocks.n_calls > 0, event.stop_sequence)
            usage = usage_json(run.record_usage(copies=1))
            yield sse({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": event.stop_sequence},
                       "usage": usage})
            yield sse({"type": "message_stop"})


def _started(run: Run, first: TokenEvent) -> dict[str, Any]:
    """The message as message_start shows it: no content yet, usage split by the first event's cache count."""
    cached = first.usage.cached_tokens if first.usage is not None else first.cached_tokens or 0
    usage = usage_json(Totals(prompt_tokens=run.gens[0].n_prompt, completion_tokens=0, cached_tokens=cached))
    return {**_message(run, []), "stop_reason": None, "stop_sequence": None, "usage": usage}


class BlockStream:
    """A streamed output as content-block events, as it arrives: a leading thinking block (as the model's
    family marks it) becomes a thinking block, tool calls (server/core/tool_calls.py's ToolStream) tool_use blocks, the rest text.

    Whitespace before a text block is held until text follows, so that the blank between a thought and a
    tool call opens no block (a finished message leaves it out the same way).
    """

    def __init__(self, plan: ToolPlan, reading: Reading) -> None:
        self._reasoning = reading.splitter()
        self._tools = reading.tool_stream(plan)
        self._index = -1
        self._open: str | None = None  # the type of the block being streamed
        self._blank = ""

    @property
    def n_calls(self) -> int:
        return self._tools.n_calls if self._tools is not None else 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._pieces(self._reasoning.feed(text))

    def finish(self, cut: bool) -> list[dict[str, Any]]:
        out = self._pieces(self._reasoning.finish())
        if self._tools is not None:
            out += self._tool_deltas(self._tools.finish(cut=cut))
        return out + self._close()

    def _pieces(self, pieces: list[tuple[Kind, str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, text in pieces:
            if kind == "reasoning":
                out += self._start("thinking", {"thinking": "", "signature": ""}) if self._open != "thinking" else []
                out.append(self._delta({"type": "thinking_delta", "thinking": text}))
            elif self._tools is not None:
                out += self._tool_deltas(self._tools.feed(text))
            else:
                out += self._text(text)
        return out

    def _tool_deltas(self, deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """ToolStream's deltas (OpenAI's shape: content, or one tool call's start or arguments) as events."""
        out: list[dict[str, Any]] = []
        for delta in deltas:
            if "content" in delta:
                out += self._text(delta["content"])
                continue
            entry = delta["tool_calls"][0]
            if "id" in entry:
                out += self._start("tool_use", {"id": tool_use_id(entry["id"]), "name": entry["function"]["name"],
                                                "input": {}})
            if entry["function"].get("arguments"):
                out.append(self._delta({"type": "input_json_delta", "partial_json": entry["function"]["arguments"]}))
        return out

    def _text(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._open != "text":
            self._blank += text
            if not self._blank.strip():
                return out
            text, self._blank = self._blank, ""
            out += self._start("text", {"text": ""})
        out.append(self._delta({"type": "text_delta", "text": text}))
        return out

    def _start(self, kind: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close()
        self._index += 1
        self._open = kind
        return [*out, {"type": "content_block_start", "index": self._index, "content_block": {"type": kind, **fields}}]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}
