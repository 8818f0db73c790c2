"""The model registry: models.toml entries turned into loaded models, and model ids resolved to them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .adapters.catalogue import AdapterCatalogue
from .config import ModelConfig, ModelsFile
from .engine.embedder import Embedder
from .engine.engine import Engine
from .engine.errors import ModelFileError
from .engine.model import LoadedModel, ModelSpec
from .engine.types import NO_ADAPTERS, AdapterSet, AppliedAdapter
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
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

    def abort(self, reason: str) -> None:
        """End every generation and embeddings request still running, each with ShuttingDown(reason)."""
        self.engine.abort(reason)
        if self.embedder is not None:
            self.embedder.abort(reason)

    def close(self) -> None:
        """Close the embedder, then the engine, which frees the model the embedder's context points into."""
        if self.embedder is not None and not self.embedder.close():
            log.error("model %s left allocated: its embeddings worker is still running", self.config.name)
            return
        self.engine.close()


@dataclass(frozen=True)
class ServedId:
    """One id the server answers to, as /v1/models lists it: a model, an alias, an adapter or a stack."""

    id: str
    kind: Literal["model", "alias", "adapter", "stack"]
    created: int
    root: str  # the model the id runs on
    parent: str | None = None  # the base model of an adapter or stack
    max_model_len: int | None = None  # models and aliases: tokens per sequence
    adapters: tuple[tuple[str, float], ...] = ()  # stacks: adapter name and scale


ModelLoader = Callable[[ModelConfig], Engine]


