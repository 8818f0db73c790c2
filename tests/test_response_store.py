"""The Responses store, in process over a fake engine: who may read a stored response, how the store grows
along a previous_response_id chain, its limits and retention, and what a locked, corrupt or misplaced store
file answers (503 or response.failed, never a 500 or a cut stream; store: false unaffected)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.inprocess import MODEL
from test_responses_inprocess import RESPONSES, create, events

from nomoat.errors import InvalidRequestError
from nomoat.openai import response_db as db
from nomoat.openai.response_db import Retention
from nomoat.wire.auth import key_id

KEY_A, KEY_B, ADMIN = "key-of-a", "key-of-b", "key-of-admin"
STORE = "responses.sqlite3"


def as_key(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Waits on a condition another thread makes true; the timeout only keeps a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def padded(text: str, padding: int) -> list[dict[str, Any]]:
    """`text` from the user after a reasoning item of `padding` bytes: stored with its turn, never in a prompt."""
    return [{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "x" * padding}]},
            {"role": "user", "content": text}]


def stored_bytes(state: Path) -> int:
    """Bytes of JSON the store holds, whatever its schema (the old one kept the same two columns)."""
    with sqlite3.connect(state / STORE) as conn:
        return int(conn.execute("SELECT TOTAL(length(CAST(response AS BLOB)) + length(CAST(input AS BLOB))) "
                                "FROM responses").fetchone()[0])


# --- ownership ---------------------------------------------------------------------------------


@pytest.fixture()
def keyed(fake_factory, tmp_path):
    return fake_factory(api_key=f"{KEY_A},{KEY_B}", admin_key=ADMIN, state_dir=tmp_path)


def test_only_its_own_key_and_an_admin_key_see_a_stored_response(keyed):
    client = keyed.client
    r = client.post(RESPONSES, json={"model": MODEL, "input": "secret plans"}, headers=as_key(KEY_A))
    assert r.status_code == 200, r.text
    body = r.json()
    rid = body["id"]
    missing = client.get(f"{RESPONSES}/resp_missing", headers=as_key(KEY_B)).json()["error"]
    # B meets the answer of an id that does not exist, on every route that takes one.
    for method, path in (("GET", f"{RESPONSES}/{rid}"), ("GET", f"{RESPONSES}/{rid}/input_items"),
                         ("DELETE", f"{RESPONSES}/{rid}")):
        r = client.request(method, path, headers=as_key(KEY_B))
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == {**missing, "message": missing["message"].replace("resp_missing", rid)}
    for path in (RESPONSES, f"{RESPONSES}/input_tokens"):
        r = client.post(path, json={"model": MODEL, "input": "and?", "previous_response_id": rid},
                        headers=as_key(KEY_B))
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "previous_response_not_found"
    assert len(keyed.engine.submitted) == 1  # B's continuations never reached the model
    # A still has it, whole; the admin key sees it too.
    assert client.get(f"{RESPONSES}/{rid}", headers=as_key(KEY_A)).json() == body
    assert client.get(f"{RESPONSES}/{rid}/input_items", headers=as_key(KEY_A)).status_code == 200
    assert client.get(f"{RESPONSES}/{rid}", headers=as_key(ADMIN)).json() == body
    r = client.post(RESPONSES, json={"model": MODEL, "input": "go on", "previous_response_id": rid},
                    headers=as_key(KEY_A))
    assert r.status_code == 200, r.text
    assert client.delete(f"{RESPONSES}/{rid}", headers=as_key(KEY_A)).status_code == 200


def test_the_store_keeps_the_key_id_never_the_key(keyed, tmp_path):
    r = keyed.client.post(RESPONSES, json={"model": MODEL, "input": "hi"}, headers=as_key(KEY_A))
    assert r.status_code == 200, r.text
    raw = (tmp_path / STORE).read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob(f"{STORE}-*"))
    assert KEY_A.encode() not in raw


# --- growth, limits and retention --------------------------------------------------------------


def test_a_chain_grows_the_store_by_each_turn_alone(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path)
    previous, sizes = None, [0]
    for turn in range(12):
        body = create(srv, padded(f"SAY:turn {turn}", 20_000), previous_response_id=previous)
        previous = body["id"]
        sizes.append(stored_bytes(tmp_path))
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    # Linear: the twelfth turn costs what the first did (stored whole each turn, it would cost 12 times as much).
    assert max(growth) < 1.2 * min(growth), growth
    assert sizes[-1] < 12 * 1.2 * growth[0]
    # The conversation is rebuilt from the links, every turn in order.
    messages = srv.engine.submitted[-1].prompt.messages
    assert [m["content"] for m in messages if m["role"] == "user"] == [f"SAY:turn {t}" for t in range(12)]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == [f"turn {t}" for t in range(11)]


def test_one_stored_response_is_capped(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path, responses_max_stored_bytes=4096)
    before = len(srv.engine.submitted)
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": padded("SAY:ok", 5000)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "responses_max_stored_bytes (4096)" in error["message"] and error["param"] == "input"
    assert len(srv.engine.submitted) == before  # refused before generating
    assert create(srv, padded("SAY:ok", 5000), store=False)["status"] == "completed"


def test_a_chain_is_bounded_in_length_and_bytes(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path, responses_max_chain_length=3)
    previous = None
    for _ in range(3):
        previous = create(srv, "SAY:ok", previous_response_id=previous)["id"]
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": "SAY:ok", "previous_response_id": previous})
    assert r.status_code == 400 and "responses_max_chain_length (3)" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "previous_response_id"
    assert create(srv, "SAY:ok", previous_response_id=previous, store=False)["status"] == "completed"

    srv = fake_factory(state_dir=tmp_path / "bytes", responses_max_chain_bytes=8192)
    first = create(srv, padded("SAY:ok", 3000))["id"]
    second = create(srv, padded("SAY:ok", 3000), previous_response_id=first)["id"]
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": padded("SAY:ok", 3000),
                                         "previous_response_id": second})
    assert r.status_code == 400 and "responses_max_chain_bytes (8192)" in r.json()["error"]["message"], r.text


def test_the_store_is_pruned_by_total_bytes(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path, responses_max_total_bytes=12_000)
    ids = [create(srv, padded("SAY:ok", 3000))["id"] for _ in range(5)]
    kept = [srv.client.get(f"{RESPONSES}/{i}").status_code for i in ids]
    assert kept[-1] == 200 and kept[0] == 404 and stored_bytes(tmp_path) <= 12_000, kept


def test_a_conversation_missing_an_earlier_turn_is_refused_by_name(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path, responses_max_count=2)
    first = create(srv, "SAY:a")["id"]
    second = create(srv, "SAY:b", previous_response_id=first)["id"]
    third = create(srv, "SAY:c", previous_response_id=second)["id"]  # the count limit drops `first`
    assert srv.client.get(f"{RESPONSES}/{first}").status_code == 404
    for r in (srv.client.post(RESPONSES, json={"model": MODEL, "input": "d", "previous_response_id": third}),
              srv.client.get(f"{RESPONSES}/{third}/input_items")):
        assert r.status_code == 404 and first in r.json()["error"]["message"], r.text


def test_age_pruning_keeps_the_turns_a_younger_response_continues(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    db.ensure_schema(conn)
    for rid, previous, at in (("old_alone", None, 0.0), ("old_root", None, 0.0), ("young", "old_root", 100.0)):
        db.put(conn, rid, None, previous, db.encode({"id": rid, "output": []}, []), at)
    assert db.prune(conn, Retention(max_age=50.0, max_count=100, max_bytes=10**9), now=120.0, spare="") == 1
    assert {row[0] for row in conn.execute("SELECT id FROM responses")} == {"old_root", "young"}


def test_an_old_format_store_is_set_aside_with_a_log_line(fake_factory, tmp_path, caplog):
    with sqlite3.connect(tmp_path / STORE) as conn:
        conn.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, stored_at REAL NOT NULL, response TEXT NOT NULL, "
                     "input TEXT NOT NULL)")
        conn.execute("INSERT INTO responses VALUES ('resp_old', ?, '{}', '[]')", (time.time(),))
    with caplog.at_level(logging.INFO, logger="nomoat.store"):
        srv = fake_factory(state_dir=tmp_path)
        assert srv.client.get(f"{RESPONSES}/resp_old").status_code == 404
        body = create(srv, "new")
    assert srv.client.get(f"{RESPONSES}/{body['id']}").json() == body
    assert any("set aside in table responses_v1" in r.getMessage() for r in caplog.records), caplog.text


# --- never a non-finite number -----------------------------------------------------------------


def test_a_nan_is_refused_before_anything_is_stored_or_sent(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path)
    for stream in (False, True):
        body = {"model": MODEL, "input": "hi", "stream": stream,
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "x-n": float("nan")}}]}
        r = srv.client.post(RESPONSES, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert not (tmp_path / STORE).exists() or stored_bytes(tmp_path) == 0
    with pytest.raises(InvalidRequestError, match=r"tools\[0\]\.parameters\.x-n"):
        db.encode({"tools": [{"parameters": {"x-n": float("nan")}}]}, [])


# --- a locked, corrupt or misplaced store ------------------------------------------------------


@pytest.fixture()
def locker(tmp_path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Another connection to the store file, which takes the write lock and keeps it until the test ends."""
    held: list[sqlite3.Connection] = []

    def lock() -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / STORE, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        held.append(conn)
        return conn

    yield lock
    for conn in held:
        conn.close()


