"""The model registry: models.toml entries made available, model ids resolved to them, loaded on demand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .adapters.catalogue import AdapterCatalogue
from .child import ChildModel, start_child
from .engine.embedder import Embedder
from .engine.engine import Engine
from .engine.face import EngineFace
from .engine.prompt_disk import DiskStats, DiskTier, llama_build
from .engine.reranker import Reranker
from .engine.sampling_defaults import SERVER_DEFAULTS, SamplingDefaults, resolve_defaults
from .engine.types import NO_ADAPTERS, AdapterSet, AppliedAdapter, ModelInfo
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
from .listing import Listing, ServedId
from .loading import load_engine, open_all
from .metrics import Metrics
from .models_toml import ModelConfig, ModelsFile
from .residency.lease import Lease
from .residency.manager import Residency
from .residency.reload import apply as apply_reload
from .residency.reload import plan_reload
from .residency.resident import ServedModel, Status
from .settings import Settings
from .tasks import Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where a request goes: the id it asked for, the engine that serves it, the adapters to apply."""

    model_id: str
    base_id: str
    engine: EngineFace  # its face alone: handlers and the core never hold the llama.cpp model
    lease: Lease  # keeps the model loaded until released: the request's end
    adapters: AdapterSet = NO_ADAPTERS
    sampling: SamplingDefaults = SERVER_DEFAULTS  # for the fields a request leaves out

    @property
    def info(self) -> ModelInfo:
        """What the protocols read of the model (its vocabulary, context, template's tool support...)."""
        return self.engine.info


@dataclass(frozen=True)
class EmbeddingTarget:
    """Where an embeddings request goes: the id it asked for, the model that serves it, its embedder."""

    model_id: str
    base_id: str
    embedder: Embedder
    lease: Lease  # keeps the model loaded until released: the request's end


ModelLoader = Callable[[ModelConfig], Engine]
ChildLoader = Callable[[ModelConfig, ModelsFile], ChildModel]  # a model and the file its adapters come from


