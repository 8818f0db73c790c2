"""A generation's text as Responses output items (reasoning, message, function calls) and the semantic
stream events that build them, in the order the openai SDK's `responses.stream()` accumulates.

One writer serves both answers: a stream sends its events as they come, a plain answer drops them
and keeps the items, so the two always agree.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from ..core.reading import Reading
from ..core.tools import ToolPlan
from ..engine.types import TokenEvent

Event = dict[str, Any]


def item_id(prefix: str) -> str:
    """OpenAI's id shape: `resp_...`, `msg_...`, `fc_...`, `rs_...`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def sse_event(payload: Event) -> dict[str, str]:
    """`event: <type>` + `data: <json>`, as the Responses API streams."""
    return {"event": payload["type"], "data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}


class Sequencer:
    """Numbers a stream's events from 0, in the order they are sent."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, payload: Event) -> dict[str, str]:
        payload = {**payload, "sequence_number": self.next}
        self.next += 1
        return sse_event(payload)


class OutputWriter:
    """Feeds on a generation's token events; holds the output items and answers the events for each.

    A think block at the start becomes a `reasoning` item; the rest goes through the tool plan's
    ToolStream (when tools are offered) into `message` and `function_call` items. Whitespace between
    items never opens a message of its own.
    """

    def __init__(self, plan: ToolPlan, reading: Reading | None = None) -> None:
        """`reading`: Run.reading's answer, how the model's family writes thinking and calls."""
        reading = reading or Reading()
        self.items: list[dict[str, Any]] = []
        self.reasoning_tokens = 0
        self._splitter = reading.splitter()
        self._tools = reading.tool_stream(plan)
        self._open: dict[str, Any] | None = None  # the item whose content is still being written
        self._pending = ""  # whitespace not yet in any message

    def feed(self, event: TokenEvent) -> list[Event]:
        out: list[Event] = []
        was_reasoning = self._splitter.in_reasoning
        pieces = self._splitter.feed(event.text) if event.text else []
        if event.token_id is not None and (was_reasoning or self._splitter.in_reasoning):
            self.reasoning_tokens += 1
        if event.finish_reason is not None:
            pieces += self._splitter.finish()
        for kind, text in pieces:
            out += self._reasoning(text) if kind == "reasoning" else self._content(text)
        if event.finish_reason is not None:
            cut = event.finish_reason == "length"
            if self._tools is not None:
                out += self._tool_deltas(self._tools.finish(cut=cut))
            out += self._finish(cut)
        return out

    # --- the pieces --------------------------------------------------------------------------

    def _reasoning(self, text: str) -> list[Event]:
        out = [] if self._is_open("reasoning") else self._start(
            {"type": "reasoning", "id": item_id("rs"), "summary": [], "content": [], "status": "in_progress"},
            {"type": "reasoning_text", "text": ""})
        return out + self._append("response.reasoning_text.delta", text)

    def _content(self, text: str) -> list[Event]:
        return self._tool_deltas(self._tools.feed(text)) if self._tools is not None else self._message(text)

    def _tool_deltas(self, deltas: list[dict[str, Any]]) -> list[Event]:
        out: list[Event] = []
        for delta in deltas:
            if "content" in delta:
                out += self._message(delta["content"])
                continue
            entry = delta["tool_calls"][0]
            fn = entry["function"]
            if "id" in entry:
                self._pending = ""
                out += self._start({"type": "function_call", "id": item_id("fc"), "call_id": entry["id"],
                                    "name": fn["name"], "arguments": "", "status": "in_progress"})
            if fn.get("arguments") and self._open is not None:
                self._open["arguments"] += fn["arguments"]
                out.append(self._where({"type": "response.function_call_arguments.delta", "delta": fn["arguments"]}))
        return out

    def _message(self, text: str) -> list[Event]:
        if self._is_open("message"):
            return self._append("response.output_text.delta", text)
        self._pending += text
        if not self._pending.strip():
            return []
        text, self._pending = self._pending, ""
        out = self._start({"type": "message", "id": item_id("msg"), "role": "assistant", "status": "in_progress",
                           "content": []}, {"type": "output_text", "text": "", "annotations": []})
        return out + self._append("response.output_text.delta", text)

    # --- items -------------------------------------------------------------------------------

    def _is_open(self, kind: str) -> bool:
        return self._open is not None and self._open["type"] == kind

    def _where(self, payload: Event, content: bool = False) -> Event:
        assert self._open is not None
        where = {"item_id": self._open["id"], "output_index": len(self.items) - 1}
        return {**payload, **where, **({"content_index": 0} if content else {})}

    def _start(self, item: dict[str, Any], part: dict[str, Any] | None = None) -> list[Event]:
        out = self._close("completed")
        self.items.append(item)
        self._open = item
        out.append({"type": "response.output_item.added", "output_index": len(self.items) - 1,
                    "item": copy.deepcopy(item)})
        if part is not None:
            item["content"].append(part)
            out.append(self._where({"type": "response.content_part.added", "part": dict(part)}, content=True))
        return out

    def _append(self, kind: str, text: str) -> list[Event]:
        assert self._open is not None
        self._open["content"][0]["text"] += text
        extra: Event = {"logprobs": []} if kind == "response.output_text.delta" else {}
        return [self._where({"type": kind, "delta": text, **extra}, content=True)]

    def _close(self, status: str) -> list[Event]:
        item, out = self._open, []
        if item is None:
            return []
        if item["type"] == "function_call":
            out.append(self._where({"type": "response.function_call_arguments.done", "arguments": item["arguments"],
                                    "name": item["name"]}))
        else:
            part = item["content"][0]
            done = "response.output_text.done" if item["type"] == "message" else "response.reasoning_text.done"
            out.append(self._where({"type": done, "text": part["text"],
                                    **({"logprobs": []} if item["type"] == "message" else {})}, content=True))
            out.append(self._where({"type": "response.content_part.done", "part": dict(part)}, content=True))
        item["status"] = status
        out.append({"type": "response.output_item.done", "output_index": len(self.items) - 1,
                    "item": copy.deepcopy(item)})
        self._open = None
        return out

    def _finish(self, cut: bool) -> list[Event]:
        """Close the last item (incomplete when max_output_tokens cut it); an empty output is an empty message."""
        out = self._close("incomplete" if cut else "completed")
        if not self.items:
            out += self._start({"type": "message", "id": item_id("msg"), "role": "assistant",
                                "status": "in_progress", "content": []},
                               {"type": "output_text", "text": "", "annotations": []})
            out += self._close("incomplete" if cut else "completed")
        return out