def test_a_locked_store_is_a_503_within_its_timeout_and_store_false_still_works(fake_factory, tmp_path, locker):
    srv = fake_factory(state_dir=tmp_path, responses_store_timeout_seconds=0.2)
    kept = create(srv, "before the lock")
    locker()
    r = srv.client.post(RESPONSES, json={"model": MODEL, "input": "hi"})
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "store_unavailable" and "locked" in error["message"] and r.headers["retry-after"]
    datas = events(srv, {"input": "hi"})
    assert [d["type"] for d in datas[-2:]] == ["error", "response.failed"]
    assert datas[-2]["code"] == "store_unavailable"
    assert srv.client.get(f"{RESPONSES}/{kept['id']}").json() == kept  # readers never wait on a writer
    assert create(srv, "hi", store=False)["status"] == "completed"
    assert events(srv, {"input": "hi", "store": False})[-1]["type"] == "response.completed"


def test_writes_waiting_on_a_locked_store_never_delay_a_json_schema_chat(fake_factory, tmp_path, locker):
    srv = fake_factory(state_dir=tmp_path, responses_store_timeout_seconds=120, max_streams_per_key=0)
    create(srv, "make the file")
    lock = locker()
    before = len(srv.engine.submitted)
    # More waiting writes than the default thread pool has threads (min(32, cores + 4)).
    n = min(32, (os.cpu_count() or 1) + 4) + 2
    srv.engine.capacity = n
    with ThreadPoolExecutor(n) as pool:
        writes: list[Future[Any]] = [pool.submit(srv.client.post, RESPONSES, json={"model": MODEL, "input": f"w{i}"})
                                     for i in range(n)]
        wait_for(lambda: len(srv.engine.submitted) == before + n and srv.engine.outstanding == 0,
                 "every write generated its answer")
        schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        chat = srv.client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": 'SAY:{"a": "b"}'}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
        assert chat.status_code == 200, chat.text
        assert not any(w.done() for w in writes), "the writes should still wait on the lock"
        lock.execute("ROLLBACK")
        assert [w.result().status_code for w in writes] == [200] * n


