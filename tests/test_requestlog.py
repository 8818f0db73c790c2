"""x-request-id on every response, and one structured access line per request (text and JSON)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import ServerProcess, models_toml
from streams import StreamReader, long_completion, wait_for

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProcess(models_toml(), tmp_path_factory.mktemp("jsonlog"), "--log-format", "json").wait_ready()
    yield proc
    proc.stop()


def _json_lines(srv: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in srv.log().splitlines() if line.strip()]


def _access(srv: ServerProcess, request_id: str) -> dict:
    return wait_for(lambda: next((e for e in _json_lines(srv) if e.get("request_id") == request_id), None),
                    timeout=10, what=f"access line for {request_id}")


def test_request_id_is_generated_and_echoed_on_every_response(json_server):
    base = json_server.base_url
    responses = [
        httpx.get(base + "/health"),
        httpx.get(base + "/v1/models"),
        httpx.get(base + "/no/such/route"),
        httpx.post(base + "/v1/chat/completions", content=b"{not json"),
        httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=60),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert [r.status_code for r in responses] == [200, 200, 404, 400, 200]


def test_client_request_id_is_kept_and_unsafe_ones_replaced(json_server):
    base = json_server.base_url
    r = httpx.post(base + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-42.a/b"}, timeout=60)
    assert r.headers["x-request-id"] == "trace-42.a/b"
    for unsafe in ("has space", "x" * 200, "quote\"d"):
        r = httpx.get(base + "/v1/models", headers={"x-request-id": unsafe})
        assert r.headers["x-request-id"].startswith("req_"), unsafe
    reader = StreamReader(base + "/v1/completions", long_completion(max_tokens=3), {"x-request-id": "stream-1"})
    reader.run()
    assert reader.done and reader.response_headers["x-request-id"] == "stream-1"


def test_every_log_line_is_json_and_requests_have_one_line_each(json_server):
    base = json_server.base_url
    httpx.post(base + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "json-line-1"}, timeout=60)
    entry = _access(json_server, "json-line-1")
    assert entry["logger"] == "nomoat.access" and entry["level"] == "info"
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["model"] == "default" and entry["adapter"] is None
    assert entry["prompt_tokens"] > 0 and 0 < entry["completion_tokens"] <= 3
    assert 0 < entry["ttft_s"] <= entry["duration_s"]
    lines = _json_lines(json_server)  # raises if any line is not JSON
    assert sum(e.get("request_id") == "json-line-1" for e in lines) == 1
    assert any(e["logger"].startswith("uvicorn") for e in lines), "uvicorn's own lines are JSON too"


def test_streamed_request_logs_its_tokens_after_the_last_byte(json_server):
    reader = StreamReader(json_server.base_url + "/v1/completions", long_completion(max_tokens=5),
                          {"x-request-id": "json-stream-1"})
    reader.run()
    assert reader.done
    entry = _access(json_server, "json-stream-1")
    assert entry["status"] == 200 and entry["completion_tokens"] == 5 and entry["ttft_s"] is not None


def test_errors_are_logged_with_their_status(json_server):
    httpx.post(json_server.base_url + "/v1/chat/completions", json={**CHAT, "model": "nope"},
               headers={"x-request-id": "json-err-1"})
    entry = _access(json_server, "json-err-1")
    assert entry["status"] == 404 and entry["prompt_tokens"] is None


def test_text_format_has_one_readable_line_per_request(server, client):
    client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "text-line-1"})
    line = wait_for(lambda: next((ln for ln in server.log().splitlines() if "request_id=text-line-1" in ln), None),
                    timeout=10, what="text access line")
    assert "POST /v1/chat/completions" in line and "status=200" in line and "completion_tokens=" in line
