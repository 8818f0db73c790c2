"""The model registry: models.toml entries turned into loaded models, and model ids resolved to them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, ModelsFile
from .engine.model import LoadedModel, ModelSpec
from .engine.scheduler import Engine
from .engine.types import NO_ADAPTERS, AdapterSet
from .errors import ModelNotFoundError, ServiceUnavailableError
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


class ModelRegistry:
    """Owns every loaded model; `resolve()` maps a request's `model` to a Target."""

    def __init__(self, models_file: ModelsFile, settings: Settings) -> None:
        self._file = models_file
        self._settings = settings
        self._models: dict[str, ServedModel] = {}
        self._ids: dict[str, str] = {}
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
            engine = Engine(model, queue_size=self._settings.queue_size)
            self._models[config.name] = ServedModel(config, engine, int(time.time()))
            for model_id in config.ids():
                self._ids[model_id] = config.name
            log.info(
                "loaded model %s from %s in %.2fs (n_ctx=%d per sequence, parallel=%d, threads=%d, gpu_layers=%d)",
                config.name, spec.path, model.load_seconds, model.n_ctx, spec.parallel, spec.n_threads,
                spec.n_gpu_layers,
            )
        self.ready = True

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
        for served in self._models.values():
            served.engine.close()
        self._models.clear()
        self.ready = False
