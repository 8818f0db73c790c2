"""The registry and adapter catalogue in process, over fake engines: ids, atomic adapter replaces, reloads."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import pytest
from conftest import model_path
from lora_factory import write_lora
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from nomoat.adapters import catalogue as catalogue_module
from nomoat.engine.adapters import LoraAdapter
from nomoat.engine.base_info import BaseModelInfo
from nomoat.engine.generation import EngineStats
from nomoat.engine.in_flight import InFlight
from nomoat.engine.sampling_defaults import SERVER_DEFAULTS
from nomoat.engine.types import ModelInfo
from nomoat.errors import ConflictError, ModelNotFoundError
from nomoat.http.boundary import ErrorBoundary
from nomoat.models_toml import ModelConfig, ModelsFile
from nomoat.openai.models import model_handlers, model_object
from nomoat.registry import ModelRegistry
from nomoat.settings import Settings
from nomoat.wire.auth import Authenticator, KeyRing
from nomoat.wire.routes import ENDPOINTS, build_routes

BASE_INFO = BaseModelInfo.from_gguf(model_path())


class FakeModel:
    def __init__(self, n_ctx: int) -> None:
        self.n_ctx = n_ctx

    def base_info(self) -> BaseModelInfo:
        return BASE_INFO


class FakeEngine:
    """Loads adapters at once, or, with `hold`, only when the test releases them."""

    def __init__(self, config: ModelConfig) -> None:
        self.model = FakeModel(config.n_ctx)
        self.info = ModelInfo(config.name, 0, config.n_ctx, config.parallel, False, config.reasoning_format)
        self.stats = EngineStats()
        self.in_flight = InFlight()
        self.hold = False
        self.pending: list[tuple[concurrent.futures.Future[LoraAdapter], LoraAdapter]] = []
        self.loaded: list[LoraAdapter] = []
        self.unloaded: list[LoraAdapter] = []
        self.closed = False

    @property
    def outstanding(self) -> int:
        return self.in_flight.count

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self.in_flight.count = value  # what a test sets wakes wait_idle() as a real engine's count does

    async def wait_idle(self) -> None:
        await self.in_flight.wait_idle()

    def load_adapter(self, name: str, source: Path, gguf_path: Path, content_hash: str) -> concurrent.futures.Future:
        # Opened on this engine, as llama.cpp's would be: a handle (a detached adapter has none).
        adapter = LoraAdapter(name=name, source=source, gguf_path=gguf_path, content_hash=content_hash, ptr=object())
        self.loaded.append(adapter)
        future: concurrent.futures.Future[LoraAdapter] = concurrent.futures.Future()
        if self.hold:
            self.pending.append((future, adapter))
        else:
            future.set_result(adapter)
        return future

    def release(self) -> None:
        for future, adapter in self.pending:
            future.set_result(adapter)
        self.pending.clear()

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        adapter.unloading = True
        self.unloaded.append(adapter)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("loras")
    write_lora(d / "a.gguf", seed=1)
    write_lora(d / "b.gguf", seed=2)
    return d


def models_file(loras: Path, *, n_ctx: int = 256, scale: float = 1.0, file: str = "a.gguf",
                second: bool = False) -> ModelsFile:
    path = str(model_path())
    models = [{"name": "base", "aliases": ["default"], "n_ctx": n_ctx, "load": "startup", "path": path}]
    if second:
        models.append({"name": "second", "n_ctx": 128, "load": "startup", "path": path})
    return ModelsFile.model_validate({
        "models": models,
        "adapters": [{"name": "cfg", "path": str(loras / file), "scale": scale}],
        "stacks": [{"name": "mix", "adapters": {"cfg": 0.5}}],
    })


def registry(loras: Path, tmp_path: Path, **kwargs: object) -> ModelRegistry:
    reg = ModelRegistry(models_file(loras, **kwargs), Settings(state_dir=tmp_path), load_model=FakeEngine)
    reg.load()
    return reg


def engine(reg: ModelRegistry, name: str = "base") -> FakeEngine:
    fake = reg.engines()[name]
    assert isinstance(fake, FakeEngine)
    return fake


async def handle(reg: ModelRegistry, model_id: str) -> LoraAdapter:
    target = await reg.resolve(model_id)
    target.lease.release()
    [applied] = target.adapters.adapters
    return applied.handle


async def settle(condition, what: str) -> None:
    """Let the event loop run until `condition()` holds (the catalogue's deferred unloads are tasks)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_served_ids_render_as_the_openai_model_list(loras, tmp_path):
    reg = registry(loras, tmp_path)
    cards = {s.id: model_object(s) for s in reg.served_ids()}
    assert list(cards) == ["base", "default", "cfg", "mix"]
    residency = {"status", "pinned", "busy", "memory_bytes", "loaded_at", "expires_at", "adapters", "prompt_cache_bytes"}
    assert {k: v for k, v in cards["base"].items() if k not in residency} == {
        "id": "base", "object": "model", "created": cards["base"]["created"],
        "owned_by": "nomoat", "root": "base", "parent": None, "max_model_len": 256,
        "sampling_defaults": SERVER_DEFAULTS.as_json(), "chat_format": "generic", "vision": False, "kind": "chat"}
    assert cards["base"]["status"] == "loaded" and cards["base"]["adapters"] == ["cfg", "mix"]
    assert cards["default"]["root"] == "base" and cards["default"]["max_model_len"] == 256
    assert cards["cfg"]["parent"] == "base" and "max_model_len" not in cards["cfg"]
    assert cards["mix"]["adapters"] == [{"name": "cfg", "scale": 0.5}]


def test_model_routes_list_and_look_up_and_404_lists_the_ids(loras, tmp_path):
    # (The route table mounts them without /v1 too: test_protocol_inprocess.py.)
    handlers = model_handlers(registry(loras, tmp_path), Authenticator(KeyRing()))
    routes = build_routes(handlers, off=[e.name for e in ENDPOINTS if e.name not in handlers])
    app = Starlette(routes=routes, middleware=[Middleware(ErrorBoundary)])
    with TestClient(app) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["base", "default", "cfg", "mix"]
        assert client.get("/v1/models/mix").json()["adapters"] == [{"name": "cfg", "scale": 0.5}]
        r = client.get("/v1/models/nope")
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "Available: base, cfg, default, mix" in error["message"]


def test_replace_serves_the_old_adapter_until_the_new_one_is_loaded(loras, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue_module, "REPLACED_UNLOAD_WAIT_SECONDS", 60.0)
    reg = registry(loras, tmp_path)
    fake = engine(reg)

    async def scenario() -> None:
        await reg.catalogue.load("rt", loras / "a.gguf", None, 1.0)
        old = await handle(reg, "rt")
        with pytest.raises(ConflictError, match="replace: true"):
            await reg.catalogue.load("rt", loras / "b.gguf", None, 1.0)
        fake.hold = True
        replacing = asyncio.create_task(reg.catalogue.load("rt", loras / "b.gguf", None, 1.0, replace=True))
        await settle(lambda: fake.pending, "the new adapter is loading")
        assert await handle(reg, "rt") is old, "the old adapter serves while the new one loads"
        fake.outstanding = 1  # a request that resolved the old adapter is still being admitted
        fake.release()
        entry = await replacing
        assert await handle(reg, "rt") is entry.adapter is not old
        assert entry.adapter.content_hash != old.content_hash
        await asyncio.sleep(0.2)
        assert old not in fake.unloaded, "unloaded while a request may still be about to use it"
        fake.outstanding = 0
        await settle(lambda: old in fake.unloaded, "the old adapter unloaded once the engine is idle")
        assert [e.name for e in reg.catalogue.entries()] == ["cfg", "rt"]

    asyncio.run(scenario())


def test_failed_replace_leaves_the_old_adapter_serving(loras, tmp_path):
    reg = registry(loras, tmp_path)
    bad = loras / "bad.gguf"
    bad.write_bytes(b"not a gguf" * 10)

    async def scenario() -> None:
        await reg.catalogue.load("rt", loras / "a.gguf", None, 1.0)
        old = await handle(reg, "rt")
        with pytest.raises(Exception, match="GGUF"):
            await reg.catalogue.load("rt", bad, None, 1.0, replace=True)
        assert await handle(reg, "rt") is old and not engine(reg).unloaded

    asyncio.run(scenario())


def test_reload_of_the_default_model_brings_its_runtime_adapters_to_the_new_engine(loras, tmp_path):
    reg = registry(loras, tmp_path)
    dropped = []
    reg.catalogue.on_dropped(dropped.append)

    async def scenario() -> None:
        await reg.catalogue.load("api", loras / "b.gguf", None, 0.5, origin="api")
        await reg.catalogue.load("drop", loras / "a.gguf", None, 1.0, origin="watch")
        old_engine = engine(reg)
        result = await reg.apply(models_file(loras, n_ctx=512), drain_timeout=5)
        assert result.loaded == ["base"]
        new_engine = engine(reg)
        assert new_engine is not old_engine
        for name, origin, scale in [("api", "api", 0.5), ("drop", "watch", 1.0), ("cfg", "config", 1.0)]:
            entry = reg.catalogue.get(name)
            assert entry is not None and entry.origin == origin and entry.scale == scale
            assert await handle(reg, name) in new_engine.loaded, name
        assert not old_engine.unloaded, "adapters of a retired engine go with it"
        assert dropped == []
        await settle(lambda: old_engine.closed, "the old engine closed")
        await reg.aclose()

    asyncio.run(scenario())


def test_reload_that_removes_a_model_drops_its_runtime_adapters_and_says_so(loras, tmp_path):
    reg = registry(loras, tmp_path, second=True)
    dropped = []
    reg.catalogue.on_dropped(dropped.append)

    async def scenario() -> None:
        await reg.catalogue.load("on-second", loras / "a.gguf", "second", 1.0, origin="watch")
        await reg.apply(models_file(loras), drain_timeout=5)
        assert [e.name for e in dropped] == ["on-second"]
        with pytest.raises(ModelNotFoundError):
            await reg.resolve("on-second")
        await reg.aclose()

    asyncio.run(scenario())


def test_reload_swaps_a_changed_config_adapter_in_one_step(loras, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue_module, "REPLACED_UNLOAD_WAIT_SECONDS", 60.0)
    reg = registry(loras, tmp_path)
    fake = engine(reg)

    async def scenario() -> None:
        old = await handle(reg, "cfg")
        await reg.apply(models_file(loras, scale=0.25), drain_timeout=5)
        target = await reg.resolve("cfg")
        target.lease.release()
        assert await handle(reg, "cfg") is old and target.adapters.adapters[0].scale == 0.25
        fake.hold = True
        reloading = asyncio.create_task(reg.apply(models_file(loras, file="b.gguf"), drain_timeout=5))
        await settle(lambda: fake.pending, "the changed adapter is loading")
        assert await handle(reg, "cfg") is old, "the old file serves while the new one loads"
        fake.release()
        await reloading
        assert await handle(reg, "cfg") is not old and (await handle(reg, "cfg")).source == loras / "b.gguf"
        await settle(lambda: old in fake.unloaded, "the old adapter unloaded")
        await reg.aclose()

    asyncio.run(scenario())
