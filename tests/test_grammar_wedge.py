"""Issue #28's wedge through real servers: the ambiguous grammar that froze a model for every client is a 400
while ordinary chats on the same model are served, its schema twin too; and a stopped server exits even
while a worker thread is inside a call that does not return."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from conftest import models_toml
from support.process import NO_EOS
from test_grammar_stacks import WEDGE
from wire import assert_error, chat_body, metric, tokenize, wait_until

from nomoat.engine.grammar_guard import MAX_LIVE_STACKS

X = tokenize("x")[0]


def _post(base_url: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=120.0) as c:
        return c.post("/v1/chat/completions", json=body)


def test_the_issues_wedge_is_a_400_while_the_model_keeps_serving(base_url: str) -> None:
    wedge = chat_body("hi", grammar=WEDGE, logit_bias={str(X): 100}, max_tokens=30)
    ordinary = chat_body("Hi", max_tokens=8, logit_bias=NO_EOS)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: _post(base_url, body), [wedge, ordinary, {**wedge, "stream": True}]))
    for refused in (answers[0], answers[2]):
        error = assert_error(refused, 400, code="invalid_grammar", param="grammar")
        assert "ambiguous" in error["message"] and f"limit of {MAX_LIVE_STACKS} live parse stacks" in error["message"]
    assert answers[1].status_code == 200, answers[1].text
    assert answers[1].json()["usage"]["completion_tokens"] == 8
    assert httpx.get(base_url + "/health", timeout=30).status_code == 200


def test_a_schema_whose_grammar_is_ambiguous_is_a_400(client: httpx.Client) -> None:
    schema = {"anyOf": [{"type": "array", "items": {"$ref": "#"}},
                        {"type": "array", "items": {"$ref": "#"}, "maxItems": 1}]}
    body = chat_body("hi", max_tokens=8, response_format={"type": "json_schema",
                                                          "json_schema": {"name": "n", "schema": schema}})
    error = assert_error(client.post("/v1/chat/completions", json=body), 400, code="unsupported_schema")
    assert "ambiguous" in error["message"]


# Renders forever (10^10 loop turns) for the message "stall", like ChatML for any other: a worker thread
# that never returns, as llama.cpp parsing a pathological grammar once did in the same pool.
_STALLING_TEMPLATE = (
    "{% if messages[0]['content'] == 'stall' %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + "
    "m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def test_sigterm_stops_the_process_while_a_worker_is_stuck(start_server: Any) -> None:
    config = models_toml(parallel=1, server="shutdown_grace_seconds = 1",
                         extra=f"chat_template = '''{_STALLING_TEMPLATE}'''")
    srv = start_server(config)
    answers: list[Any] = []
    stuck = threading.Thread(target=lambda: answers.append(_safe_post(srv.base_url, chat_body("stall", max_tokens=4))),
                             daemon=True)
    stuck.start()
    assert wait_until(lambda: (metric(httpx.get(srv.base_url + "/metrics", timeout=30).text,
                                      "vllm:num_requests_waiting") or 0) >= 1, timeout=120)
    srv.proc.send_signal(signal.SIGTERM)
    # Generous: the grace period (1 s), uvicorn's margin (3 s) and the exit bound (5 s) are all it waits.
    assert srv.proc.wait(120) == 1
    assert "exiting without waiting for it" in srv.log()


def _safe_post(base_url: str, body: dict[str, Any]) -> Any:
    try:
        return _post(base_url, body)
    except httpx.HTTPError as exc:  # the server went away under it
        return exc