class ModelRegistry:
    """Every available model, loaded or not; `resolve()` maps a request's `model` to a Target, loading it if need be.

    Adapters and stacks live in `catalogue`, models' states in `residency`; `load_model` builds the
    engine for one models.toml entry (tests pass fakes), by default loading the GGUF file into llama.cpp.
    """

    def __init__(self, models_file: ModelsFile, settings: Settings, metrics: Metrics | None = None, *,
                 load_model: ModelLoader | None = None, start_child: ChildLoader | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self._file = models_file
        self._settings = settings
        self._metrics = metrics
        # The prompt cache's disk tier: one per server, for real loads only (docs/prompt-cache.md).
        self._prompt_disk = None if load_model is not None else _disk_tier(settings)
        self._load_model = load_model or (lambda config: load_engine(config, settings, metrics, self._prompt_disk))
        self._start_child = start_child or self._child
        self._ids: dict[str, str] = {}
        # One supervisor for the background work of the models' lives: retirements, unloads, adapter unloads.
        self._supervisor = supervisor if supervisor is not None else Supervisor()
        self.catalogue = AdapterCatalogue(self, settings.resolved_state_dir() / "adapters", metrics,
                                          supervisor=self._supervisor)
        self.residency = Residency(settings, self._open, metrics, self.catalogue, self._supervisor)
        self._listing = Listing(self.residency, self.catalogue)
        self._retiring: set[ServedModel] = set()
        self.ready = False
        if metrics is not None:
            metrics.watch_memory(lambda: {r.name: r.memory() for r in self.residency.residents.values()
                                          if r.status is Status.LOADED})

    def load(self) -> None:
        """Make every model available and load the `load = "startup"` ones (blocking: run it off the event loop)."""
        for config in self._file.models:
            self.residency.add(config)
        self._ids = _id_map(self._file)
        try:
            self.residency.load_startup()
            self.catalogue.load_config(self._file)
        except BaseException:
            self.close()
            raise
        self.ready = True

    def _open(self, config: ModelConfig, models_file: ModelsFile | None = None) -> Engine | ChildModel:
        """A model with `rpc` runs in a child process of its own (server/child.py says why), but in the child.
        `models_file`: the one being applied, whose adapters the child serves (default: the current one)."""
        if config.rpc and not self._settings.rpc_in_process:
            return self._start_child(config, models_file or self._file)
        return self._load_model(config)

    def _child(self, config: ModelConfig, models_file: ModelsFile) -> ChildModel:
        return start_child(config, models_file, self._settings, self.residency.child_exited)

    def in_child(self, base: str) -> bool:
        """`base` runs in a child process of its own (an `rpc` model), which this process forwards to."""
        return not self._settings.rpc_in_process and bool(self.residency.residents[base].config.rpc)

    def hosts_children(self) -> bool:
        """Some model runs in a child process (cheap: asked for every request that may name one)."""
        return self.ready and not self._settings.rpc_in_process and any(
            r.config.rpc for r in self.residency.residents.values())

    def hosted(self, model_id: str | None) -> str | None:
        """The base model a request's `model` runs on when a child process serves it (its requests are forwarded
        there, server/http/forward.py), else None."""
        if not self.hosts_children():
            return None
        try:
            base, _ = self._lookup(model_id or self.default_name)
        except ModelNotFoundError:
            return None
        return base if self.residency.residents[base].config.rpc else None

    async def apply(self, models_file: ModelsFile, *, drain_timeout: float) -> ReloadResult:
        """Serve `models_file` from now on, reloading only loaded models that changed (call on the event loop).

        A changed model that is not loaded only takes its new configuration; a new or changed
        `load = "startup"` model loads. Loads happen off the loop while the old set keeps serving; if
        one fails, nothing changes (ConfigError). The swap happens on the loop, where resolve() runs,
        so a request sees the old set or the new one, never a mix. Removed and replaced engines are
        closed once their admitted requests have finished.
        """
        if not self.ready:
            raise ConfigError("models are still loading; try again once they are ready")

        async def swap(engines: Mapping[str, Engine | None], changed: set[str], commit: Callable[[], None]) -> None:
            def commit_all() -> None:  # models, ids and adapters change in one step on the loop
                commit()
                self._file, self._ids = models_file, _id_map(models_file)
            await self.catalogue.reconcile(models_file, engines, changed, commit_all)

        async with self.residency.reloading():
            old = set(self.residency.residents)
            plan = plan_reload(self.residency.residents, models_file.models)
            retired = await apply_reload(self.residency, plan,
                                         lambda configs: open_all(configs, lambda c: self._open(c, models_file)), swap)
        for served in retired:
            self._retiring.add(served)
            self._supervisor.spawn(self._retire(served, drain_timeout), name=f"retire {served.config.name}")
        new, loaded = {c.name for c in plan.configs}, {c.name for c in plan.load}
        result = ReloadResult(loaded=sorted(loaded), removed=sorted(old - new),
                              unchanged=sorted(n for n in plan.kept if n not in loaded),
                              reconfigured=sorted(n for n in new if n in old and n not in plan.kept and n not in loaded))
        log.info("models.toml applied: loaded %s, removed %s, unchanged %s, reconfigured while unloaded %s",
                 result.loaded or "none", result.removed or "none", result.unchanged or "none",
                 result.reconfigured or "none")
        return result

    async def _retire(self, served: ServedModel, timeout: float) -> None:
        """Close an engine nobody can reach any more, after its admitted requests end."""
        try:
            await asyncio.wait_for(served.wait_idle(), timeout)
        except TimeoutError:
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

    def engine_of(self, base: str) -> Engine | None:
        """The base's engine while it is loaded, else None."""
        served = self.residency.loaded().get(base)
        return served.engine if served is not None else None

    def base_path(self, base: str) -> Path:
        return Path(self.residency.residents[base].config.path)

    def hold_engine(self, base: str) -> tuple[Engine | None, Callable[[], None]]:
        """The base's engine, kept loaded until the returned release; None (nothing held) while it is not loaded."""
        engine = self.engine_of(base)
        return (engine, self.residency.hold(base).release) if engine is not None else (None, lambda: None)

    def is_model_id(self, name: str) -> bool:
        return name in self._ids

    # --- requests ----------------------------------------------------------------------

    @property
    def default_name(self) -> str:
        return self._file.default.name

    async def resolve(self, model_id: str | None, lora: Iterable[tuple[str, float]] | None = None,
                      keep_alive: float | None = None) -> Target:
        """The engine and adapter set for a request, the base loaded first if it is not.

        `model` may name a base model (or alias), an adapter or a stack; `lora`, when given, is the
        whole adapter set and `model` then only picks the base. `keep_alive` is the request's (seconds).
        """
        self._check_ready()
        requested = model_id or self.default_name
        base, default_set = self._lookup(requested)
        pairs = default_set if lora is None else list(lora)
        self._adapters(base, pairs, lora is not None)  # an unknown adapter loads nothing
        lease = await self.residency.acquire(base, keep_alive)
        try:
            engine = lease.served.local_engine()
            # Read per request from the current config: a reload that changes only these keeps the model open.
            sampling = resolve_defaults(engine.info.gguf_sampling, self.residency.residents[base].config.sampling_overrides())
            return Target(model_id=requested, base_id=base, engine=engine, lease=lease,
                          adapters=self._adapters(base, pairs, lora is not None), sampling=sampling)
        except BaseException:
            lease.release()
            raise

    def _adapters(self, base: str, pairs: list[tuple[str, float]], explicit: bool) -> AdapterSet:
        applied = []
        for name, scale in pairs:
            entry = self.catalogue.get(name)
            if entry is None:
                raise self.catalogue.not_found(name, base, param="lora" if explicit else "model")
            if entry.base != base:
                raise InvalidRequestError(f"adapter {name!r} belongs to model {entry.base!r}, not {base!r}", param="lora")
            if scale != 0.0:  # llama.cpp drops zero scales: scale 0 is the base alone
                applied.append(AppliedAdapter(name, float(scale), entry.adapter.content_hash, entry.adapter))
        return AdapterSet(tuple(applied))

    async def embedder(self, model_id: str | None, keep_alive: float | None = None) -> EmbeddingTarget:
        """The embedder of a base model (or alias), created on its first use, the model loaded first if need be.

        Adapters and stacks are refused: the embedder's context never has adapters applied.
        """
        self._check_ready()
        requested = model_id or self.default_name
        base, adapters = self._lookup(requested)
        if adapters:
            raise InvalidRequestError(
                f"{requested!r} is a LoRA adapter or stack; embeddings come from base models only "
                f"(ask for {base!r})", param="model", code="model_not_supported",
            )
        if not self.residency.residents[base].config.embeddings:
            raise InvalidRequestError(
                f"model {base!r} does not support embeddings (embeddings = false in models.toml)",
                param="model", code="model_not_supported",
            )
        lease = await self.residency.acquire(base, keep_alive)
        served = lease.served
        try:
            if served.embedder is None:  # a reranker scores pairs: the handlers tell the two apart
                engine = served.local_engine()
                kind = Reranker if engine.info.kind == "reranker" else Embedder
                served.embedder = kind(engine.model, queue_size=self._settings.queue_size,
                                       max_input_tokens=self._settings.max_prompt_tokens or None)
        except BaseException:
            lease.release()
            raise
        return EmbeddingTarget(model_id=requested, base_id=base, embedder=served.embedder, lease=lease)

    def check_known(self, model_id: str) -> None:
        """ModelNotFoundError (listing the ids there are) unless `model_id` names a model, alias, adapter or stack;
        nothing is loaded. OpenAI checks the model before the rest of a request: so do the protocols."""
        self._check_ready()
        self._lookup(model_id)

    def _check_ready(self) -> None:
        if not self.ready:
            raise ServiceUnavailableError("models are still loading", retry_after=2)

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
        """Every id served, for /v1/models: each model's ids (name, then aliases), adapters, stacks (listing.py)."""
        return self._listing.served_ids()

    async def read_sampling(self) -> None:
        """Each model file's header, for the listings (off the loop; cached per version)."""
        await self._listing.read_headers()

    def served_id(self, model_id: str) -> ServedId:
        """One served id; ModelNotFoundError lists the ids there are."""
        self._check_ready()
        for served in self.served_ids():
            if served.id == model_id:
                return served
        raise self._not_found(model_id)

    def model_name(self, model_id: str) -> str:
        """The model a model id or alias names (ModelNotFoundError otherwise): for the lifecycle API."""
        self._check_ready()
        if model_id not in self._ids:
            raise self._not_found(model_id)
        return self._ids[model_id]

    def abort_all(self, reason: str) -> int:
        """Shutdown past its grace period: end what every model still runs. Returns how many were running."""
        served = [*self.residency.loaded().values(), *self._retiring]
        running = sum(s.outstanding for s in served)
        for model in served:
            model.abort(reason)
        return running

    def engines(self) -> dict[str, Engine]:
        """The loaded models' engines."""
        return {name: served.engine for name, served in self.residency.loaded().items() if served.engine is not None}

    def prompt_disk_stats(self) -> DiskStats | None:
        """The prompt cache's disk tier's counts (for /metrics), None when the server has none."""
        return None if self._prompt_disk is None else self._prompt_disk.stats()

    def close(self) -> None:
        """Close every engine (blocking). Engines still retiring after a reload close here too."""
        retiring, self._retiring = list(self._retiring), set()
        self.residency.close()
        for served in retiring:
            served.close()
        if self._prompt_disk is not None:
            self._prompt_disk.close()  # after the engines: their unloads queue the RAM tiers' states first
        self.ready = False

    async def aclose(self) -> None:
        """close() from the event loop: stop pending retirements and unloads first so no engine closes twice."""
        await self.residency.aclose()
        await self._supervisor.aclose()
        await self.catalogue.aclose()
        await asyncio.to_thread(self.close)


@dataclass(frozen=True)
class ReloadResult:
    """What apply() changed, by model name."""

    loaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)  # changed while not loaded: takes effect on its next load


def _id_map(models_file: ModelsFile) -> dict[str, str]:
    return {model_id: config.name for config in models_file.models for model_id in config.ids()}


def _disk_tier(settings: Settings) -> DiskTier | None:
    """The prompt cache's disk tier, or None: turned off, or its folder cannot be made (the Daemon's state-dir check
    then says why, with the setting to change, before anything loads)."""
    if not settings.prompt_cache_disk_bytes():
        return None
    try:
        return DiskTier(settings.resolved_state_dir() / "prompt-cache", settings.prompt_cache_disk_bytes(), llama_build())
    except (OSError, ConfigError) as exc:
        log.warning("the prompt cache's disk tier is off: %s", exc)
        return None
