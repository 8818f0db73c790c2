"""Residency on fake engines: load on demand, one shared load, keep_alive, LRU eviction under a budget,
busy models never unloaded, failed loads, the lifecycle API and reloads. The real model: test_lifecycle.py."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.fake_engine import FakeEngine
from support.gguf_files import Array, V, tiny_model
from support.inprocess import FakeServer, fake_registry

from nomoat.config import ModelConfig, ModelsFile, embedded_model_path
from nomoat.errors import ConfigError
from nomoat.quantities import parse_duration, parse_size
from nomoat.residency import manager as residency_module
from nomoat.residency.footprint import estimate
from nomoat.residency.ps import render
from nomoat.settings import Settings

PATH = str(embedded_model_path())
FOOTPRINT = estimate(ModelConfig(name="x", path=PATH)).total()


def models(*names: str, pinned: tuple[str, ...] = (), **per_model: dict[str, Any]) -> ModelsFile:
    return ModelsFile(models=[
        ModelConfig(name=n, path=PATH, load="startup" if n in pinned else "on_demand", **per_model.get(n, {}))
        for n in names])


class Loader:
    """Counts loads; `gate` holds them until set; names in `fail` fail as llama.cpp refusing the file."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.opening = threading.Event()  # set once a load has begun opening its model
        self.gate: threading.Event | None = None
        self.fail: set[str] = set()

    def __call__(self, config: ModelConfig) -> FakeEngine:
        self.loads.append(config.name)
        self.opening.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if config.name in self.fail:
            raise ConfigError(f"{config.path}: llama.cpp could not load this file as a GGUF model")
        return FakeEngine(config.name)


@pytest.fixture()
def loader() -> Loader:
    return Loader()


@pytest.fixture()
def serve(fake_factory: Callable[..., FakeServer], loader: Loader) -> Callable[..., FakeServer]:
    def start(model_set: ModelsFile, **settings: Any) -> FakeServer:
        return fake_factory(models=model_set, load_model=loader, **settings)
    return start


def chat(srv: FakeServer, model: str, **extra: Any) -> Any:
    return srv.client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra})


def cards(srv: FakeServer, headers: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    r = srv.client.get("/models", headers=headers)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["data"]}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """call()'s answer, which must come within `seconds` (it runs in a thread: a call that hangs fails the test)."""
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert answer, f"no answer within {seconds}s"
    return answer[0]


def held_stream(srv: FakeServer, model: str) -> tuple[FakeEngine, threading.Thread, list[Any]]:
    """A stream on `model` that holds after its first token until `engine.hold` is set."""
    assert chat(srv, model).status_code == 200
    engine = srv.registry.engines()[model]
    assert isinstance(engine, FakeEngine)
    engine.hold = threading.Event()
    answers: list[Any] = []
    stream = threading.Thread(target=lambda: answers.append(chat(srv, model, stream=True, max_tokens=8)))
    stream.start()
    wait_until(lambda: engine.outstanding == 1, f"{model}'s stream is running")
    return engine, stream, answers