def _corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a database, just text\n" * 200)


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "something").write_text("x")


@pytest.mark.parametrize("spoil", [_corrupt, _directory], ids=["corrupt file", "directory in its place"])
def test_a_broken_store_is_a_503_everywhere_and_logged_at_startup(fake_factory, tmp_path, caplog, spoil):
    spoil(tmp_path / STORE)
    with caplog.at_level(logging.INFO, logger="nomoat.store"):
        srv = fake_factory(state_dir=tmp_path)
        wait_for(lambda: any(r.levelno == logging.ERROR for r in caplog.records), "the startup check's log line")
    assert str(tmp_path / STORE) in caplog.text
    for method, path, body in (("POST", RESPONSES, {"model": MODEL, "input": "hi"}),
                               ("GET", f"{RESPONSES}/resp_x", None), ("DELETE", f"{RESPONSES}/resp_x", None),
                               ("GET", f"{RESPONSES}/resp_x/input_items", None),
                               ("POST", RESPONSES, {"model": MODEL, "input": "hi", "store": False,
                                                    "previous_response_id": "resp_x"})):
        r = srv.client.request(method, path, json=body)
        assert r.status_code == 503, (method, path, r.text)
        error = r.json()["error"]
        assert error["code"] == "store_unavailable" and "store: false still work" in error["message"], error
        assert str(tmp_path) not in error["message"]  # paths are for the log
    datas = events(srv, {"input": "hi"})
    assert [d["type"] for d in datas[-2:]] == ["error", "response.failed"]
    assert datas[-1]["response"]["status"] == "failed" and datas[-2]["code"] == "store_unavailable"
    assert create(srv, "hi", store=False)["status"] == "completed"
    assert events(srv, {"input": "hi", "store": False})[-1]["type"] == "response.completed"


