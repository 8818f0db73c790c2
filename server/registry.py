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
from .adapters.files import prepare_adapter
from .engine.adapters import LoraAdapter
from .engine.embedder import Embedder
from .engine.model import LoadedModel, ModelSpec
from .engine.engine import Engine
from .engine.errors import ModelFileError
from .engine.types import NO_ADAPTERS, AdapterSet, AppliedAdapter
from .errors import (
    ConfigError, ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError, ServiceUnavailableError,
)
from .metrics import Metrics
from .settings import Settings, default_threads

log = logging.getLogger("nomoat.registry")


@dataclass(frozen=True)
class Target:
    """Where a request goes: the id it asked for, the engine that serves it, the adapters to apply."""

    model_id: str
    base_id: str
    engine: Engine
    adapters: AdapterSet = NO_ADAPTERS


@dataclass(frozen=True)
class EmbeddingTarget:
    """Where an embeddings request goes: the id it asked for, the model that serves it, its embedder."""

    model_id: str
    base_id: str
    embedder: Embedder


@dataclass(eq=False)
class ServedModel:
    config: ModelConfig
    engine: Engine
    created: int
    embedder: Embedder | None = None  # created by the first embeddings request

    @property
    def outstanding(self) -> int:
        return self.engine.outstanding + (self.embedder.outstanding if self.embedder is not None else 0)

    def close(self) -> None:
        """Close the embedder, then the engine, which frees the model the embedder's context points into."""
        if self.embedder is not None and not self.embedder.close():
            log.error("model %s left allocated: its embeddings worker is still running", self.config.name)
            return
        self.engine.close()


