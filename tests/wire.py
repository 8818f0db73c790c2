"""What the HTTP tests share: reading SSE streams strictly, request bodies that generate predictably,
OpenAI error checks and Prometheus lookups."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "smollm2-135m"
from support.process import NO_EOS  # noqa: E402  (re-exported: the tests' one end-of-generation ban)

POEM = "Write a poem about the sea."


@functools.lru_cache(maxsize=1)
def _vocab() -> Any:
    import llama_cpp

    from nomoat.config import embedded_model_path

    return llama_cpp.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)


def tokenize(text: str) -> list[int]:
    """The embedded model's tokens for raw text (no BOS: SmolLM2 adds none)."""
    return _vocab().tokenize(text.encode(), add_bos=False, special=True)


def chat_body(content: str = POEM, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def completion_body(prompt: Any = "The capital of France is", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **fields}


def sse_payloads(lines: Iterable[str]) -> list[str]:
    """The `data:` payloads of an SSE body; any other field (`event:`, `id:`) fails the test."""
    payloads = []
    for line in lines:
        if not line or line.startswith(":"):  # blank separators and comment pings are fine
            continue
        assert line.startswith("data: "), f"SSE line other than data: {line!r}"
        payloads.append(line[len("data: "):])
    return payloads


def read_stream(response: httpx.Response) -> list[dict[str, Any]]:
    """Every chunk of a finished stream, checked to end with exactly one `data: [DONE]`."""
    if response.status_code != 200:
        response.read()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.iter_lines())
    assert payloads and payloads[-1] == "[DONE]", payloads[-3:]
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        return read_stream(response)


def post_ok(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def chat_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or "" for ch in chunks for c in ch["choices"] if c["index"] == index
    )


def completion_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["text"] for ch in chunks for c in ch["choices"] if c["index"] == index)


def finish_reasons(chunks: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["index"] == index and c["finish_reason"]]


def assert_error(response: httpx.Response, status: int, *, code: Any = ..., param: Any = ...,
                 type_: str = "invalid_request_error") -> dict[str, Any]:
    """An OpenAI error body: exactly message, type, param and code, JSON, with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    if code is not ...:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    return error


def assert_serves(client: httpx.Client) -> None:
    """The server still answers a real generation after whatever the test did to it."""
    body = post_ok(client, "/v1/chat/completions", chat_body("Hi", max_tokens=4, logit_bias=NO_EOS))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"]
    assert body["usage"]["completion_tokens"] == 4


def metric(text: str, sample: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def wait_until(predicate: Callable[[], bool], timeout: float = 300.0, interval: float = 0.05) -> bool:
    """Poll until `predicate()` holds; `timeout` only guards against a hang (CI runs on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