def test_durations_and_sizes_parse_as_ollama_and_settings_write_them():
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400 and parse_duration(0) == 0
    assert parse_duration("250ms") == 0.25 and parse_duration(-1) == parse_duration("-5m") == float("inf")
    assert parse_size("12GiB") == 12 * 2**30 and parse_size("1.5MB") == 1_500_000 and parse_size("50%", 1000) == 500
    for bad in ("5x", "", "m5", "1m x"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    for bad in ("12 parsecs", "-1GiB", "150%"):
        with pytest.raises(ValueError):
            parse_size(bad, 1000)
    with pytest.raises(ConfigError, match="keep_alive"):
        Settings.load({}, {"keep_alive": "soon"}, "models.toml: server")
    with pytest.raises(ConfigError, match="memory_budget"):
        Settings.load({}, {"memory_budget": "lots"}, "models.toml: server")
    with pytest.raises(ValueError, match="not a duration"):
        ModelConfig(name="a", keep_alive="5 minutes")


def test_models_are_listed_unloaded_and_load_on_their_first_request(serve, loader):
    srv = serve(models("a", "b"))
    listed = cards(srv)
    assert {listed[m]["status"] for m in ("a", "b")} == {"unloaded"} and loader.loads == []
    assert listed["a"]["memory_bytes"] == FOOTPRINT and listed["a"]["pinned"] is False
    assert srv.client.get("/health").json() == {"status": "ok"}, "ready: no model is loaded at startup"
    r = chat(srv, "a")
    assert r.status_code == 200, r.text
    listed = cards(srv)
    assert listed["a"]["status"] == "loaded" and listed["b"]["status"] == "unloaded" and loader.loads == ["a"]
    assert listed["a"]["loaded_at"] <= time.time() and listed["a"]["expires_at"] > time.time() + 200  # 5m default
    assert srv.client.get("/v1/models/a").json()["status"] == "loaded"


def test_concurrent_requests_share_one_load(fake_factory, loader, monkeypatch):
    registry = fake_registry(Settings(), monkeypatch, models("a"), loader)
    loader.gate = threading.Event()

    async def scenario() -> list[str]:
        waiting = [asyncio.ensure_future(registry.resolve("a")) for _ in range(5)]
        # The load's open starts after all five resolves took their first step: each waits on it by then.
        assert await asyncio.to_thread(loader.opening.wait, 30)
        assert registry.residency.residents["a"].waiting == 5 and registry.residency.residents["a"].status == "loading"
        loader.gate.set()  # type: ignore[union-attr]
        targets = await asyncio.gather(*waiting)
        for target in targets:
            target.lease.release()
        return [t.base_id for t in targets]

    assert asyncio.run(scenario()) == ["a"] * 5 and loader.loads == ["a"]
    registry.close()


def test_keep_alive_zero_unloads_once_the_answer_is_sent(serve, loader):
    srv = serve(models("a", "b"))
    assert chat(srv, "a", keep_alive=0).status_code == 200
    wait_until(lambda: cards(srv)["a"]["status"] == "unloaded", "a unloaded after its answer")
    assert chat(srv, "a").status_code == 200 and loader.loads == ["a", "a"]
    assert cards(srv)["a"]["status"] == "loaded", "the next request's keep_alive (the default) holds it"


def test_keep_alive_comes_from_the_request_then_the_model_then_the_server(serve):
    srv = serve(models("a", "b", "c", b={"keep_alive": "1h"}), keep_alive="2m")
    for model in ("a", "b"):
        assert chat(srv, model).status_code == 200
    assert chat(srv, "c", keep_alive="-1").status_code == 200
    now, listed = time.time(), cards(srv)
    assert now + 100 < listed["a"]["expires_at"] <= now + 121
    assert now + 3500 < listed["b"]["expires_at"] <= now + 3601
    assert listed["c"]["expires_at"] is None and listed["c"]["status"] == "loaded"
    bad = chat(srv, "a", keep_alive="soon")
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]["message"]


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
])
def test_every_loading_endpoint_takes_keep_alive(serve, path, body):
    srv = serve(models("a", "b"))
    r = srv.client.post(path, json={"model": "a", "keep_alive": 0, **body})
    assert r.status_code == 200, r.text
    wait_until(lambda: cards(srv)["a"]["status"] == "unloaded", f"{path}: keep_alive 0 unloads")
    assert srv.client.post(path, json={"model": "a", "keep_alive": [], **body}).status_code == 400


def test_idle_models_are_evicted_least_recently_used_first(serve, loader):
    srv = serve(models("a", "b", "c"), memory_budget=int(FOOTPRINT * 2.5))
    for model in ("a", "b", "a", "c"):  # b is the least recently used when c needs room
        assert chat(srv, model).status_code == 200
    assert {m: c["status"] for m, c in cards(srv).items()} == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    assert srv.registry.residency.used() <= srv.registry.residency.budget
    samples = {(s.name, tuple(s.labels.values())): s.value
               for family in text_string_to_metric_families(srv.client.get("/metrics").text) for s in family.samples}
    assert samples[("nomoat_model_evictions_total", ("b",))] == 1
    assert samples[("nomoat_memory_budget_bytes", ())] == int(FOOTPRINT * 2.5)
    assert samples[("nomoat_model_memory_estimate_bytes", ("a",))] == FOOTPRINT
    assert samples[("nomoat_models_loaded", ())] == 2


def test_a_one_model_limit_alternates_without_failing_a_request(serve, loader):
    srv = serve(models("a", "b"), max_loaded_models=1)
    for model in ("a", "b") * 4:
        r = chat(srv, model)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
    assert loader.loads == ["a", "b"] * 4


