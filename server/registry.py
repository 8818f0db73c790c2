"""The model registry: models.toml entries turned into loaded models, and model ids resolved to them."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ModelConfig, ModelsFile
from .engine.model import LoadedModel, ModelSpec
from .engine.scheduler import Engine
from .engine.types import NO_ADAPTERS, AdapterSet
from .errors import ConfigError, ModelNotFoundError, ServiceUnavailableError
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


@dataclass(eq=False)
class ServedModel:
    config: ModelConfig
    engine: Engine
    created: int


class ModelRegistry:
    """Owns every loaded model; `resolve()` maps a request's `model` to a Target."""

    def __init__(self, models_file: ModelsFile, settings: Settings, metrics: Metrics | None = None) -> None:
        self._file = models_file
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, ServedModel] = {}
        self._ids: dict[str, str] = {}
        self._retiring: set[ServedModel] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = False

    def load(self) -> None:
        """Load every model (blocking: run it off the event loop)."""
        self._models = self._load_all(self._file.models)
        self._ids = _id_map(self._file)
        self.ready = True

    def _load_all(self, configs: list[ModelConfig]) -> dict[str, ServedModel]:
        """Load each model or none: on a failure the ones loaded so far are closed again."""
        loaded: dict[str, ServedModel] = {}
        try:
            for config in configs:
                loaded[config.name] = self._load_one(config)
        except BaseException:
            for served in loaded.values():
                served.engine.close()
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
        )
        model = LoadedModel(spec)
        engine = Engine(model, queue_size=self._settings.queue_size,
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
        while served.engine.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if served.engine.outstanding:
            log.warning("closing model %s with %d requests still running after %.0fs",
                        served.config.name, served.engine.outstanding, timeout)
        self._retiring.discard(served)
        await asyncio.to_thread(served.engine.close)

    @property
    def default_name(self) -> str:
        return self._file.default.name

    def resolve(self, model_id: str | None) -> Target:
        if not self.ready:
            raise ServiceUnavailableError("models are still loading", retry_after=2)
        name = self._ids.get(model_id) if model_id else self.default_name
        if name is None:
            raise ModelNotFoundError(
                f"The model '{model_id}' does not exist. Available: {', '.join(sorted(self._ids))}",
                param="model",
            )
        return Target(model_id=model_id or name, base_id=name, engine=self._models[name].engine)

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
        return out

    def engines(self) -> dict[str, Engine]:
        return {name: served.engine for name, served in self._models.items()}

    def close(self) -> None:
        """Close every engine (blocking). Engines still retiring after a reload close here too."""
        retiring, self._retiring = list(self._retiring), set()
        for served in [*self._models.values(), *retiring]:
            served.engine.close()
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
