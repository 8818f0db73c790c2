"""/health, /metrics and the log: what an operator scrapes and reads matches what clients were served."""

from __future__ import annotations

import re

import httpx
from wire import MODEL, NO_EOS, chat_body, completion_body, metric, post_ok, stream, wait_until

CHAT = "/v1/chat/completions"


def scrape(client: httpx.Client) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_health_is_ok(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_a_request_moves_every_counter_by_what_it_served(client):
    labels = {"model": MODEL, "endpoint": "/v1/chat/completions"}
    before = scrape(client)
    answer = post_ok(client, CHAT, chat_body(max_tokens=5, logit_bias=NO_EOS))
    after = scrape(client)

    def delta(sample: str, **extra: str) -> float:
        return (metric(after, sample, **extra) or 0.0) - (metric(before, sample, **extra) or 0.0)

    assert delta("nomoat_requests_total", status="200", **labels) == 1
    assert delta("nomoat_prompt_tokens_total", model=MODEL) == answer["usage"]["prompt_tokens"]
    assert delta("nomoat_completion_tokens_total", model=MODEL) == 5
    assert delta("nomoat_time_to_first_token_seconds_count", model=MODEL) == 1
    assert delta("nomoat_request_duration_seconds_count", **labels) == 1
    assert delta("nomoat_request_duration_seconds_sum", **labels) > 0
    ttft_inf = metric(after, "nomoat_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf")
    assert ttft_inf == metric(after, "nomoat_time_to_first_token_seconds_count", model=MODEL)
    # The scrapes around the request are not requests to the API.
    assert delta("nomoat_requests_total", model="", endpoint="other", status="200") == 0


def test_streams_and_completions_are_counted_by_endpoint(client):
    before = scrape(client)
    chunks = stream(client, CHAT, chat_body(max_tokens=3, logit_bias=NO_EOS, stream_options={"include_usage": True}))
    post_ok(client, "/v1/completions", completion_body(max_tokens=2, logit_bias=NO_EOS))
    after = scrape(client)
    for endpoint in ("/v1/chat/completions", "/v1/completions"):
        labels = {"model": MODEL, "endpoint": endpoint, "status": "200"}
        assert metric(after, "nomoat_requests_total", **labels) - (metric(before, "nomoat_requests_total", **labels) or 0) == 1
    completion = (metric(after, "nomoat_completion_tokens_total", model=MODEL)
                  - metric(before, "nomoat_completion_tokens_total", model=MODEL))
    assert completion == chunks[-1]["usage"]["completion_tokens"] + 2 == 5


def test_errors_are_counted_with_their_status(fake):
    """Labels, not the model (in process, the fake engine: its context is longer, "hello " * 3000 still overflows it)."""
    client = fake.client

    def count(model: str, status: str) -> float:
        return metric(scrape(client), "nomoat_requests_total", model=model, endpoint=CHAT, status=status) or 0

    # Refused after the model was resolved: counted under the model.
    before = count(MODEL, "400")
    assert client.post(CHAT, json=chat_body("hello " * 3000, max_tokens=2)).status_code == 400
    assert count(MODEL, "400") == before + 1
    # Refused before any model was resolved (invalid body, unknown id): counted under model="",
    # so a client cannot create one series per made-up model name.
    before_400, before_404 = count("", "400"), count("", "404")
    assert client.post(CHAT, json=chat_body(max_tokens=0)).status_code == 400
    assert client.post(CHAT, json=chat_body(model="nope")).status_code == 404
    assert (count("", "400"), count("", "404")) == (before_400 + 1, before_404 + 1)
    assert 'model="nope"' not in scrape(client)


def test_in_flight_gauge_counts_open_requests(client, base_url):
    assert metric(scrape(client), "nomoat_requests_in_flight") == 1  # the scrape itself
    with httpx.Client(base_url=base_url, timeout=60) as other, \
            other.stream("POST", CHAT, json=chat_body(max_tokens=400, logit_bias=NO_EOS, stream=True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        infl = metric(scrape(client), "nomoat_requests_in_flight")
        assert infl == 2, [line[:300] for line in lines if line][-5:]
        assert wait_until(lambda: metric(scrape(client), "nomoat_active_sequences", model=MODEL) == 1)
    assert wait_until(lambda: metric(scrape(client), "nomoat_requests_in_flight") == 1)
    assert wait_until(lambda: metric(scrape(client), "nomoat_active_sequences", model=MODEL) == 0)


def test_log_has_a_startup_line_and_one_line_per_request(client, server):
    answer = post_ok(client, CHAT, chat_body(max_tokens=3, logit_bias=NO_EOS))
    log = server.log()
    assert re.search(rf"loaded model {MODEL} from \S+\.gguf in \d+\.\d+s", log)
    assert re.search(rf"{MODEL}.* on http://127\.0\.0\.1:{server.port}", log)
    wanted = ["POST /v1/chat/completions", f"model={MODEL}", "status=200",
              f"prompt_tokens={answer['usage']['prompt_tokens']}", "completion_tokens=3", "duration"]

    def logged() -> bool:
        return any(all(w in line for w in wanted) for line in server.log().splitlines())

    assert wait_until(logged), server.log()[-2000:]
