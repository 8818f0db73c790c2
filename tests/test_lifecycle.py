"""Residency on real models over HTTP: two different models (SmolLM2 and Gemma 3 270M) under a budget that
holds either alone, loaded on demand, unloaded after keep_alive 0, switched without failing a request, never
under a running stream; a corrupt GGUF fails alone; adapters outlive their base; the estimate against RSS.
The same server shows what two models keep their own: context lengths, embedding widths, chat templates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import model_path
from lora_factory import write_lora
from streams import long_completion, start_streams, wait_for
from support.model import gemma_model_path
from support.process import THREADS, ServerProcess, free_port

from nomoat.models_toml import ModelConfig
from nomoat.residency.footprint import estimate
from nomoat.residency.ps import ps
from nomoat.settings import Settings

N_CTX, GEMMA_N_CTX, PARALLEL = 512, 1024, 2
# Gemma's logits for a full batch (262k vocabulary × n_batch floats) are its compute buffer: 64 keeps it small.
GEMMA_N_BATCH = 64
ESTIMATE = estimate(ModelConfig(name="x", path=str(model_path()), n_ctx=N_CTX, parallel=PARALLEL))
GEMMA = estimate(ModelConfig(name="x", path=str(gemma_model_path()), n_ctx=GEMMA_N_CTX, parallel=PARALLEL,
                             n_batch=GEMMA_N_BATCH))
# Either model fits alone, both do not.
BUDGET = max(ESTIMATE.total(), GEMMA.total()) + min(ESTIMATE.total(), GEMMA.total()) // 2


def _model(name: str, path: Path, n_ctx: int = N_CTX, n_batch: int = 512) -> str:
    return (f'[[models]]\nname = "{name}"\npath = "{path}"\nn_ctx = {n_ctx}\nn_batch = {n_batch}\n'
            f"parallel = {PARALLEL}\nn_threads = {THREADS}\n")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("lifecycle")
    (root / "garbage.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    lora = write_lora(root / "lo.gguf", seed=7)
    write_lora(root / "rt.gguf", seed=8)
    config = (f'default_model = "a"\n[server]\nmemory_budget = {BUDGET}\nadapter_dirs = ["{root}"]\n'
              + _model("a", model_path()) + _model("b", gemma_model_path(), GEMMA_N_CTX, GEMMA_N_BATCH)
              + _model("junk", root / "garbage.gguf")
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
    r = httpx.post(srv.base_url + "/v1/adapters", json={"name": "rt", "path": str(root / "rt.gguf"), "base": "a"},
                   timeout=60)
    assert r.status_code == 201 and statuses(srv)["a"] == "unloaded", r.text
    on_a = chat(srv, "rt")
    assert on_a.status_code == 200 and on_a.headers["x-nomoat-adapters"] == "rt@1", on_a.text
    assert statuses(srv)["a"] == "loaded"


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


def test_two_models_keep_their_own_context_and_embedding_width(srv):
    cards = {c["id"]: c for c in httpx.get(srv.base_url + "/v1/models", timeout=30).json()["data"]}
    assert (cards["a"]["max_model_len"], cards["b"]["max_model_len"]) == (N_CTX, GEMMA_N_CTX)
    for model, width in (("a", 576), ("b", 640)):  # each GGUF's embedding_length
        r = httpx.post(srv.base_url + "/v1/embeddings", json={"model": model, "input": "hello"}, timeout=120)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == width, r.text


def test_a_model_without_a_chat_template_chats_in_chatml(srv):
    """Gemma 3 270M is a base model: its GGUF has no template, so chat renders ChatML (as llama.cpp does)."""
    messages = [{"role": "user", "content": "Say hi"}]
    r = httpx.post(srv.base_url + "/v1/apply-template", json={"model": "b", "messages": messages}, timeout=120)
    assert r.status_code == 200 and r.json()["prompt"] == "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    answer = chat(srv, "b", logit_bias={"1": -100, "106": -100})  # <eos> and <end_of_turn> banned: it writes
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] and answer.json()["choices"][0]["finish_reason"] == "length"
