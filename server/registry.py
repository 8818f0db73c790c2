"""The model registry: models.toml entries turned into loaded models, and model ids resolved to them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .config import ModelConfig, ModelsFile
from .engine.adapters import LoraAdapter, prepare_adapter
from .engine.model import LoadedModel, ModelSpec
from .engine.scheduler import Engine
from .engine.types import NO_ADAPTERS, AdapterSet, AppliedAdapter
from .errors import ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError, ServiceUnavailableError
from .settings import Settings, default_threads

log = logging.getLogger("nomoat.registry")


@dataclass(frozen=True)
class Target:
    """Where a request goes: the id it asked for, the engine that serves it, the adapters to apply."""

    model_id: str
    base_id: str
    engine: Engine
    adapters: AdapterSet = NO_ADAPTERS


@dataclass
class ServedModel:
    config: ModelConfig
    engine: Engine
    created: int


@dataclass
class AdapterEntry:
    """An adapter served by name: on which base, at which default scale, from where."""

    name: str
    base: str
    scale: float
    adapter: LoraAdapter
    origin: str  # "config" (models.toml or --lora), "api" (POST /v1/adapters) or "watch" (a watched directory)
    created: int = field(default_factory=lambda: int(time.time()))

    def card(self) -> dict:
        return {
            "id": self.name, "object": "model", "created": self.created, "owned_by": "nomoat",
            "root": self.base, "parent": self.base,
        }


@dataclass(frozen=True)
class StackEntry:
    """A named mix of adapters on one base, served as a model id."""

    name: str
    base: str
    adapters: tuple[tuple[str, float], ...]


class ModelRegistry:
    """Owns every loaded model; `resolve()` maps a request's `model` to a Target."""

    def __init__(self, models_file: ModelsFile, settings: Settings) -> None:
        self._file = models_file
        self._settings = settings
        self._models: dict[str, ServedModel] = {}
        self._ids: dict[str, str] = {}
        self._adapters: dict[str, AdapterEntry] = {}
        self._stacks: dict[str, StackEntry] = {}
        self._cache_dir = settings.resolved_state_dir() / "adapters"
        self._lock = asyncio.Lock()  # serialises runtime adapter loads and unloads
        self.ready = False

    def load(self) -> None:
        """Load every model (blocking: run it off the event loop)."""
        for config in self._file.models:
            spec = ModelSpec(
                name=config.name,
                path=Path(config.path),
                n_ctx=config.n_ctx,
                n_batch=config.n_batch,
                parallel=config.parallel,
                n_threads=config.n_threads or self._settings.threads or default_threads(),
                n_gpu_layers=config.n_gpu_layers,
                repack=config.repack,
                chat_template=config.chat_template,
            )
            model = LoadedModel(spec)
            engine = Engine(model, queue_size=self._settings.queue_size, prefix_cache=config.prefix_cache)
            self._models[config.name] = ServedModel(config, engine, int(time.time()))
            for model_id in config.ids():
                self._ids[model_id] = config.name
            log.info(
                "loaded model %s from %s in %.2fs (n_ctx=%d per sequence, parallel=%d, threads=%d, gpu_layers=%d)",
                config.name, spec.path, model.load_seconds, model.n_ctx, spec.parallel, spec.n_threads,
                spec.n_gpu_layers,
            )
        for adapter in self._file.adapters:
            base, started = self._file.base_of(adapter.base), time.perf_counter()
            lora = self._open_adapter(adapter.name, Path(adapter.path), base).result()
            self._register(AdapterEntry(adapter.name, base, adapter.scale, lora, "config"), started)
        for stack in self._file.stacks:
            self._stacks[stack.name] = StackEntry(stack.name, self._file.base_of(stack.base),
                                                  tuple(stack.adapters.items()))
        self.ready = True

    def _open_adapter(self, name: str, source: Path, base: str) -> "concurrent.futures.Future[LoraAdapter]":
        """Check, hash (and convert a PEFT directory) here; load on the base's engine thread."""
        engine = self._models[base].engine
        gguf_path, digest = prepare_adapter(source, engine.model.base_info(), self._cache_dir)
        return engine.load_adapter(name, source, gguf_path, digest)

    def _register(self, entry: AdapterEntry, started: float) -> AdapterEntry:
        self._adapters[entry.name] = entry
        log.info("loaded adapter %s on %s from %s in %.1f ms (sha256 %s, origin %s)", entry.name, entry.base,
                 entry.adapter.source, (time.perf_counter() - started) * 1000, entry.adapter.content_hash[:12],
                 entry.origin)
        return entry

    async def load_adapter(self, name: str, source: Path, base: str | None, scale: float,
                           origin: str = "api") -> AdapterEntry:
        """Runtime load (POST /v1/adapters or a watched directory): the name must be new; the path is confined."""
        async with self._lock:
            if self._taken(name):
                raise ConflictError(f"the id {name!r} is already in use; DELETE it first", param="name")
            base_name, started = self._base_name(base), time.perf_counter()
            future = await asyncio.to_thread(self._open_adapter, name, source, base_name)
            lora = await asyncio.wrap_future(future)
            return self._register(AdapterEntry(name, base_name, scale, lora, origin), started)

    async def unload_adapter(self, name: str) -> AdapterEntry:
        """Runtime unload: new requests stop at once; running ones finish under the adapter."""
        async with self._lock:
            entry = self._adapters.get(name)
            if entry is None:
                raise NotFoundError(f"no adapter named {name!r}", param="name")
            users = [s.name for s in self._stacks.values() if any(n == name for n, _ in s.adapters)]
            if users:
                raise ConflictError(f"adapter {name!r} is used by the stack(s) {', '.join(users)}", param="name")
            del self._adapters[name]
            self._models[entry.base].engine.unload_adapter(entry.adapter)
            log.info("unloaded adapter %s from %s", name, entry.base)
            return entry

    def adapters(self) -> list[AdapterEntry]:
        return list(self._adapters.values())

    def _taken(self, name: str) -> bool:
        return name in self._ids or name in self._adapters or name in self._stacks

    def _base_name(self, base: str | None) -> str:
        if base is None:
            return self.default_name
        name = self._ids.get(base)
        if name is None:
            raise ModelNotFoundError(f"base model {base!r} does not exist", param="base")
        return name

    @property
    def default_name(self) -> str:
        return self._file.default.name

    def resolve(self, model_id: str | None, lora: Iterable[tuple[str, float]] | None = None) -> Target:
        """The engine and adapter set for a request.

        `model` may name a base model (or alias), an adapter or a stack; `lora`, when given, is the
        whole adapter set and `model` then only picks the base.
        """
        if not self.ready:
            raise ServiceUnavailableError("models are still loading", retry_after=2)
        requested = model_id or self.default_name
        base, default_set = self._lookup(requested)
        pairs = default_set if lora is None else list(lora)
        applied = []
        for name, scale in pairs:
            entry = self._adapters.get(name)
            if entry is None:
                raise ModelNotFoundError(f"The adapter '{name}' does not exist", param="lora" if lora is not None else "model")
            if entry.base != base:
                raise InvalidRequestError(f"adapter {name!r} belongs to model {entry.base!r}, not {base!r}", param="lora")
            if scale != 0.0:  # llama.cpp drops zero scales: scale 0 is the base alone
                applied.append(AppliedAdapter(name, float(scale), entry.adapter.content_hash, entry.adapter))
        return Target(model_id=requested, base_id=base, engine=self._models[base].engine,
                      adapters=AdapterSet(tuple(applied)))

    def _lookup(self, model_id: str) -> tuple[str, list[tuple[str, float]]]:
        if model_id in self._ids:
            return self._ids[model_id], []
        if model_id in self._adapters:
            entry = self._adapters[model_id]
            return entry.base, [(entry.name, entry.scale)]
        if model_id in self._stacks:
            stack = self._stacks[model_id]
            return stack.base, list(stack.adapters)
        available = sorted([*self._ids, *self._adapters, *self._stacks])
        raise ModelNotFoundError(
            f"The model '{model_id}' does not exist. Available: {', '.join(available)}", param="model"
        )

    def cards(self) -> list[dict]:
        """Every served id for /v1/models; aliases are listed with `root` pointing at the model."""
        out = []
        for served in self._models.values():
            config = served.config
            for model_id in config.ids():
                out.append({
                    "id": model_id,
                    "object": "model",
                    "created": served.created,
                    "owned_by": "nomoat",
                    "root": config.name,
                    "parent": None,
                    "max_model_len": served.engine.model.n_ctx,
                })
        for entry in self._adapters.values():
            out.append(entry.card())
        for stack in self._stacks.values():
            out.append({
                "id": stack.name, "object": "model", "created": self._models[stack.base].created,
                "owned_by": "nomoat", "root": stack.base, "parent": stack.base,
                "adapters": [{"name": n, "scale": sc} for n, sc in stack.adapters],
            })
        return out

    def engines(self) -> dict[str, Engine]:
        return {name: served.engine for name, served in self._models.items()}

    def close(self) -> None:
        for served in self._models.values():
            served.engine.close()
        self._models.clear()
        self.ready = False