def test_a_running_stream_is_never_cut_by_a_load_that_needs_its_memory(serve, monkeypatch):
    monkeypatch.setattr(residency_module, "EVICT_WAIT_SECONDS", 0.5)
    srv = serve(models("a", "b", "c"), memory_budget=int(FOOTPRINT * 1.5))
    engine, stream, answers = held_stream(srv, "a")
    refused = chat(srv, "b")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_busy", refused.text
    assert refused.headers["retry-after"] and "a" in refused.json()["error"]["message"]
    # B waits while A streams, then loads once A's stream is done.
    monkeypatch.setattr(residency_module, "EVICT_WAIT_SECONDS", 30.0)
    waiting: list[Any] = []
    second = threading.Thread(target=lambda: waiting.append(chat(srv, "b")))
    second.start()
    wait_until(lambda: cards(srv)["b"]["status"] == "loading", "b waits for memory")
    # ... holding nothing while it opens: other loads and unloads go on meanwhile.
    assert srv.client.post("/models/unload", json={"model": "c"}).status_code == 200
    assert cards(srv)["b"]["status"] == "loading"
    assert engine.hold is not None
    engine.hold.set()
    stream.join(30)
    second.join(30)
    assert answers[0].status_code == 200 and answers[0].text.rstrip().endswith("data: [DONE]")
    assert waiting[0].status_code == 200 and engine.aborted is None
    assert {m: c["status"] for m, c in cards(srv).items()} == {"a": "unloaded", "b": "loaded", "c": "unloaded"}


def test_a_model_larger_than_the_budget_is_a_400_naming_both(serve):
    srv = serve(models("a"), memory_budget="1MiB")
    r = chat(srv, "a")
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_too_large", r.text
    assert "memory_budget is 1.0 MiB" in r.json()["error"]["message"] and "MiB" in r.json()["error"]["message"]
    assert cards(srv)["a"]["status"] == "unloaded"


def test_pinned_models_are_loaded_at_startup_and_never_evicted(serve, loader):
    srv = serve(models("pinned", "b", pinned=("pinned",)), memory_budget=int(FOOTPRINT * 1.5))
    assert loader.loads == ["pinned"] and cards(srv)["pinned"]["pinned"] is True
    assert cards(srv)["pinned"]["expires_at"] is None
    r = chat(srv, "b")
    assert r.status_code == 400 and "pinned models (pinned)" in r.json()["error"]["message"], r.text
    assert cards(srv)["pinned"]["status"] == "loaded"


