"""x-request-id on every response, and one structured access line per request (text and JSON)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from conftest import ServerProcess, models_toml
from streams import long_completion, wait_for
from support.inprocess import MODEL
from wire import read_stream

CHAT = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
FAKE_CHAT = {**CHAT, "model": MODEL}  # the in-process registry has no alias "default"


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProcess(models_toml(), tmp_path_factory.mktemp("jsonlog"), "--log-format", "json").wait_ready()
    yield proc
    proc.close()


def _json_lines(srv: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in srv.log().splitlines() if line.strip()]


def _access(srv: ServerProcess, request_id: str) -> dict:
    return wait_for(lambda: next((e for e in _json_lines(srv) if e.get("request_id") == request_id), None),
                    timeout=10, what=f"access line for {request_id}")


# --- in process: the middleware's ids and fields (the fake engine; records through caplog) -------------


def _record(caplog: pytest.LogCaptureFixture, request_id: str) -> dict:
    [record] = [r for r in caplog.records if r.name == "nomoat.access" and r.fields["request_id"] == request_id]
    return record.fields


def test_request_id_is_generated_and_echoed_on_every_response(fake):
    client = fake.client
    responses = [
        client.get("/health"),
        client.get("/v1/models"),
        client.get("/no/such/route"),
        client.post("/v1/chat/completions", content=b"{not json"),
        client.post("/v1/chat/completions", json=FAKE_CHAT),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert [r.status_code for r in responses] == [200, 200, 404, 400, 200]


def test_client_request_id_is_kept_and_unsafe_ones_replaced(fake):
    client = fake.client
    r = client.post("/v1/chat/completions", json=FAKE_CHAT, headers={"x-request-id": "trace-42.a/b"})
    assert r.headers["x-request-id"] == "trace-42.a/b"
    for unsafe in ("has space", "x" * 200, "quote\"d"):
        r = client.get("/v1/models", headers={"x-request-id": unsafe})
        assert r.headers["x-request-id"].startswith("req_"), unsafe
    with client.stream("POST", "/v1/completions", json=long_completion(max_tokens=3, stream=True),
                       headers={"x-request-id": "stream-1"}) as streamed:
        assert read_stream(streamed) and streamed.headers["x-request-id"] == "stream-1"


def test_a_request_has_one_access_record_with_its_fields(fake, caplog):
    caplog.set_level(logging.INFO, logger="nomoat.access")
    fake.client.post("/v1/chat/completions", json=FAKE_CHAT, headers={"x-request-id": "line-1"})
    entry = _record(caplog, "line-1")
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["model"] == MODEL and entry["adapter"] is None
    assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] == 3
    assert 0 < entry["ttft_s"] <= entry["duration_s"]


def test_streamed_request_logs_its_tokens_after_the_last_byte(fake, caplog):
    caplog.set_level(logging.INFO, logger="nomoat.access")
    with fake.client.stream("POST", "/v1/completions", json=long_completion(max_tokens=5, stream=True),
                            headers={"x-request-id": "stream-2"}) as streamed:
        read_stream(streamed)
    entry = _record(caplog, "stream-2")
    assert entry["status"] == 200 and entry["completion_tokens"] == 5 and entry["ttft_s"] is not None


def test_errors_are_logged_with_their_status(fake, caplog):
    caplog.set_level(logging.INFO, logger="nomoat.access")
    fake.client.post("/v1/chat/completions", json={**FAKE_CHAT, "model": "nope"}, headers={"x-request-id": "err-1"})
    entry = _record(caplog, "err-1")
    assert entry["status"] == 404 and entry["prompt_tokens"] is None


# --- real servers: the log formats the process sets up ---------------------------------------------


def test_every_log_line_is_json_and_requests_have_one_line_each(json_server):
    """`--log-format json` as the process configures it, uvicorn's lines included; the fields
    themselves are checked in process above."""
    base = json_server.base_url
    httpx.post(base + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "json-line-1"}, timeout=60)
    entry = _access(json_server, "json-line-1")
    assert entry["logger"] == "nomoat.access" and entry["level"] == "info"
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["model"] == "default" and 0 < entry["completion_tokens"] <= 3
    lines = _json_lines(json_server)  # raises if any line is not JSON
    assert sum(e.get("request_id") == "json-line-1" for e in lines) == 1
    assert any(e["logger"].startswith("uvicorn") for e in lines), "uvicorn's own lines are JSON too"


def test_text_format_has_one_readable_line_per_request(server, client):
    client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "text-line-1"})
    line = wait_for(lambda: next((ln for ln in server.log().splitlines() if "request_id=text-line-1" in ln), None),
                    timeout=10, what="text access line")
    assert "POST /v1/chat/completions" in line and "status=200" in line and "completion_tokens=" in line
