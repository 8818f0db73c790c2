"""Residency on the real model over HTTP: two models (the embedded file and a copy) under a budget that holds
one, loaded on demand, unloaded after keep_alive 0, switched without failing a request, never under a
running stream; a corrupt GGUF fails alone; adapters outlive their base; the estimate against RSS."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import model_path
from lora_factory import write_lora
from streams import long_completion, start_streams, wait_for
from support.process import THREADS, ServerProcess, free_port

from nomoat.models_toml import ModelConfig
from nomoat.residency.footprint import estimate
from nomoat.residency.ps import ps
from nomoat.settings import Settings

N_CTX, PARALLEL = 512, 2
ESTIMATE = estimate(ModelConfig(name="x", path=str(model_path()), n_ctx=N_CTX, parallel=PARALLEL))
BUDGET = int(ESTIMATE.total() * 1.5)  # one model fits, two do not


def _model(name: str, path: Path) -> str:
    return (f'[[models]]\nname = "{name}"\npath = "{path}"\nn_ctx = {N_CTX}\nparallel = {PARALLEL}\n'
            f"n_threads = {THREADS}\n")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("lifecycle")
    copy = shutil.copy(model_path(), root / "copy.gguf")
    (root / "garbage.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    lora = write_lora(root / "lo.gguf", seed=7)
    write_lora(root / "rt.gguf", seed=8)
    config = (f'default_model = "a"\n[server]\nmemory_budget = {BUDGET}\nadapter_dirs = ["{root}"]\n'
              + _model("a", model_path()) + _model("b", Path(copy)) + _model("junk", root / "garbage.gguf")
              + f'[[adapters]]\nname = "lo"\nbase = "a"\npath = "{lora}"\n')
    proc = ServerProcess(config, root).wait_ready()
    yield proc
    proc.close()


def statuses(srv: ServerProcess) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(srv.base_url + "/models", timeout=30).json()["data"]
            if "status" in m and m["id"] == m["root"]}


def chat(srv: ServerProcess, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 3, "temperature": 0,
            **extra}
    return httpx.post(srv.base_url + "/v1/chat/completions", json=body, timeout=120)


def unload_all(srv: ServerProcess) -> None:
    for model in ("a", "b"):
        assert httpx.post(srv.base_url + "/models/unload", json={"model": model}, timeout=60).status_code == 200
    wait_for(lambda: statuses(srv)["a"] == statuses(srv)["b"] == "unloaded", what="both unloaded")


def rss(srv: ServerProcess) -> int:
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_models_load_on_demand_and_alternate_under_a_one_model_budget(srv):
    # junk's header is read for the listing's memory estimate: it is failed before anything asks for it.
    assert statuses(srv) == {"a": "unloaded", "b": "unloaded", "junk": "failed"}
    for model in ("a", "b", "a", "b"):
        r = chat(srv, model)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
        listed = statuses(srv)
        assert listed[model] == "loaded" and listed["b" if model == "a" else "a"] == "unloaded"
    assert "evicted to make room for a" in srv.log()


def test_keep_alive_zero_unloads_once_the_answer_is_sent(srv):
    assert chat(srv, "b", keep_alive=0).status_code == 200
    wait_for(lambda: statuses(srv)["b"] == "unloaded", what="b unloaded after its answer")


def test_a_load_never_cuts_a_running_stream(srv):
    [reader] = start_streams(srv.base_url + "/v1/completions", [long_completion("a", max_tokens=24)])
    r = chat(srv, "b")  # needs a's memory: waits for the stream to end, or gives up with a 503
    assert r.status_code in (200, 503), r.text
    if r.status_code == 503:
        assert r.json()["error"]["code"] == "model_busy" and r.headers["retry-after"]
    reader.join(120)
    assert reader.done and reader.finish_reasons() == ["length"], reader.describe()
    assert chat(srv, "b").status_code == 200


def test_a_corrupt_gguf_fails_alone(srv):
    r = chat(srv, "junk")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed", r.text
    card = next(m for m in httpx.get(srv.base_url + "/v1/models", timeout=30).json()["data"] if m["id"] == "junk")
    assert card["status"] == "failed" and card["error"]
    assert chat(srv, "a").status_code == 200


def test_adapters_outlive_their_base(srv):
    first = chat(srv, "lo")
    assert first.status_code == 200 and first.headers["x-nomoat-adapters"] == "lo@1", first.text
    unload_all(srv)
    listed = httpx.get(srv.base_url + "/v1/adapters", timeout=30).json()["data"]
    assert [a["id"] for a in listed] == ["lo"]
    again = chat(srv, "lo")  # loads its base, opens the adapter on it again
    assert again.status_code == 200 and again.headers["x-nomoat-adapters"] == "lo@1"
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert statuses(srv)["a"] == "loaded"
    # Registered on an unloaded base: checked now, opened when the base loads for a request naming it.
    unload_all(srv)
    root = srv.config.parent
    r = httpx.post(srv.base_url + "/v1/adapters", json={"name": "rt", "path": str(root / "rt.gguf"), "base": "b"},
                   timeout=60)
    assert r.status_code == 201 and statuses(srv)["b"] == "unloaded", r.text
    on_b = chat(srv, "rt")
    assert on_b.status_code == 200 and on_b.headers["x-nomoat-adapters"] == "rt@1", on_b.text
    assert statuses(srv)["b"] == "loaded"


def test_the_estimate_bounds_the_measured_memory(srv):
    unload_all(srv)
    before = rss(srv)
    r = httpx.post(srv.base_url + "/models/load", json={"model": "a"}, timeout=120)
    assert r.status_code == 200 and r.json()["memory_bytes"] == ESTIMATE.total()
    assert chat(srv, "a").status_code == 200
    grown = rss(srv) - before
    # Weights and KV are written at load; the compute buffer is reserved for a full batch of logits
    # and touched only as far as a step needs: the estimate is an upper bound that holds the rest.
    assert 0.8 * (ESTIMATE.weights + ESTIMATE.kv_per_context) <= grown <= ESTIMATE.total() * 1.1, (grown, ESTIMATE)


def test_nomoat_ps_asks_the_running_server(srv):
    assert httpx.post(srv.base_url + "/models/load", json={"model": "a"}, timeout=120).status_code == 200
    code, text = ps(Settings(port=srv.port))
    assert code == 0 and text.splitlines()[1].split()[:2] == ["a", "loaded"], text
    assert "lo" in text.splitlines()[1]
    code, text = ps(Settings(port=free_port()))
    assert code == 1 and "no server answers" in text
