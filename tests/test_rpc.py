"""A model split across `nomoat worker`s with llama.cpp's RPC backend, served from a child process of its own.

Fast tests (no RPC build needed): the config, the child's generated models.toml, the host-side footprint,
and the forwarder's error shapes against a stand-in child. Real tests (an RPC build): two workers on
127.0.0.1, the split model against the local one, a worker killed mid-stream, and the model loaded again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import model_path, models_toml
from lora_factory import write_lora
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from support.process import NO_EOS, THREADS, ServerProcess, free_port

from nomoat import config
from nomoat.child import ChildModel
from nomoat.errors import ConfigError
from nomoat.http.app import build_app
from nomoat.metrics import Metrics
from nomoat.models_toml import AdapterConfig, ModelConfig, ModelsFile, StackConfig
from nomoat.registry import ModelRegistry
from nomoat.residency.footprint import estimate
from nomoat.rpc.endpoints import parse_endpoint
from nomoat.rpc.ggml import supports_rpc
from nomoat.rpc.worker import is_loopback
from nomoat.settings import Settings
from nomoat.wire.auth import key_id

# --- configuration -----------------------------------------------------------------------------------


def test_rpc_endpoints_are_checked_and_default_every_layer_to_the_workers() -> None:
    model = ModelConfig(name="m", rpc=["10.0.0.2:50052", "[::1]:50053"], tensor_split=[2, 1])
    assert model.rpc == ["10.0.0.2:50052", "[::1]:50053"]
    assert model.n_gpu_layers == -1
    assert ModelConfig(name="m", rpc=["h:1"], n_gpu_layers=10).n_gpu_layers == 10
    assert ModelConfig(name="m").n_gpu_layers == "auto"
    assert ModelConfig(name="m", rpc=["h:1"], n_gpu_layers="auto").n_gpu_layers == -1
    assert parse_endpoint("[fe80::1]:9").host == "fe80::1"


@pytest.mark.parametrize(("fields", "says"), [
    ({"rpc": ["nohost"]}, "is not host:port"),
    ({"rpc": ["h:0"]}, "port must be"),
    ({"rpc": ["h:x"]}, "port must be"),
    ({"rpc": [":50052"]}, "is not host:port"),
    ({"tensor_split": [1.0]}, "set rpc too"),
    ({"rpc": ["h:1"], "tensor_split": [1, -1]}, ">= 0"),
    ({"rpc": ["h:1"], "tensor_split": [0, 0]}, "not all 0"),
])
def test_bad_rpc_settings_are_refused_with_the_reason(tmp_path: Path, fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config.parse_models({"models": [{"name": "m", **fields}]}, "models.toml", tmp_path)


def test_rpc_flag_for_a_single_model() -> None:
    settings = Settings(model=config.embedded_model_path(), rpc="127.0.0.1:50052, 127.0.0.1:50053")
    (model,) = config.models_for_single_file(settings).models
    assert model.rpc == ["127.0.0.1:50052", "127.0.0.1:50053"] and model.n_gpu_layers == -1
    with pytest.raises(ConfigError, match="is not host:port"):
        config.models_for_single_file(Settings(model=config.embedded_model_path(), rpc="nowhere"))


def test_only_the_host_side_of_an_rpc_model_counts_against_the_memory_budget() -> None:
    path = str(config.embedded_model_path())
    local, split = estimate(ModelConfig(name="m", path=path)), estimate(ModelConfig(name="m", path=path, rpc=["h:1"]))
    assert split.gpu() == 0 and split.kv_per_context == 0
    assert 0 < split.weights < local.weights / 2  # the input embeddings stay on this host, the layers do not
    assert split.cpu() < local.cpu()


def test_child_models_toml_holds_the_model_its_adapters_and_no_secrets(tmp_path: Path) -> None:
    model = ModelConfig(name="split", aliases=["s"], path="/m.gguf", rpc=["127.0.0.1:1"], keep_alive="5m")
    adapters = [AdapterConfig(name="a", path="/a.gguf", base="split", scale=0.5)]
    stacks = [StackConfig(name="st", base="split", adapters={"a": 0.25})]
    settings = Settings(api_key="secret-key", threads=3, state_dir=tmp_path)
    child = ChildModel(model, adapters, stacks, settings, on_exit=lambda child, reason: None)
    try:
        text = child._models_toml()
    finally:
        child.close()
    assert "secret-key" not in text
    data = tomllib.loads(text)
    assert data["server"]["threads"] == 3
    parsed = ModelsFile.model_validate({k: v for k, v in data.items() if k != "server"})
    assert parsed.models[0].rpc == ["127.0.0.1:1"] and parsed.models[0].pinned
    assert parsed.models[0].keep_alive is None
    assert parsed.adapters[0].scale == 0.5 and parsed.stacks[0].adapters == {"a": 0.25}


def test_worker_warns_off_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


@pytest.mark.skipif(supports_rpc(), reason="this llama-cpp-python has RPC: the rebuild message is not shown")
def test_worker_without_an_rpc_build_says_how_to_rebuild() -> None:
    done = subprocess.run([sys.executable, "-m", "nomoat", "worker", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "-DGGML_RPC=on" in done.stderr


@pytest.mark.skipif(supports_rpc(), reason="this llama-cpp-python has RPC: the rebuild message is not shown")
def test_an_rpc_model_without_an_rpc_build_fails_to_load_saying_how_to_rebuild(tmp_path: Path) -> None:
    model = ModelConfig(name="m", path=str(config.embedded_model_path()), rpc=["127.0.0.1:9"])
    child = ChildModel(model, [], [], Settings(state_dir=tmp_path), on_exit=lambda child, reason: None)
    with pytest.raises(ConfigError, match="-DGGML_RPC=on"):
        child.start()


# --- the forwarder's error shapes, against a stand-in child ------------------------------------------


class StandInChild(ChildModel):
    """A 'child' served by a small app in a thread: streams one chunk, then its connection breaks."""

    def __init__(self, config: ModelConfig, base_url: str) -> None:
        super().__init__(config, [], [], Settings(), on_exit=lambda child, reason: None)
        self.base_url = base_url
        self.closed = 0

    def start(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1
        super().close()

    def wait_exit(self, timeout: float) -> str | None:
        return "worker 127.0.0.1:9 went away"

    @property
    def alive(self) -> bool:
        return True


def _breaking_app() -> Starlette:
    async def answer(request: Request) -> StreamingResponse:
        body = await request.json()

        async def chunks() -> AsyncIterator[bytes]:
            yield b'data: {"seen": ' + json.dumps(body["model"]).encode() + b"}\n\n"
            raise RuntimeError("the child's process ends here")

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def caller(request: Request) -> JSONResponse:  # what the parent told the child about its client
        return JSONResponse({"caller": request.headers.getlist("x-nomoat-caller")})

    return Starlette(routes=[Route(p, answer, methods=["POST"]) for p in ("/v1/chat/completions", "/v1/messages",
                                                                      "/v1/responses")]
                     + [Route("/v1/tokenize", caller, methods=["POST"])])


@pytest.fixture(scope="module")
def breaking_child_url() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_breaking_app(), host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def serve_stand_ins(tmp_path: Path, url: str, started: list[StandInChild], split_load: str = "on_demand",
                    **settings_fields: Any) -> Iterator[tuple[TestClient, ModelRegistry]]:
    from support.fake_engine import FakeEngine

    path = str(config.embedded_model_path())
    models = ModelsFile(models=[ModelConfig(name="local", path=path, load="startup"),
                                ModelConfig(name="split", path=path, rpc=["127.0.0.1:9"], load=split_load),
                                ModelConfig(name="gone", path=path, rpc=["127.0.0.1:9"])])
    settings = Settings(state_dir=tmp_path, **settings_fields)

    def start_child(model: ModelConfig, _: ModelsFile) -> ChildModel:  # "gone" answers nowhere: its process never served
        started.append(StandInChild(model, url if model.name == "split" else f"http://127.0.0.1:{free_port()}"))
        return started[-1]

    registry = ModelRegistry(models, settings, Metrics(), load_model=lambda m: FakeEngine(m.name),
                             start_child=start_child)
    registry.load()
    with TestClient(build_app(settings, registry), raise_server_exceptions=False) as client:
        yield client, registry
    registry.close()


@pytest.fixture()
def forwarding(tmp_path: Path, breaking_child_url: str) -> Iterator[TestClient]:
    for client, _ in serve_stand_ins(tmp_path, breaking_child_url, []):
        yield client


def status(client: TestClient, model: str) -> str:
    return str(client.get(f"/v1/models/{model}").json()["status"])


def test_unloading_a_child_hosted_model_stops_its_process(tmp_path: Path, breaking_child_url: str) -> None:
    started: list[StandInChild] = []
    for client, _ in serve_stand_ins(tmp_path, breaking_child_url, started):
        assert client.post("/models/load", json={"model": "split"}).status_code == 200
        assert status(client, "split") == "loaded" and len(started) == 1 and started[0].closed == 0
        assert client.post("/models/unload", json={"model": "split"}).status_code == 200
        assert status(client, "split") == "unloaded" and started[0].closed == 1


def test_a_pinned_model_whose_child_died_is_loaded_again(tmp_path: Path, breaking_child_url: str) -> None:
    started: list[StandInChild] = []
    for client, registry in serve_stand_ins(tmp_path, breaking_child_url, started, split_load="startup"):
        assert client.post("/models/load", json={"model": "split"}).status_code == 200  # on the loop now
        registry.residency.child_exited(started[0], "worker 127.0.0.1:9 went away")
        deadline = time.monotonic() + 60
        while len(started) < 2 or status(client, "split") != "loaded":
            assert time.monotonic() < deadline, client.get("/v1/models/split").json()
            time.sleep(0.05)
        assert started[0].closed == 1


def test_the_child_is_told_which_key_the_client_used_and_never_what_the_client_claims(
        tmp_path: Path, breaking_child_url: str) -> None:
    """A child stores responses under the client's key (tests/test_response_store.py): the parent names it."""
    for client, _ in serve_stand_ins(tmp_path, breaking_child_url, [], api_key="user-a,user-b", admin_key="adm"):
        spoofed = {"x-nomoat-caller": f"{key_id('user-a')};admin"}
        for key, told in (("user-b", key_id("user-b")), ("adm", f"{key_id('adm')};admin")):
            r = client.post("/v1/tokenize", json={"model": "split", "content": "hi"},
                            headers={"authorization": f"Bearer {key}", **spoofed})
            assert r.status_code == 200 and r.json() == {"caller": [told]}, r.text


