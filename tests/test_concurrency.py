"""Many clients at once, a full queue, and clients that go away: streams stay whole, the engine is freed."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import ServerProcess, models_toml
from wire import (
    MODEL,
    NO_EOS,
    assert_error,
    assert_serves,
    chat_body,
    chat_text,
    finish_reasons,
    metric,
    read_stream,
    tokenize,
    wait_until,
)

CHAT = "/v1/chat/completions"
WORDS = [" apple", " banana", " cherry", " river"]
# Long enough that nothing but a cancel ends it during the test (about 1500 tokens to generate).
ENDLESS = chat_body("Tell me a very long story.", max_tokens=1500, logit_bias=NO_EOS)


def active_sequences(client: httpx.Client) -> float | None:
    return metric(client.get("/metrics").text, "nomoat_active_sequences", model=MODEL)


def requests_with_status(client: httpx.Client, status: str) -> float:
    return metric(client.get("/metrics").text, "nomoat_requests_total", model=MODEL, status=status) or 0.0


def data_lines(response: httpx.Response) -> Iterator[dict]:
    """Parsed chunks as they arrive. Hold on to the iterator: once it is garbage-collected,
    closing it closes the connection, which the server rightly takes as a disconnect."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


@pytest.fixture(scope="module")
def single_slot(tmp_path_factory) -> Iterator[ServerProcess]:
    """One sequence at a time, the default queue: whatever holds the slot blocks everyone else."""
    proc = ServerProcess(models_toml(parallel=1), tmp_path_factory.mktemp("single")).wait_ready()
    yield proc
    proc.close()


def test_eight_concurrent_streams_are_complete_and_separate(client, base_url):
    # Half the clients force one word each (logit_bias +100): any token crossing between streams
    # shows up as a foreign word. The other half sample freely; their text must match their tokens.
    forced = [tokenize(w) for w in WORDS]
    assert all(len(t) == 1 for t in forced)

    def run(i: int) -> tuple[int, list[dict]]:
        fields = {"max_tokens": 16, "logprobs": True, "stream": True, "stream_options": {"include_usage": True}}
        if i < 4:
            fields |= {"temperature": 0, "logit_bias": {str(forced[i][0]): 100}}
        else:
            fields |= {"temperature": 0.8, "seed": i, "logit_bias": NO_EOS}
        with httpx.Client(base_url=base_url, timeout=300) as c, \
                c.stream("POST", CHAT, json=chat_body(f"Say something about number {i}.", **fields)) as r:
            return i, read_stream(r)

    with ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(run, range(8)))
    ids = set()
    for i, chunks in results.items():
        ids.add(chunks[0]["id"])
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in ch["choices"][0]["delta"] for ch in chunks[1:-1])
        assert finish_reasons(chunks) == ["length"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
        tokens = [e["token"] for ch in chunks[:-1] if ch["choices"][0]["logprobs"]
                  for e in ch["choices"][0]["logprobs"]["content"]]
        assert len(tokens) == 16
        assert chat_text(chunks) == "".join(tokens)
        if i < 4:
            assert chat_text(chunks) == WORDS[i] * 16, (i, chat_text(chunks))
    assert len(ids) == 8
    assert wait_until(lambda: active_sequences(client) == 0)
    assert metric(client.get("/metrics").text, "nomoat_queue_depth", model=MODEL) == 0


def test_disconnect_mid_stream_frees_the_engine(single_slot):
    with httpx.Client(base_url=single_slot.base_url, timeout=60) as client:
        with client.stream("POST", CHAT, json=ENDLESS | {"stream": True}) as r:
            assert r.status_code == 200
            chunks = data_lines(r)
            got = [next(chunks) for _ in range(4)]
            assert all(c["choices"][0]["finish_reason"] is None for c in got)
            assert active_sequences(client) == 1
        # Generating on would hold the only slot for ~1500 tokens; a cancel frees it at once.
        assert wait_until(lambda: active_sequences(client) == 0)
        assert_serves(client)


def test_disconnect_frees_every_choice_of_n(single_slot):
    with httpx.Client(base_url=single_slot.base_url, timeout=60) as client:
        with client.stream("POST", CHAT, json=ENDLESS | {"stream": True, "n": 2}) as r:
            chunks = data_lines(r)
            [next(chunks) for _ in range(4)]
            text = client.get("/metrics").text
            # One slot: one choice runs, the other waits for it.
            assert metric(text, "nomoat_active_sequences", model=MODEL) == 1
            assert metric(text, "nomoat_queue_depth", model=MODEL) == 1
        assert wait_until(lambda: active_sequences(client) == 0)
        assert metric(client.get("/metrics").text, "nomoat_queue_depth", model=MODEL) == 0
        assert_serves(client)


def test_client_timeout_on_a_whole_answer_frees_the_engine(single_slot):
    with httpx.Client(base_url=single_slot.base_url, timeout=60) as client:
        before = requests_with_status(client, "499")
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT, json=ENDLESS, timeout=httpx.Timeout(60, read=1.5))
        assert wait_until(lambda: active_sequences(client) == 0)
        assert wait_until(lambda: requests_with_status(client, "499") == before + 1)
        assert_serves(client)


