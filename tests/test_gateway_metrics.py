"""Metrics under vLLM's names (server/gateway_metrics.py), as an inference gateway reads them to route."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, models_toml
from lora_factory import write_lora
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.process import NO_EOS

from nomoat.engine.generation import Occupancy
from nomoat.gateway_metrics import GatewayCollector


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the exposition, by name, parsed as a gateway parses it."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


class _Engine:
    def __init__(self, occupancy: Occupancy) -> None:
        self._occupancy = occupancy

    def occupancy(self) -> Occupancy:
        return self._occupancy


def scrape(engines: dict[str, _Engine]) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(lambda: engines))
    return samples(generate_latest(registry).decode())


def test_queue_kv_and_adapters_per_model_as_vllm_names_them():
    got = scrape({
        "m1": _Engine(Occupancy(2, 3, 512, 2048, frozenset({"sql", "polite"}), frozenset({"tone"}), 3)),
        "m2": _Engine(Occupancy(0, 0, 0, 4096, frozenset(), frozenset(), 2)),
    })
    running = {labels["model_name"]: value for labels, value in got["vllm:num_requests_running"]}
    waiting = {labels["model_name"]: value for labels, value in got["vllm:num_requests_waiting"]}
    kv = {labels["model_name"]: value for labels, value in got["vllm:kv_cache_usage_perc"]}
    assert running == {"m1": 2, "m2": 0} and waiting == {"m1": 3, "m2": 0}
    assert kv == {"m1": 0.25, "m2": 0.0}  # a fraction, as vLLM's: 1 means 100 percent
    [(labels, stamp)] = got["vllm:lora_requests_info"]
    assert labels == {"max_lora": "3", "running_lora_adapters": "polite,sql", "waiting_lora_adapters": "tone"}
    assert stamp > 1.7e9  # the time of the scrape, which a gateway uses to pick the newest sample


def test_no_model_loaded_still_exports_the_adapter_info():
    got = scrape({})
    [(labels, _)] = got["vllm:lora_requests_info"]
    assert labels == {"max_lora": "0", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert "vllm:num_requests_running" not in got


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    adapters = tmp_path_factory.mktemp("gateway-adapters")
    extra = f'[[adapters]]\nname = "tone"\npath = "{write_lora(Path(adapters) / "tone.gguf", seed=7)}"\n'
    proc = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("gateway")).wait_ready()
    yield proc
    proc.close()


def test_a_running_stream_shows_in_the_gateway_metrics_with_its_adapter(server):
    url = server.base_url

    def metrics() -> dict[str, list[tuple[dict[str, str], float]]]:
        return samples(httpx.get(url + "/metrics").text)

    idle = metrics()
    assert [v for _, v in idle["vllm:num_requests_running"]] == [0]
    assert [labels["running_lora_adapters"] for labels, _ in idle["vllm:lora_requests_info"]] == [""]
    body = {"model": "tone", "messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 1500,
            "logit_bias": NO_EOS, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        # The first chunk may only carry the role, sent before the prompt is evaluated: wait for a token.
        chunks = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
        next(c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content"))
        busy = metrics()  # the stream runs on: 1500 tokens are far from done
    assert [v for _, v in busy["vllm:num_requests_running"]] == [1]
    [(labels, _)] = busy["vllm:lora_requests_info"]
    assert labels["running_lora_adapters"] == "tone" and labels["waiting_lora_adapters"] == ""
    assert int(labels["max_lora"]) >= 1
    [(_, kv)] = busy["vllm:kv_cache_usage_perc"]
    assert 0 < kv < 1