def test_deleting_a_turn_others_continue_keeps_their_conversation(fake_factory, tmp_path):
    srv = fake_factory(state_dir=tmp_path)
    first = create(srv, "SAY:one")["id"]
    second = create(srv, "SAY:two", previous_response_id=first)["id"]
    assert srv.client.delete(f"{RESPONSES}/{first}").status_code == 200
    for r in (srv.client.get(f"{RESPONSES}/{first}"), srv.client.delete(f"{RESPONSES}/{first}"),
              srv.client.post(RESPONSES, json={"model": MODEL, "input": "x", "previous_response_id": first})):
        assert r.status_code == 404, r.text
    third = create(srv, "SAY:three", previous_response_id=second)["id"]
    assert [m["content"] for m in srv.engine.submitted[-1].prompt.messages] == [
        "SAY:one", "one", "SAY:two", "two", "SAY:three"]
    # Deleting the last response that needs them takes the marked ones with it.
    assert srv.client.delete(f"{RESPONSES}/{second}").status_code == 200
    with sqlite3.connect(tmp_path / STORE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 3
    assert srv.client.delete(f"{RESPONSES}/{third}").status_code == 200
    with sqlite3.connect(tmp_path / STORE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0


def test_the_store_threads_are_daemons_and_end_with_their_executor():
    import gc

    from nomoat.openai.store_threads import StoreThreads

    threads = StoreThreads(2, "store-threads-test")
    assert threads.submit(lambda x: x + 1, 1).result() == 2
    with pytest.raises(ZeroDivisionError):
        threads.submit(lambda: 1 / 0).result()
    mine = [t for t in threading.enumerate() if t.name.startswith("store-threads-test")]
    assert len(mine) == 2 and all(t.daemon for t in mine)  # a forked server's exit never waits on them
    del threads
    gc.collect()
    for thread in mine:
        thread.join(60)
        assert not thread.is_alive()


# --- a split model's child process ---------------------------------------------------------------
# Its one key is the parent's (server/child.py); the parent names its client's key in x-nomoat-caller.


def test_a_child_process_stores_and_shows_responses_as_the_key_its_parent_names(fake_factory, tmp_path):
    child = fake_factory(api_key="parents-key", rpc_in_process=True, state_dir=tmp_path).client
    parent, as_a, as_b = {"authorization": "Bearer parents-key"}, key_id(KEY_A), key_id(KEY_B)
    r = child.post(RESPONSES, json={"model": MODEL, "input": "secret"}, headers={**parent, "x-nomoat-caller": as_a})
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    assert child.get(f"{RESPONSES}/{rid}", headers={**parent, "x-nomoat-caller": as_b}).status_code == 404
    r = child.post(RESPONSES, json={"model": MODEL, "input": "and?", "previous_response_id": rid},
                   headers={**parent, "x-nomoat-caller": as_b})
    assert r.status_code == 404, r.text
    assert child.get(f"{RESPONSES}/{rid}", headers={**parent, "x-nomoat-caller": as_a}).status_code == 200
    assert child.get(f"{RESPONSES}/{rid}", headers={**parent, "x-nomoat-caller": f"{as_b};admin"}).status_code == 200


def test_a_client_cannot_name_another_caller_to_a_server_that_is_no_child(keyed):
    r = keyed.client.post(RESPONSES, json={"model": MODEL, "input": "secret"}, headers=as_key(KEY_A))
    rid = r.json()["id"]
    for claimed in (key_id(KEY_A), f"{key_id(KEY_B)};admin"):
        r = keyed.client.get(f"{RESPONSES}/{rid}", headers={**as_key(KEY_B), "x-nomoat-caller": claimed})
        assert r.status_code == 404, (claimed, r.text)