def test_queued_stream_gets_its_first_chunk_before_a_slot_frees(single_slot):
    with httpx.Client(base_url=single_slot.base_url, timeout=httpx.Timeout(60, read=15)) as client:
        with client.stream("POST", CHAT, json=ENDLESS | {"stream": True}) as holder:
            held = data_lines(holder)  # keep it: a dropped line iterator closes the response
            next(held)
            assert wait_until(lambda: active_sequences(client) == 1)
            body = chat_body("Hi", max_tokens=4, logit_bias=NO_EOS, stream=True)
            with client.stream("POST", CHAT, json=body) as queued:
                lines = data_lines(queued)
                # Sent on admission, while the only slot is still busy (clients time out otherwise).
                first = next(lines)
                assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
                assert metric(client.get("/metrics").text, "nomoat_queue_depth", model=MODEL) == 1
                holder.close()
                rest = list(lines)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in rest if c["choices"])
        assert [c["choices"][0]["finish_reason"] for c in rest if c["choices"][0]["finish_reason"]] == ["length"]
        assert wait_until(lambda: active_sequences(client) == 0)


def test_waiting_requests_are_served_in_arrival_order(single_slot):
    finished: list[str] = []

    def ask(name: str) -> None:
        with httpx.Client(base_url=single_slot.base_url, timeout=120) as c:
            post = c.post(CHAT, json=chat_body("Hi", max_tokens=6, logit_bias=NO_EOS))
            assert post.status_code == 200
            finished.append(name)

    with httpx.Client(base_url=single_slot.base_url, timeout=60) as client:
        with client.stream("POST", CHAT, json=ENDLESS | {"stream": True}) as holder:
            held = data_lines(holder)  # keep it: a dropped line iterator closes the response
            next(held)
            threads = []
            for depth, name in enumerate("BCD", start=1):
                threads.append(threading.Thread(target=ask, args=(name,)))
                threads[-1].start()
                assert wait_until(lambda d=depth: metric(client.get("/metrics").text, "nomoat_queue_depth", model=MODEL) == d)
        for t in threads:
            t.join(120)
    assert finished == ["B", "C", "D"]


def test_full_queue_is_429_with_retry_after(start_server):
    srv = start_server(models_toml(parallel=1), "--queue-size", "0")
    with httpx.Client(base_url=srv.base_url, timeout=60) as client:
        with client.stream("POST", CHAT, json=ENDLESS | {"stream": True}) as holder:
            held = data_lines(holder)  # keep it: a dropped line iterator closes the response
            next(held)
            for streamed in (False, True):
                r = client.post(CHAT, json=chat_body("Hi", max_tokens=2, stream=streamed))
                assert_error(r, 429, code="server_busy", type_="rate_limit_error")
                assert int(r.headers["retry-after"]) >= 1
            sdk = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)

            # The SDK honours Retry-After: a retrying client gets through once the slot frees.
            retrying = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=5)
            answer: list = []
            t = threading.Thread(target=lambda: answer.append(retrying.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)))
            before = requests_with_status(client, "429")
            t.start()
            assert wait_until(lambda: requests_with_status(client, "429") > before)
        t.join(120)
        assert answer and answer[0].choices[0].message.content
        assert wait_until(lambda: active_sequences(client) == 0)
        assert_serves(client)


def test_shutdown_cuts_a_stream_with_an_error_event_and_a_whole_answer_with_a_json_503(start_server):
    """Past the grace period a stream ends with an error event (or [DONE]) and a non-streaming request
    gets the OpenAI-shaped error, not a text 500. Both run at once on one server (parallel = 2)."""
    srv = start_server(models_toml(parallel=2), "--shutdown-grace-seconds", "1")
    answer: list[httpx.Response] = []
    payloads: list[str] = []
    with httpx.Client(base_url=srv.base_url, timeout=60) as client, \
            client.stream("POST", CHAT, json=ENDLESS | {"stream": True}) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                payloads.append(line[6:])
            if len(payloads) == 4:
                break
        waiting = threading.Thread(target=lambda: answer.append(httpx.post(srv.base_url + CHAT, json=ENDLESS,
                                                                          timeout=60)))
        waiting.start()
        running = 'nomoat_active_sequences{model="smollm2-135m"} 2.0'
        assert wait_until(lambda: running in httpx.get(srv.base_url + "/metrics").text), "never ran"
        srv.proc.send_signal(signal.SIGTERM)
        # A cut is what this test is about: it is judged below by what came before it.
        with contextlib.suppress(httpx.RemoteProtocolError):
            payloads += [line[6:] for line in lines if line.startswith("data: ")]
    waiting.join(60)
    assert srv.proc.wait(30) == 0
    last = payloads[-1]
    assert last == "[DONE]" or "error" in json.loads(last), payloads[-2:]
    (r,) = answer
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "service_unavailable"
    assert "shutting down" in r.json()["error"]["message"]