class ModelRegistry:
    """Owns every loaded model; `resolve()` maps a request's `model` to a Target.

    Adapters and stacks live in `catalogue`; `load_model` builds the engine for one models.toml
    entry (tests pass fakes), by default loading the GGUF file into llama.cpp.
    """

    def __init__(self, models_file: ModelsFile, settings: Settings, metrics: Metrics | None = None, *,
                 load_model: ModelLoader | None = None) -> None:
        self._file = models_file
        self._settings = settings
        self._metrics = metrics
        self._load_model = load_model or self._load_engine
        self._models: dict[str, ServedModel] = {}
        self._ids: dict[str, str] = {}
        self.catalogue = AdapterCatalogue(self, settings.resolved_state_dir() / "adapters", metrics)
        self._retiring: set[ServedModel] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = False

    def load(self) -> None:
        """Load every model (blocking: run it off the event loop)."""
        self._models = self._load_all(self._file.models)
        self._ids = _id_map(self._file)
        try:
            self.catalogue.load_config(self._file)
        except BaseException:
            self.close()
            raise
        self.ready = True

    def _load_all(self, configs: list[ModelConfig]) -> dict[str, ServedModel]:
        """Load each model or none: on a failure the ones loaded so far are closed again."""
        loaded: dict[str, ServedModel] = {}
        try:
            for config in configs:
                loaded[config.name] = ServedModel(config, self._load_model(config), int(time.time()))
        except BaseException:
            _close_all(loaded.values())
            raise
        return loaded

    def _load_engine(self, config: ModelConfig) -> Engine:
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
            reasoning_format=config.reasoning_format,
            adapter_contexts=config.adapter_contexts,
            **config.engine_options(),
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
        return engine

    async def apply(self, models_file: ModelsFile, *, drain_timeout: float) -> ReloadResult:
        """Serve `models_file` from now on, loading only what changed (call on the event loop).

        New and changed models, and the adapters they need, load off the loop while the old set
        keeps serving; if a model fails, nothing changes (ConfigError). The swap happens on the
        loop, where resolve() runs, so a request sees the old set or the new one, never a mix.
        Removed and replaced engines are closed once their admitted requests have finished.
        """
        if not self.ready:
            raise ConfigError("models are still loading; try again once they are ready")
        old = self._models
        kept = {
            c.name: old[c.name] for c in models_file.models
            if c.name in old and not _needs_reload(old[c.name].config, c)
        }
        loaded = await asyncio.to_thread(self._load_all, [c for c in models_file.models if c.name not in kept])
        models = {c.name: kept.get(c.name) or loaded[c.name] for c in models_file.models}
        retired = [s for name, s in old.items() if models.get(name) is not s]

        def commit() -> None:
            for config in models_file.models:
                models[config.name].config = config  # aliases may have changed without a reload
            self._file, self._models, self._ids = models_file, models, _id_map(models_file)

        try:
            await self.catalogue.reconcile(models_file, {n: s.engine for n, s in models.items()},
                                           {s.config.name for s in retired}, commit)
        except BaseException:
            if self._models is not models:  # not swapped in: the new engines serve nobody
                await asyncio.to_thread(_close_all, loaded.values())
            raise
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

    # --- what the catalogue asks (Bases) -----------------------------------------------

    def base_name(self, model_id: str | None) -> str:
        """The model a base reference names: a model name or alias, or None for the default."""
        if model_id is None:
            return self.default_name
        name = self._ids.get(model_id)
        if name is None:
            raise ModelNotFoundError(f"base model {model_id!r} does not exist", param="base")
        return name

    def engine_of(self, base: str) -> Engine:
        return self._models[base].engine

    def is_model_id(self, name: str) -> bool:
        return name in self._ids

    # --- requests ----------------------------------------------------------------------

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
            entry = self.catalogue.get(name)
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
        entry = self.catalogue.get(model_id)
        if entry is not None:
            return entry.base, [(entry.name, entry.scale)]
        stack = self.catalogue.stack(model_id)
        if stack is not None:
            return stack.base, list(stack.adapters)
        raise self._not_found(model_id)

    def _not_found(self, model_id: str) -> ModelNotFoundError:
        available = sorted([*self._ids, *self.catalogue.names()])
        return ModelNotFoundError(
            f"The model '{model_id}' does not exist. Available: {', '.join(available)}", param="model"
        )

    def served_ids(self) -> list[ServedId]:
        """Every id served, for /v1/models: each model's ids (name, then aliases), adapters, stacks."""
        out = []
        for served in self._models.values():
            config = served.config
            out += [ServedId(model_id, "model" if model_id == config.name else "alias", served.created, config.name,
                             max_model_len=served.engine.model.n_ctx) for model_id in config.ids()]
        out += [ServedId(e.name, "adapter", e.created, e.base, e.base) for e in self.catalogue.entries()]
        out += [ServedId(s.name, "stack", self._models[s.base].created, s.base, s.base, adapters=s.adapters)
                for s in self.catalogue.stacks()]
        return out

    def served_id(self, model_id: str) -> ServedId:
        """One served id; ModelNotFoundError lists the ids there are."""
        if not self.ready:
            raise ServiceUnavailableError("models are still loading", retry_after=2)
        for served in self.served_ids():
            if served.id == model_id:
                return served
        raise self._not_found(model_id)

    def abort_all(self, reason: str) -> int:
        """Shutdown past its grace period: end what every model still runs. Returns how many were running."""
        served = [*self._models.values(), *self._retiring]
        running = sum(s.outstanding for s in served)
        for model in served:
            model.abort(reason)
        return running

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
        await self.catalogue.aclose()
        await asyncio.to_thread(self.close)


@dataclass(frozen=True)
class ReloadResult:
    """What apply() changed, by model name."""

    loaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _close_all(models: Iterable[ServedModel]) -> None:
    for served in models:
        served.close()


def _id_map(models_file: ModelsFile) -> dict[str, str]:
    return {model_id: config.name for config in models_file.models for model_id in config.ids()}


def _needs_reload(old: ModelConfig, new: ModelConfig) -> bool:
    """Anything but the ids changes how the model is loaded; ids only change the routing."""
    return old.model_dump(exclude={"aliases"}) != new.model_dump(exclude={"aliases"})