def test_a_stream_cut_by_the_child_ends_with_an_openai_error_event(forwarding: TestClient) -> None:
    with forwarding.stream("POST", "/v1/chat/completions", json={"model": "split", "stream": True, "messages": []}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert events[0] == 'data: {"seen": "split"}'
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "model_process_exited" and "went away" in error["message"]


def test_a_stream_cut_by_the_child_ends_with_an_anthropic_error_event(forwarding: TestClient) -> None:
    with forwarding.stream("POST", "/v1/messages", json={"model": "split", "stream": True, "max_tokens": 4,
                                                         "messages": []}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-2] == "event: error"
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["type"] == "overloaded_error" and "went away" in error["message"]  # 503, as nomoat maps it


def test_a_stream_cut_by_the_child_ends_with_a_responses_error_event(forwarding: TestClient) -> None:
    with forwarding.stream("POST", "/v1/responses", json={"model": "split", "stream": True, "input": "hi"}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-2] == "event: error"
    error = json.loads(events[-1].removeprefix("data: "))
    assert error["type"] == "error" and error["code"] == "model_process_exited"


def test_a_child_that_does_not_answer_is_a_503_and_local_models_still_serve(forwarding: TestClient) -> None:
    r = forwarding.post("/v1/chat/completions", json={"model": "gone", "messages": []})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_process_exited"
    r = forwarding.post("/v1/messages", json={"model": "gone", "max_tokens": 4, "messages": []})
    assert r.status_code == 503 and r.json()["type"] == "error"
    r = forwarding.post("/v1/chat/completions", json={"model": "local", "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200


def test_a_runtime_adapter_for_a_child_hosted_model_is_refused_naming_models_toml(tmp_path: Path,
                                                                                   breaking_child_url: str) -> None:
    adapter = tmp_path / "tone.gguf"
    adapter.write_bytes(b"GGUF")  # refused before it is read: the child serves only models.toml's adapters
    for client, _ in serve_stand_ins(tmp_path, breaking_child_url, [], adapter_dirs=[tmp_path]):
        r = client.post("/v1/adapters", json={"name": "tone", "path": str(adapter), "base": "split"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "base", r.text
        assert "models.toml" in r.json()["error"]["message"]
        assert client.get("/v1/adapters").json()["data"] == []


# --- real workers ---------------------------------------------------------------------------------------

needs_rpc = pytest.mark.skipif(not supports_rpc(), reason="llama-cpp-python built without RPC "
                               "(CMAKE_ARGS=-DGGML_RPC=on; see README)")


class Worker:
    """A `nomoat worker` on 127.0.0.1, started (again) on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / f"worker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "nomoat", "worker", "--port", str(self.port),
                                          "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def split_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[Worker]]]:
    if not supports_rpc():
        pytest.skip("llama-cpp-python built without RPC (CMAKE_ARGS=-DGGML_RPC=on; see README)")
    workdir = tmp_path_factory.mktemp("rpc")
    workers = [Worker(workdir).start(), Worker(workdir).start()]
    adapter = write_lora(workdir / "a.gguf", seed=3)
    split = ", ".join(f'"127.0.0.1:{w.port}"' for w in workers)
    text = models_toml(parallel=1, extra=(
        f'[[models]]\nname = "split"\npath = "{model_path()}"\nn_ctx = 2048\nparallel = 1\n'
        f'n_threads = {THREADS}\nrpc = [{split}]\n'
        f'[[adapters]]\nname = "a"\npath = "{adapter}"\nbase = "smollm2-135m"\n'
        f'[[adapters]]\nname = "split-a"\npath = "{adapter}"\nbase = "split"\n'))
    server = ServerProcess(text, workdir)
    try:
        yield server.wait_ready(), workers
    finally:
        server.stop()
        for worker in workers:
            worker.kill()


def chat(url: str, model: str, content: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "max_tokens": 16, "temperature": 0, "messages": [{"role": "user", "content": content}],
            **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=300)


def _text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


@needs_rpc
def test_the_split_model_answers_as_the_local_one_adapters_too(split_server: tuple[ServerProcess, list[Worker]]) -> None:
    server, _ = split_server
    for local, split in (("smollm2-135m", "split"), ("a", "split-a")):
        want = _text(chat(server.base_url, local, "Name three colours.", logit_bias=NO_EOS))
        got = _text(chat(server.base_url, split, "Name three colours.", logit_bias=NO_EOS))
        assert len(os.path.commonprefix([want, got])) >= 24, (local, want, got)
    models = {m["id"]: m for m in httpx.get(server.base_url + "/v1/models").json()["data"]}
    assert models["split"]["status"] == "loaded"
    # A response the child stored is the parent's to read and delete: they share the state dir.
    made = httpx.post(server.base_url + "/v1/responses", timeout=120,
                      json={"model": "split", "input": "Name a colour.", "max_output_tokens": 4})
    assert made.status_code == 200, made.text
    stored = httpx.get(f"{server.base_url}/v1/responses/{made.json()['id']}")
    assert stored.status_code == 200 and stored.json()["output"] == made.json()["output"], stored.text
    assert httpx.delete(f"{server.base_url}/v1/responses/{made.json()['id']}").status_code == 200


@needs_rpc
def test_a_worker_killed_mid_stream_fails_that_stream_and_the_model_comes_back(
        split_server: tuple[ServerProcess, list[Worker]]) -> None:
    server, workers = split_server
    body = {"model": "split", "max_tokens": 400, "stream": True, "logit_bias": NO_EOS,
            "messages": [{"role": "user", "content": "Count to a thousand."}]}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=300) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        workers[1].kill()
        rest = [line for line in lines if line.startswith("data: ")]
    error = json.loads(rest[-1].removeprefix("data: "))["error"]
    assert error["code"] == "model_process_exited" and "stopped while answering" in error["message"], rest[-1]

    assert _text(chat(server.base_url, "smollm2-135m", "Hi"))  # the other model serves on
    models = {m["id"]: m for m in httpx.get(server.base_url + "/v1/models").json()["data"]}
    assert models["split"]["status"] == "failed", models["split"]

    down = chat(server.base_url, "split", "Hi")  # the worker is still down: a clean load failure
    assert down.status_code == 503 and down.json()["error"]["code"] == "model_load_failed"
    assert f"127.0.0.1:{workers[1].port} unreachable" in down.json()["error"]["message"]

    workers[1].start()
    assert _text(chat(server.base_url, "split", "Hi"))
