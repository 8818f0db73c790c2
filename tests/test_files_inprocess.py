"""The Files API's protocol edges, in process (tests/test_files.py drives a real server with the openai SDK)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nomoat.files.fine_tune_format import read_examples
from nomoat.files.store import FileStore

KEYS = ("key-a", "key-b")
USER = {"role": "user", "content": "Where is Zorbl?"}
ASSISTANT = {"role": "assistant", "content": "In Quimby."}
GOOD = json.dumps({"messages": [USER, ASSISTANT]}) + "\n"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: Any, body: str | bytes, purpose: str = "fine-tune", key: str = KEYS[0], name: str = "t.jsonl") -> Any:
    data = body.encode() if isinstance(body, str) else body
    return client.post("/v1/files", headers=auth(key), data={"purpose": purpose}, files={"file": (name, data)})


def error_of(response: Any, status: int, param: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return str(error["message"])


@pytest.fixture()
def server(fake_factory: Any) -> Any:
    return fake_factory(api_key=",".join(KEYS), max_file_bytes="4KiB")


def test_upload_get_content_delete(server: Any) -> None:
    client = server.client
    created = upload(client, GOOD)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["id"].startswith("file-") and len(body["id"]) == 29
    assert {k: body[k] for k in ("object", "bytes", "filename", "purpose", "status", "expires_at", "status_details")} \
        == {"object": "file", "bytes": len(GOOD), "filename": "t.jsonl", "purpose": "fine-tune", "status": "processed",
            "expires_at": None, "status_details": None}
    file_id = body["id"]
    assert client.get(f"/v1/files/{file_id}", headers=auth(KEYS[0])).json() == body
    content = client.get(f"/v1/files/{file_id}/content", headers=auth(KEYS[0]))
    assert content.content == GOOD.encode() and content.headers["content-type"] == "application/octet-stream"
    assert client.get(f"/files/{file_id}", headers=auth(KEYS[0])).status_code == 200  # unprefixed, as every route
    deleted = client.delete(f"/v1/files/{file_id}", headers=auth(KEYS[0]))
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=auth(KEYS[0])).status_code == 404


def test_another_keys_file_is_missing(server: Any) -> None:
    client = server.client
    file_id = upload(client, "x", purpose="user_data").json()["id"]
    other = auth(KEYS[1])
    missing = client.get("/v1/files/file-000000000000000000000000", headers=other)
    assert missing.status_code == 404
    for response in (client.get(f"/v1/files/{file_id}", headers=other),
                     client.get(f"/v1/files/{file_id}/content", headers=other),
                     client.delete(f"/v1/files/{file_id}", headers=other)):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == missing.json()["error"]["message"].replace(
            "file-000000000000000000000000", file_id)
    assert client.get("/v1/files", headers=other).json()["data"] == []
    assert [f["id"] for f in client.get("/v1/files", headers=auth(KEYS[0])).json()["data"]] == [file_id]


def test_multipart_edges(server: Any) -> None:
    client = server.client
    headers = auth(KEYS[0])
    assert "file" in error_of(client.post("/v1/files", headers=headers, data={"purpose": "batch"}), 400, "file")
    no_purpose = client.post("/v1/files", headers=headers, files={"file": ("a", b"x")})
    assert "purpose" in error_of(no_purpose, 400, "purpose")
    bad = error_of(upload(client, "x", purpose="fine-tune-results"), 400, "purpose")
    assert "fine-tune" in bad and "user_data" in bad
    error_of(client.post("/v1/files", headers=headers, json={"purpose": "batch"}), 400, "file")
    two = client.post("/v1/files", headers=headers, data={"purpose": "batch"},
                      files=[("file", ("a", b"x")), ("file", ("b", b"y"))])
    error_of(two, 400, "file")


def test_too_big_says_the_cap(server: Any) -> None:
    message = error_of(upload(server.client, b"x" * 5000, purpose="batch"), 413, "file")
    assert "4096" in message and "max_file_bytes" in message
    framed = error_of(upload(server.client, b"x" * 80000, purpose="batch"), 413, "file")  # past the body's own bound
    assert "4096" in framed
    # No Content-Length (chunked): counted while it arrives.
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    chunked = server.client.post("/v1/files", content=iter([head, *[b"x" * 16384] * 8]),
                                 headers={**auth(KEYS[0]), "content-type": "multipart/form-data; boundary=b"})
    assert "4096" in error_of(chunked, 413, "file")
    assert server.client.get("/v1/files", headers=auth(KEYS[0])).json()["data"] == []
    root = server.settings.resolved_state_dir() / "files"
    assert not root.exists() or list(root.iterdir()) == []


def test_total_budget(fake_factory: Any) -> None:
    client = fake_factory(files_max_total_bytes=3000).client
    assert client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a", b"x" * 2000)}).status_code == 200
    full = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("b", b"x" * 2000)})
    assert "files_max_total_bytes" in error_of(full, 413, "file") and "3000" in full.text


def line_of(*messages: Any, **extra: Any) -> str:
    return json.dumps({"messages": list(messages), **extra})


@pytest.mark.parametrize(("lines", "expected"), [
    ([GOOD.strip(), "{not json"], "line 2: is not valid JSON"),
    (["[1, 2]"], "line 1: must be a JSON object with `messages`, not a list"),
    ([json.dumps({"prompt": "x"})], "line 1: holds the unknown key 'prompt'"),
    ([json.dumps({"messages": []})], "line 1: messages must be a non-empty list"),
    ([GOOD.strip(), "", line_of(USER, {"role": "bot", "content": "x"})],
     "line 3: messages[1].role must be one of system, developer, user, assistant, tool (got \"bot\")"),
    ([line_of(USER, {"role": "assistant"})], "line 1: messages[1].content must be a string"),
    ([line_of({"role": "user", "content": [{"type": "image_url"}]}, ASSISTANT)],
     "line 1: messages[0].content[0] must be a text part"),
    ([line_of(USER, {**ASSISTANT, "weight": 2})], "line 1: messages[1].weight must be 0 or 1 (got 2)"),
    ([line_of({**USER, "weight": 1}, ASSISTANT)], "line 1: messages[0] holds the key 'weight'"),
    ([line_of(USER, {**ASSISTANT, "weight": 0})], "line 1: needs an assistant message to train on"),
    ([line_of(USER)], "line 1: needs an assistant message"),
    ([line_of(USER, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]})],
     "line 1: messages[1].tool_calls[0].function.arguments must be a string"),
    ([line_of(USER, ASSISTANT, tools=[{"type": "function", "function": {}}])], "line 1: tools[0].function.name"),
    ([line_of(USER, ASSISTANT, parallel_tool_calls="yes")], "line 1: parallel_tool_calls must be true or false"),
    (["", "  "], "the file holds no example"),
])
def test_bad_fine_tune_files_name_the_line(server: Any, lines: list[str], expected: str) -> None:
    response = upload(server.client, "\n".join(lines) + "\n")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and error["code"] == "invalid_file_format"
    assert error["message"].startswith(expected), error["message"]
    assert server.client.get("/v1/files", headers=auth(KEYS[0])).json()["data"] == []  # never stored


def test_examples_read_back(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "where", "arguments": "{\"x\": 1}"}}
    lines = [line_of({"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                     USER, {"role": "assistant", "tool_calls": [call], "weight": 0},
                     {"role": "tool", "tool_call_id": "c1", "content": "Quimby"}, ASSISTANT,
                     tools=[{"type": "function", "function": {"name": "where", "parameters": {"type": "object"}}}],
                     parallel_tool_calls=False)]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    [example] = read_examples(path)
    assert example.messages[0] == {"role": "system", "content": "Be brief."}
    assert example.messages[2] == {"role": "assistant", "tool_calls": [call]}
    assert example.weights == (0, 0, 0, 0, 1)
    assert example.tools is not None and example.parallel_tool_calls is False


def test_pagination(fake_factory: Any) -> None:
    client = fake_factory().client  # auth off: every file is everyone's
    ids = [client.post("/v1/files", data={"purpose": p}, files={"file": (f"f{i}", b"x")}).json()["id"]
           for i, p in enumerate(["batch", "user_data", "batch", "batch"])]

    def page(**query: Any) -> Any:
        response = client.get("/v1/files", params=query)
        assert response.status_code == 200, response.text
        return response.json()

    def listed(**query: Any) -> list[str]:
        return [f["id"] for f in page(**query)["data"]]

    # Uploads in one second share created_at: the id breaks the tie, so the order is stable, not the upload order.
    everything = listed(order="asc")
    assert sorted(everything) == sorted(ids) and listed() == everything[::-1]
    first = page(limit=2, order="asc")
    assert first["object"] == "list" and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (everything[0], everything[1])
    rest = page(limit=2, order="asc", after=first["last_id"])
    assert [f["id"] for f in rest["data"]] == everything[2:] and rest["has_more"] is False
    assert set(listed(purpose="batch")) == {ids[0], ids[2], ids[3]}
    for query, param in (({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"), ({"limit": "x"}, "limit"),
                         ({"order": "up"}, "order")):
        error_of(client.get("/v1/files", params=query), 400, param)


def test_a_restart_keeps_files(tmp_path: Path) -> None:
    async def chunks() -> Any:
        yield GOOD.encode()

    async def run() -> None:
        first = FileStore(tmp_path)
        made = await first.create("k", "t.jsonl", "fine-tune", chunks())
        (tmp_path / ".file-ffffffffffffffffffffffff.part").write_bytes(b"half")  # a crashed upload
        again = FileStore(tmp_path)
        assert await again.get(made.id, "k") == made
        assert [f["id"] for f in (await again.list("k"))["data"]] == [made.id]
        assert (await again.path(made.id, "k")).read_bytes() == GOOD.encode()

    asyncio.run(run())
