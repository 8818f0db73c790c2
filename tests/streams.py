"""Test helpers: SSE streams read on their own threads, and request bodies that run to max_tokens."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from support.process import NO_EOS


def long_completion(model: str = "smollm2-135m", max_tokens: int = 48, **extra: Any) -> dict[str, Any]:
    """A /v1/completions body that generates exactly `max_tokens` tokens."""
    return {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0,
            "logit_bias": NO_EOS, **extra}


class StreamReader(threading.Thread):
    """POSTs a streaming request and keeps every `data:` payload; `started` is set at the first one."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = {**body, "stream": True}
        self.headers = headers or {}
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, headers=self.headers, timeout=120) as r:
                self.status = r.status_code
                self.response_headers = r.headers
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.started.set()
                if r.status_code != 200:
                    self.events.append(r.read().decode())
        except BaseException as exc:  # reported by the test through .error
            self.error = exc
        finally:
            self.started.set()

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.events if e != "[DONE]"]

    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for chunk in self.chunks() for c in chunk.get("choices", []) if c.get("finish_reason")]

    def text(self) -> str:
        out = []
        for chunk in self.chunks():
            for c in chunk.get("choices", []):
                out.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
        return "".join(out)

    def describe(self) -> str:
        return f"status={self.status} error={self.error!r} events={self.events[-3:]}"


def start_streams(url: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None,
                  timeout: float = 60.0) -> list[StreamReader]:
    """Start one reader per body and wait until each has received its first event."""
    readers = [StreamReader(url, body, headers) for body in bodies]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.started.wait(timeout), "stream never started"
    return readers


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll until predicate() is truthy; its value, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}")