def test_a_failed_load_is_503_and_stays_failed_until_its_file_changes(serve, loader, tmp_path):
    broken = tiny_model().write(tmp_path / "broken.gguf")  # a header that passes: llama.cpp (the loader) refuses it
    srv = serve(ModelsFile(models=[ModelConfig(name="bad", path=str(broken)), ModelConfig(name="good", path=PATH)]))
    loader.fail.add("bad")
    first = chat(srv, "bad")
    assert first.status_code == 503 and first.json()["error"]["code"] == "model_load_failed", first.text
    assert "could not load" in first.json()["error"]["message"]
    card = cards(srv)["bad"]
    assert card["status"] == "failed" and "could not load" in card["error"]
    assert chat(srv, "bad").status_code == 503 and loader.loads == ["bad"], "not retried while unchanged"
    assert chat(srv, "good").status_code == 200, "the others serve"
    loader.fail.clear()
    os.utime(broken, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert chat(srv, "bad").status_code == 200 and loader.loads == ["bad", "good", "bad"]


@pytest.mark.parametrize("first", ["list", "chat"])
@pytest.mark.parametrize("override, reason", [
    ({"block_count": (V.STRING, "abc")}, "llama.block_count is 'abc', not an integer"),
    ({"attention__head_count": (V.FLOAT32, math.nan)}, "llama.attention.head_count is nan, not an integer"),
    # 2**28 layers: the estimate built a list per claimed layer (164 s, +4 GB). Refused before any is built.
    ({"block_count": (V.UINT32, 2**28)}, "llama.block_count is 268435456, outside 0..3"),
    ({"attention__head_count_kv": (V.ARRAY, Array(V.UINT32, [1] * 5))}, "holds 5 values, one per layer"),
])
def test_a_malformed_header_fails_its_model_and_nothing_else(serve, loader, tmp_path, first, override, reason):
    bad = tiny_model(**override).write(tmp_path / "bad.gguf")
    srv = serve(ModelsFile(models=[ModelConfig(name="good", path=PATH), ModelConfig(name="bad", path=str(bad))]))
    answers = [chat(srv, "bad")] if first == "chat" else []
    listed = cards(srv)  # a 500 for every listing, before
    assert listed["bad"]["status"] == "failed" and reason in listed["bad"]["error"], listed["bad"]
    assert listed["good"]["status"] == "unloaded" and listed["good"]["memory_bytes"] == FOOTPRINT
    answers.append(chat(srv, "bad"))
    for r in answers:
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed", r.text
        assert reason in r.json()["error"]["message"] and "'bad' failed to load" in r.json()["error"]["message"]
    assert loader.loads == [], "a refused header never reaches llama.cpp"
    assert chat(srv, "good").status_code == 200, "the others serve"
    assert cards(srv)["good"]["status"] == "loaded"


def test_max_loaded_models_reached_by_pinned_models_says_so(serve, loader):
    srv = serve(models("pinned", "b", pinned=("pinned",)), max_loaded_models=1)
    r = chat(srv, "b")
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "max_loaded_models_reached", r.text
    assert error["type"] == "invalid_request_error" and error["param"] == "model"
    assert "max_loaded_models (1) is reached by pinned models (pinned)" in error["message"]
    assert "memory_budget" not in error["message"], "the budget has room: it is not the reason"
    assert loader.loads == ["pinned"] and cards(srv)["b"]["status"] == "unloaded"


def test_lifecycle_api_loads_and_unloads_with_the_admin_key(serve, loader):
    srv = serve(models("a", "b"), api_key="user", admin_key="admin")
    user, admin = {"Authorization": "Bearer user"}, {"Authorization": "Bearer admin"}
    assert srv.client.post("/models/load", json={"model": "a"}, headers=user).status_code == 403
    r = srv.client.post("/models/load", json={"model": "a", "keep_alive": "1h"}, headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "loaded"
    assert cards(srv, user)["a"]["expires_at"] > time.time() + 3500, "its keep_alive counts from the end of the request"
    assert srv.client.post("/models/load", json={"model": "nope"}, headers=admin).status_code == 404
    assert srv.client.post("/models/load", json={}, headers=admin).status_code == 400
    listed = srv.client.get("/v1/models", headers=user).json()["data"]
    assert {m["id"]: m["status"] for m in listed} == {"a": "loaded", "b": "unloaded"}
    r = srv.client.post("/models/unload", json={"model": "a"}, headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "unloaded" and loader.loads == ["a"]


def test_unloading_a_busy_model_waits_until_it_is_idle(serve):
    srv = serve(models("a", "b"))
    engine, stream, answers = held_stream(srv, "a")
    r = srv.client.post("/models/unload", json={"model": "a"})
    assert r.status_code == 202 and r.json()["status"] == "loaded"
    assert engine.hold is not None
    engine.hold.set()
    stream.join(30)
    assert answers[0].text.rstrip().endswith("data: [DONE]")
    wait_until(lambda: cards(srv)["a"]["status"] == "unloaded", "a unloaded once idle")


def test_unloading_a_loading_model_lets_the_load_finish_then_unloads_it(serve, loader):
    srv = serve(models("a", "b"))
    loader.gate = threading.Event()
    answers: list[Any] = []
    load = threading.Thread(target=lambda: answers.append(srv.client.post("/models/load", json={"model": "a"})))
    load.start()
    wait_until(lambda: loader.loads == ["a"], "a's load started")
    r = srv.client.post("/models/unload", json={"model": "a"})
    assert r.status_code == 202 and r.json()["status"] == "loading", r.text
    loader.gate.set()
    load.join(30)
    assert answers[0].status_code == 200, answers[0].text
    wait_until(lambda: cards(srv)["a"]["status"] == "unloaded", "a unloaded once its load was answered")
    assert loader.loads == ["a"]


def test_reload_changes_unloaded_models_without_loading_them(fake_factory, loader, monkeypatch):
    registry = fake_registry(Settings(), monkeypatch, models("a", "b", "c"), loader)

    async def scenario() -> None:
        (await registry.resolve("a")).lease.release()
        changed = models("a", "b", "c", "d", pinned=("d",), a={"n_ctx": 512}, b={"n_ctx": 512},
                         c={"aliases": ["see"]})
        result = await registry.apply(changed, drain_timeout=1)
        assert result.loaded == ["a", "d"] and result.unchanged == ["c"] and result.reconfigured == ["b"]
        states = {n: r.status for n, r in registry.residency.residents.items()}
        assert states == {"a": "loaded", "b": "unloaded", "c": "unloaded", "d": "loaded"}
        assert registry.residency.residents["b"].config.n_ctx == 512 and registry.is_model_id("see")
        await registry.aclose()

    asyncio.run(scenario())
    assert loader.loads == ["a", "a", "d"]


def test_a_reload_whose_new_models_do_not_fit_the_budget_changes_nothing(fake_factory, loader, monkeypatch):
    registry = fake_registry(Settings(memory_budget=int(FOOTPRINT * 1.5)), monkeypatch, models("a", "b"), loader)

    async def scenario() -> None:
        (await registry.resolve("a")).lease.release()
        with pytest.raises(ConfigError, match=r"loading d needs an estimated .* memory_budget .* left"):
            await registry.apply(models("a", "b", "d", pinned=("d",)), drain_timeout=1)
        assert {n: r.status for n, r in registry.residency.residents.items()} == {"a": "loaded", "b": "unloaded"}
        await registry.aclose()

    asyncio.run(scenario())
    assert loader.loads == ["a"]


def test_ps_renders_the_loaded_models_and_when_each_unloads(serve):
    srv = serve(models("a", "b", "c", pinned=("c",)))
    assert chat(srv, "a").status_code == 200
    listed = list(cards(srv).values())
    now = time.time()
    table = render(listed, now).splitlines()
    assert table[0].split() == ["MODEL", "STATUS", "MEMORY", "CACHE", "ADAPTERS", "UNLOADS"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"a", "c"}, "unloaded models are not listed"
    assert "in 4m" in rows["a"] and "MiB" in rows["a"] and "never (pinned)" in rows["c"]
    refused = srv.client.post("/models/unload", json={"model": "c"})
    assert refused.status_code == 409 and "pinned" in refused.json()["error"]["message"]


def test_the_estimate_splits_ram_and_gpu_by_offloaded_layers():
    cpu_only = estimate(ModelConfig(name="x", path=PATH))
    half = estimate(ModelConfig(name="x", path=PATH, n_gpu_layers=15))  # SmolLM2-135M has 30 layers
    full = estimate(ModelConfig(name="x", path=PATH, n_gpu_layers=-1))
    assert cpu_only.gpu() == 0 and cpu_only.cpu() == cpu_only.total() == FOOTPRINT
    assert half.gpu() == (cpu_only.weights + cpu_only.kv_per_context) // 2
    assert full.cpu() == cpu_only.compute_per_context + cpu_only.prompt_cache and full.total() == FOOTPRINT
    two = estimate(ModelConfig(name="x", path=PATH, parallel=8))
    assert two.kv_per_context == 2 * cpu_only.kv_per_context, "KV grows with n_ctx × parallel"


def test_a_load_that_blocks_holds_up_no_unload_expiry_or_listing(serve, loader):
    """No lock is held across llama.cpp: while one model opens, another unloads (asked to, or idle past its
    keep_alive) and the listing answers."""
    srv = serve(models("a", "b", "c"))
    assert chat(srv, "b").status_code == 200 and chat(srv, "c").status_code == 200
    loader.gate = threading.Event()
    answers: list[Any] = []
    load = threading.Thread(target=lambda: answers.append(chat(srv, "a")))
    load.start()
    try:
        wait_until(lambda: loader.loads[-1:] == ["a"], "a is opening")
        assert within(10, lambda: srv.client.post("/models/unload", json={"model": "c"})).status_code == 200
        assert within(10, lambda: chat(srv, "b", keep_alive=0)).status_code == 200
        wait_until(lambda: within(10, lambda: cards(srv))["b"]["status"] == "unloaded", "b unloaded", timeout=10)
        listed = within(10, lambda: srv.client.get("/v1/models").json())
        status = {m["id"]: m["status"] for m in listed["data"]}
        assert status == {"a": "loading", "b": "unloaded", "c": "unloaded"}
    finally:
        loader.gate.set()
        load.join(30)
    assert answers[0].status_code == 200, answers[0].text


def test_a_reload_whose_open_blocks_holds_up_no_unload_or_listing(fake_factory, loader, monkeypatch):
    """A reload opens its new models holding no lock: a model it removes unloads meanwhile, the listing answers."""
    registry = fake_registry(Settings(), monkeypatch, models("a", "c"), loader)

    async def scenario() -> None:
        (await registry.resolve("c")).lease.release()
        loader.gate = threading.Event()
        reload = asyncio.ensure_future(registry.apply(models("a", "d", pinned=("d",)), drain_timeout=1))
        try:
            await asyncio.to_thread(wait_until, lambda: loader.loads[-1:] == ["d"], "d is opening")
            assert await asyncio.wait_for(registry.residency.unload("c"), 10) is True
            assert {s.id: s.state.status for s in registry.served_ids() if s.state} == {"a": "unloaded",
                                                                                       "c": "unloaded"}
        finally:
            loader.gate.set()
        assert (await reload).loaded == ["d"]
        assert {s.id: s.state.status for s in registry.served_ids() if s.state} == {"a": "unloaded", "d": "loaded"}
        await registry.aclose()

    asyncio.run(scenario())
