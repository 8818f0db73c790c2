"""Adapter sets running at once get a llama.cpp context each: no switching, no cross-talk."""

from __future__ import annotations

import concurrent.futures
import os
import re

import httpx
import pytest
from conftest import models_toml
from lora_factory import write_lora

PROMPT = "Write a long story about a lighthouse keeper."


def story(url: str, model: str) -> str:
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 48,
        "logit_bias": {"0": -100, "2": -100, "4": -100},
    })
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf'^{name}\{{model="smollm2-135m"\}} ([0-9.e+]+)$', text, re.M)
    assert match, name
    return float(match.group(1))


def together(url: str, models: list[str]) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        return list(pool.map(lambda m: story(url, m), models))


def agreement(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


@pytest.fixture()
def two_adapters(tmp_path):
    a = write_lora(tmp_path / "a.gguf", seed=21, std=0.12)
    b = write_lora(tmp_path / "b.gguf", seed=22, std=0.12)
    return f'[[adapters]]\nname = "a"\npath = "{a}"\n[[adapters]]\nname = "b"\npath = "{b}"\n'


def test_concurrent_sets_run_in_their_own_contexts_without_switching(start_server, two_adapters):
    server = start_server(models_toml(extra=two_adapters))
    url = server.base_url
    oracle = {m: story(url, m) for m in ("a", "b")}
    assert agreement(oracle["a"], oracle["b"]) < 20
    first = together(url, ["a", "b"])  # opens the second context
    switches = metric(url, "nomoat_adapter_switches_total")
    second = together(url, ["a", "b"])
    # Each set found the context that already had it applied: not one switch more.
    assert metric(url, "nomoat_adapter_switches_total") == switches
    assert metric(url, "nomoat_engine_contexts") == 2
    for outputs in (first, second):
        for model, out, other in (("a", outputs[0], "b"), ("b", outputs[1], "a")):
            assert agreement(out, oracle[model]) > agreement(out, oracle[other]) + 20, (model, out, oracle)


def test_one_context_switches_between_sets_and_still_keeps_them_apart(start_server, two_adapters):
    server = start_server(models_toml(extra="adapter_contexts = 1\n" + two_adapters))
    url = server.base_url
    oracle = {m: story(url, m) for m in ("a", "b")}
    before = metric(url, "nomoat_adapter_switches_total")
    outputs = together(url, ["a", "b"])
    assert metric(url, "nomoat_adapter_switches_total") > before + 10  # both sets every step
    assert metric(url, "nomoat_engine_contexts") == 1
    for model, out, other in (("a", outputs[0], "b"), ("b", outputs[1], "a")):
        assert agreement(out, oracle[model]) > agreement(out, oracle[other]) + 20, (model, out, oracle)


def test_batch_size_gauge_and_step_counter_are_exported(client):
    client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
    text = client.get("/metrics").text
    assert re.search(r'^nomoat_batch_size\{model="smollm2-135m"\} [0-9.]+$', text, re.M)
    steps = re.search(r'^nomoat_engine_steps_total\{model="smollm2-135m"\} ([0-9.e+]+)$', text, re.M)
    assert steps and float(steps.group(1)) >= 4
