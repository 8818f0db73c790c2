"""Opening one models.toml entry: its ModelSpec, the GGUF loaded into llama.cpp and the Engine over it;
and opening several at once, all or none (a reload's new models)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from .child import ChildModel
from .engine.engine import Engine
from .engine.errors import ModelFileError
from .engine.model import LoadedModel, ModelSpec
from .engine.prompt_cache import CachedState, PromptCache
from .engine.prompt_disk import DiskTier
from .errors import ConfigError
from .metrics import Metrics
from .models_toml import ModelConfig
from .quantities import default_threads
from .residency.footprint import estimate_or_size
from .residency.resident import ServedModel
from .settings import Settings

log = logging.getLogger(__name__)


def model_spec(config: ModelConfig, settings: Settings) -> ModelSpec:
    """What the engine needs to know of a model: its models.toml entry, threads defaulting to the server's."""
    return ModelSpec(
        name=config.name,
        path=Path(config.path),
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        parallel=config.parallel,
        n_threads=config.n_threads or settings.threads or default_threads(),
        # Residency resolves "auto" before it opens (residency/footprint.py: as_placed); other callers get it here.
        n_gpu_layers=estimate_or_size(config).gpu_layers if config.n_gpu_layers == "auto" else config.n_gpu_layers,
        repack=config.repack,
        chat_template=config.chat_template,
        reasoning_format=config.reasoning_format,
        adapter_contexts=config.adapter_contexts,
        rpc=tuple(config.rpc),
        tensor_split=tuple(config.tensor_split),
        **config.engine_options(),
    )


def load_engine(config: ModelConfig, settings: Settings, metrics: Metrics | None,
                prompt_disk: DiskTier | None = None) -> Engine:
    """Load the model's GGUF and start its engine (blocking); a file llama.cpp cannot serve is a ConfigError.
    The prompt cache's disk tier, when given, is the server's, shared by every model (their keys differ)."""
    spec = model_spec(config, settings)
    try:
        model = LoadedModel(spec)
    except ModelFileError as exc:
        raise ConfigError(str(exc)) from None
    engine = Engine(model, queue_size=settings.queue_size, prefix_cache=config.prefix_cache,
                    max_prompt_tokens=settings.max_prompt_tokens or None,
                    prompt_cache=PromptCache(config.prompt_cache_bytes(), spill=_spill_to(prompt_disk), disk=prompt_disk))
    if metrics is not None:
        metrics.model_load.labels(config.name).observe(model.load_seconds)
    log.info(
        "loaded model %s from %s in %.2fs (n_ctx=%d per sequence, parallel=%d, threads=%d, gpu_layers=%d)",
        config.name, spec.path, model.load_seconds, model.n_ctx, spec.parallel, spec.n_threads,
        spec.n_gpu_layers,
    )
    return engine


def _spill_to(disk: DiskTier | None) -> Callable[[CachedState], None] | None:
    """What the RAM tier lets go (evicted, or everything at an unload) is queued for the disk tier's writer."""
    if disk is None:
        return None
    return lambda entry: disk.save(entry.identity, entry.tokens, entry.state)


def open_all(configs: list[ModelConfig],
             open_model: Callable[[ModelConfig], Engine | ChildModel]) -> dict[str, ServedModel]:
    """Open each model or none (blocking): on a failure the ones opened so far are closed again. The budget
    is the caller's to check (residency/manager.py, a reload's plan)."""
    opened: dict[str, ServedModel] = {}
    try:
        for config in configs:
            opened[config.name] = ServedModel.of(config, open_model(config))
    except BaseException:
        close_all(opened.values())
        raise
    return opened


def close_all(models: Iterable[ServedModel]) -> None:
    for served in models:
        served.close()