@dataclass
class AdapterEntry:
    """An adapter served by name: on which base, at which default scale, from where."""

    name: str
    base: str
    scale: float
    adapter: LoraAdapter
    origin: str  # "config" (models.toml or --lora), "api" (POST /v1/adapters) or "watch" (a watched directory)
    created: int = field(default_factory=lambda: int(time.time()))
    path: str | None = None  # as models.toml gave it, to tell a changed entry on reload

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

    def __init__(self, models_file: ModelsFile, settings: Settings, metrics: Metrics | None = None) -> None:
        self._file = models_file
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, ServedModel] = {}
        self._ids: dict[str, str] = {}
        self._adapters: dict[str, AdapterEntry] = {}
        self._stacks: dict[str, StackEntry] = {}
        self._cache_dir = settings.resolved_state_dir() / "adapters"
        self._lock = asyncio.Lock()  # serialises runtime adapter loads and unloads
        self._retiring: set[ServedModel] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = False

    def load(self) -> None:
        """Load every model (blocking: run it off the event loop)."""
        self._models = self._load_all(self._file.models)
        self._ids = _id_map(self._file)
        try:
            self._load_config_adapters(self._file)
        except BaseException:
            self.close()
            raise
        self.ready = True

    def _load_config_adapters(self, models_file: ModelsFile, skip: set[str] = frozenset()) -> None:
        """Load the adapters models.toml (and --lora) declares, and its stacks (blocking)."""
        for adapter in models_file.adapters:
            if adapter.name in skip:
                continue
            base, started = models_file.base_of(adapter.base), time.perf_counter()
            lora = self._open_adapter(adapter.name, Path(adapter.path), base).result()
            self._register(AdapterEntry(adapter.name, base, adapter.scale, lora, "config",
                                        path=adapter.path), started)
        self._stacks = {
            s.name: StackEntry(s.name, models_file.base_of(s.base), tuple(s.adapters.items()))
            for s in models_file.stacks
        }

    def _load_all(self, configs: list[ModelConfig]) -> dict[str, ServedModel]:
        """Load each model or none: on a failure the ones loaded so far are closed again."""
        loaded: dict[str, ServedModel] = {}
        try:
            for config in configs:
                loaded[config.name] = self._load_one(config)
        except BaseException:
            for served in loaded.values():
                served.close()
            raise
        return loaded

    def _load_one(self, config: ModelConfig) -> ServedModel:
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
            adapter_contexts=config.adapter_contexts,
        )
        try:
            model = LoadedModel(spec)
        except ModelFileError as exc:  # the configuration names a file llama.cpp cannot serve
            raise ConfigError(str(exc)) from None
        engine = Engine(model, queue_size=self._settings.queue_size, prefix_cache=config.prefix_cache,
                        max_prompt_tokens=self._settings.max_prompt_tokens or None)
        if self._metrics is not None:
            self._metrics.model_load.labels(config.name).observe(model.load_seconds)
        log.info(
            "loaded model %s from %s in %.2fs (n_ctx=%d per sequence, parallel=%d, threads=%d, gpu_layers=%d)",
            config.name, spec.path, model.load_seconds, model.n_ctx, spec.parallel, spec.n_threads,
            spec.n_gpu_layers,
        )
        return ServedModel(config, engine, int(time.time()))

    async def apply(self, models_file: ModelsFile, *, drain_timeout: float) -> "ReloadResult":
        """Serve `models_file` from now on, loading only what changed (call on the event loop).

        New and changed models load off the loop while the old set keeps serving; if one
        fails, nothing changes (ConfigError). The swap happens on the loop, where resolve()
        runs, so a request sees the old set or the new one, never a mix. Removed and
        replaced engines are closed once their admitted requests have finished.
        """
        if not self.ready:
            raise ConfigError("models are still loading; try again once they are ready")
        old = self._models
        kept = {
            c.name: old[c.name] for c in models_file.models
            if c.name in old and not _needs_reload(old[c.name].config, c)
        }
        loaded = await asyncio.to_thread(self._load_all, [c for c in models_file.models if c.name not in kept])
        models: dict[str, ServedModel] = {}
        for config in models_file.models:
            served = kept.get(config.name) or loaded[config.name]
            served.config = config  # aliases may have changed without a reload
            models[config.name] = served
        retired = [s for name, s in old.items() if models.get(name) is not s]
        self._file, self._models, self._ids = models_file, models, _id_map(models_file)
        await self._sync_adapters(models_file, {s.config.name for s in retired})
        for served in retired:
            self._retiring.add(served)
            task = asyncio.create_task(self._retire(served, drain_timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        result = ReloadResult(
            loaded=sorted(loaded), removed=sorted(set(old) - set(models)), unchanged=sorted(kept),
        )
        log.info("models.toml applied: loaded %s, removed %s, unchanged %s",
                 result.loaded or "none", result.removed or "none", result.unchanged or "none")
        return result

    async def _sync_adapters(self, models_file: ModelsFile, replaced_bases: set[str]) -> None:
        """After a reload: adapters on replaced or removed models go; models.toml's adapters are
        loaded where new or changed and unloaded where gone; stacks follow the file."""
        wanted = {a.name: a for a in models_file.adapters}
        async with self._lock:
            for name, entry in list(self._adapters.items()):
                spec = wanted.get(name)
                unchanged = (
                    entry.origin == "config" and spec is not None and entry.base not in replaced_bases
                    and entry.path == spec.path and entry.scale == spec.scale
                    and entry.base == models_file.base_of(spec.base)
                )
                if entry.origin == "config" and unchanged:
                    continue
                if entry.origin != "config" and entry.base in self._models and entry.base not in replaced_bases:
                    continue  # runtime adapters stay while their model does
                del self._adapters[name]
                if entry.base not in replaced_bases:
                    self._models[entry.base].engine.unload_adapter(entry.adapter)
                log.info("reload: adapter %s removed", name)
            keep = {n for n, e in self._adapters.items() if e.origin == "config"}
            try:
                await asyncio.to_thread(self._load_config_adapters, models_file, keep)
            except Exception as exc:  # one bad adapter must not take the reloaded models down
                log.error("reload: adapters not all loaded: %s", exc)

    async def _retire(self, served: ServedModel, timeout: float) -> None:
        """Close an engine nobody can reach any more, after its admitted requests end."""
        deadline = time.monotonic() + timeout
        while served.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if served.outstanding:
            log.warning("closing model %s with %d requests still running after %.0fs",
                        served.config.name, served.outstanding, timeout)
        self._retiring.discard(served)
        await asyncio.to_thread(served.close)

    def _open_adapter(self, name: str, source: Path, base: str) -> "concurrent.futures.Future[LoraAdapter]":
        """Check, hash (and convert a PEFT directory) here; load on the base's engine thread."""
        engine = self._models[base].engine
        gguf_path, digest = prepare_adapter(source, engine.model.base_info(), self._cache_dir)
        return engine.load_adapter(name, source, gguf_path, digest)

    def _register(self, entry: AdapterEntry, started: float) -> AdapterEntry:
        self._adapters[entry.name] = entry
        elapsed = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.adapter_load.labels(entry.base, entry.name).observe(elapsed)
        log.info("loaded adapter %s on %s from %s in %.1f ms (sha256 %s, origin %s)", entry.name, entry.base,
                 entry.adapter.source, elapsed * 1000, entry.adapter.content_hash[:12], entry.origin)
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

    def embedder(self, model_id: str | None) -> EmbeddingTarget:
        """The embedder of a base model (or alias), created on its first use.

        Adapters and stacks are refused: the embedder's context never has adapters applied.
        """
        if not self.ready:
            raise ServiceUnavailableError("models are still loading", retry_after=2)
        requested = model_id or self.default_name
        base, adapters = self._lookup(requested)
        if adapters:
            raise InvalidRequestError(
                f"{requested!r} is a LoRA adapter or stack; embeddings come from base models only "
                f"(ask for {base!r})", param="model", code="model_not_supported",
            )
        served = self._models[base]
        if not served.config.embeddings:
            raise InvalidRequestError(
                f"model {base!r} does not support embeddings (embeddings = false in models.toml)",
                param="model", code="model_not_supported",
            )
        if served.embedder is None:
            served.embedder = Embedder(served.engine.model, queue_size=self._settings.queue_size,
                                       max_input_tokens=self._settings.max_prompt_tokens or None)
        return EmbeddingTarget(model_id=requested, base_id=base, embedder=served.embedder)

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
        """Close every engine (blocking). Engines still retiring after a reload close here too."""
        retiring, self._retiring = list(self._retiring), set()
        for served in [*self._models.values(), *retiring]:
            served.close()
        self._models.clear()
        self.ready = False

    async def aclose(self) -> None:
        """close() from the event loop: stop pending retirements first so no engine closes twice."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.close)


@dataclass(frozen=True)
class ReloadResult:
    """What apply() changed, by model name."""

    loaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _id_map(models_file: ModelsFile) -> dict[str, str]:
    return {model_id: config.name for config in models_file.models for model_id in config.ids()}


def _needs_reload(old: ModelConfig, new: ModelConfig) -> bool:
    """Anything but the ids changes how the model is loaded; ids only change the routing."""
    return old.model_dump(exclude={"aliases"}) != new.model_dump(exclude={"aliases"})
