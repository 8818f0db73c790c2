"""The full metric set after real traffic: names in the Prometheus convention, the labels docs/deployment.md documents."""

from __future__ import annotations

import signal

import httpx
from conftest import models_toml
from prometheus_client.parser import text_string_to_metric_families
from streams import long_completion, start_streams, wait_for


def _scrape(base_url: str) -> dict[str, list]:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _labels(samples: list, suffix: str = "") -> list[dict]:
    return [s.labels for s in samples if s.name.endswith(suffix)]


def test_metric_names_and_labels_after_traffic(start_server):
    srv = start_server(models_toml())
    base = srv.base_url
    r = httpx.post(base + "/v1/chat/completions", timeout=60,
                   json={"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert r.status_code == 200
    [reader] = start_streams(base + "/v1/completions", [long_completion(max_tokens=6)])
    reader.join(60)
    assert reader.done
    assert httpx.post(base + "/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _scrape(base).get("nomoat_config_reloads"), what="reload counted")

    m = _scrape(base)
    # Counters (the parser strips _total from family names) with model/adapter/endpoint/status.
    requests = _labels(m["nomoat_requests"], "_total")
    assert {"model": "smollm2-135m", "adapter": "", "endpoint": "/v1/chat/completions", "status": "200"} in requests
    assert {"model": "smollm2-135m", "adapter": "", "endpoint": "/v1/completions", "status": "200"} in requests
    assert {"model": "", "adapter": "", "endpoint": "/v1/completions", "status": "404"} in requests
    for name in ("nomoat_prompt_tokens", "nomoat_prompt_cached_tokens", "nomoat_completion_tokens"):
        assert _labels(m[name], "_total") == [{"model": "smollm2-135m", "adapter": ""}], name
    completion = next(s.value for s in m["nomoat_completion_tokens"] if s.name.endswith("_total"))
    assert completion >= 7  # 1..4 chat tokens + 6 streamed
    # Histograms with units in their names.
    for name in ("nomoat_time_to_first_token_seconds", "nomoat_inter_token_latency_seconds"):
        counts = [s for s in m[name] if s.name.endswith("_count")]
        assert counts and counts[0].labels == {"model": "smollm2-135m", "adapter": ""} and counts[0].value >= 1, name
    gaps = next(s.value for s in m["nomoat_inter_token_latency_seconds"] if s.name.endswith("_count"))
    assert gaps >= 5  # the stream's 6 tokens give at least 5 gaps
    durations = _labels(m["nomoat_request_duration_seconds"], "_count")
    assert {"model": "smollm2-135m", "adapter": "", "endpoint": "/v1/completions"} in durations
    loads = [s for s in m["nomoat_model_load_seconds"] if s.name.endswith("_count")]
    assert loads[0].labels == {"model": "smollm2-135m"} and loads[0].value == 1
    assert "nomoat_adapter_load_seconds" in m
    assert [s.labels for s in m["nomoat_config_reloads"] if s.name.endswith("_total")] == [{"result": "ok"}]
    # Gauges read at scrape time.
    assert m["nomoat_requests_in_flight"][0].value >= 1  # this scrape
    assert _labels(m["nomoat_queue_depth"]) == [{"model": "smollm2-135m"}]
    assert _labels(m["nomoat_active_sequences"]) == [{"model": "smollm2-135m"}]
    assert m["nomoat_models_loaded"][0].value == 1
    # Process and platform metrics on the app's own registry.
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds", "python_info"):
        assert name in m, name
    # vllm: names are the gateway metrics (server/gateway_metrics.py), on purpose under vLLM's names.
    assert all(name.startswith(("nomoat_", "process_", "python_", "vllm:")) for name in m), sorted(m)
