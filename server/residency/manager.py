"""Which models are loaded: each model's state (unloaded, loading, loaded, failed), one shared load per model
on demand, keep-alive unloads once idle, and room made under the memory budget by unloading idle models.

A model is busy while a request holds it (from resolve to its last byte, `lease_scope()`), while one
waits for its load, or while its engine has generations outstanding; a busy model is never unloaded.
Every load and unload takes one lock, so memory accounting sees one change at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ..child import ChildModel
from ..engine.engine import Engine
from ..engine.errors import ModelFileError
from ..errors import (
    ConfigError,
    ConflictError,
    MaxLoadedModelsError,
    ModelBusyError,
    ModelLoadError,
    ModelTooLargeError,
    ServiceUnavailableError,
)
from ..metrics import Metrics
from ..models_toml import ModelConfig
from ..quantities import format_size, parse_duration
from ..settings import Settings
from .footprint import Footprint
from .footprint import estimate as estimate_footprint
from .lease import Lease
from .resident import Hooks, ModelState, Resident, ServedModel, current_scope, file_key

log = logging.getLogger(__name__)

# How long a load waits for busy models to go idle before it answers 503: a request that just
# finished releases its model a moment after its client has read the last byte.
EVICT_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.05


class Residency:
    """Every available model's state; `acquire()` hands out a loaded model, loading it first if need be."""

    def __init__(self, settings: Settings, open_engine: Callable[[ModelConfig], Engine | ChildModel],
                 metrics: Metrics | None, hooks: Hooks) -> None:
        self._settings = settings
        self._open_engine = open_engine
        self._metrics = metrics
        self._hooks = hooks
        self.residents: dict[str, Resident] = {}
        self.lock = asyncio.Lock()
        self.budget = settings.memory_budget_bytes()
        self.gpu_budget = settings.gpu_memory_budget_bytes()
        self._tasks: set[asyncio.Future[Any]] = set()
        self.on_change: Callable[[], None] | None = None  # a model loaded or unloaded (sd_notify's STATUS)
        self._loop: asyncio.AbstractEventLoop | None = None  # where a child process's exit is handled
        if metrics is not None:
            metrics.memory_budget.set(self.budget)

    def add(self, config: ModelConfig) -> Resident:
        resident = self.residents[config.name] = Resident(config, int(time.time()))
        return resident

    # --- startup (blocking, before the loop serves) -------------------------------------

    def load_startup(self) -> None:
        """Load every `load = "startup"` model (blocking); ConfigError when one cannot be served."""
        for resident in self.residents.values():
            if resident.config.pinned and resident.status != "loaded":
                footprint = self.estimate(resident.config)
                used = sum(r.memory("cpu") for r in self.residents.values() if r.status == "loaded")
                if used + footprint.cpu() > self.budget:
                    raise ConfigError(f"model {resident.name!r} (load = \"startup\") needs an estimated "
                                      f"{format_size(footprint.total())}; memory_budget {format_size(self.budget)} "
                                      f"has {format_size(self.budget - used)} left")
                self.mark_loaded(resident, ServedModel.of(resident.config, self._open_engine(resident.config)),
                                 footprint)

    # --- requests ----------------------------------------------------------------------

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """A lease on the loaded model `name`, loaded first if it is not (one load shared by every request
        waiting): the model stays busy until the lease is released. `keep_alive` (seconds, math.inf for
        never) sets how long it stays loaded once idle, as Ollama's request field does.
        """
        resident = self.residents[name]
        self._loop = asyncio.get_running_loop()
        if keep_alive is not None:
            resident.keep_alive = keep_alive
        child = resident.served.child if resident.served is not None else None
        if child is not None and not child.alive:  # it ended while nobody could be told (no loop yet)
            self._child_lost(child, child.exit_reason())
        while resident.status != "loaded" or resident.served is None:
            await self._wait_loaded(resident)
            if self.residents.get(name) is not resident:  # a reload replaced it meanwhile
                raise ServiceUnavailableError(f"model {name!r} was reconfigured while it loaded; retry", retry_after=1)
        resident.last_used = time.monotonic()
        resident.idle_since = None
        lease = self.hold(name)
        held = current_scope()
        if held is not None:  # until http/ releases the leases it holds itself: the scope's end releases it
            held.append(lease.release)
        return lease

    def hold(self, name: str) -> Lease:
        """Keep a loaded model busy until the lease is released (a request, or work outside one: an adapter
        load)."""
        resident = self.residents[name]
        assert resident.served is not None, f"{name} is not loaded"
        resident.leases += 1
        self._cancel_timer(resident)
        return Lease(resident.served, lambda: self._release(resident))

    async def _wait_loaded(self, resident: Resident) -> None:
        if resident.loading is None:
            if resident.status == "failed" and resident.failed_key == file_key(resident.config):
                raise ModelLoadError(f"model {resident.name!r} failed to load: {resident.error}; it is retried "
                                     "once its file or configuration changes", param="model",
                                     path=resident.config.path)
            resident.loading = asyncio.ensure_future(self._load(resident))
            resident.loading.add_done_callback(lambda f: f.cancelled() or f.exception())
        resident.waiting += 1
        try:
            await asyncio.shield(resident.loading)
        finally:
            resident.waiting -= 1

    def _release(self, resident: Resident) -> None:
        resident.leases -= 1
        resident.last_used = time.monotonic()
        self.reschedule(resident)

    # --- loads and unloads ---------------------------------------------------------------

    async def _load(self, resident: Resident) -> None:
        previous, resident.status = resident.status, "loading"
        try:
            deadline = time.monotonic() + EVICT_WAIT_SECONDS
            while True:
                async with self.lock:
                    # Read through `current`: other tasks change the status across the awaits in this loop.
                    current = self.residents.get(resident.name)
                    if current is not resident or current.status == "loaded":
                        return
                    try:
                        footprint = await asyncio.to_thread(estimate_footprint, resident.config)
                    except ModelFileError as exc:
                        # A header the bounded walk refuses never reaches llama.cpp, whose own checks may abort.
                        self._failed(resident, str(exc), by_file=True)
                        raise ModelLoadError(f"model {resident.name!r} failed to load: {exc}", param="model",
                                     path=resident.config.path) from None
                    busy = await self._make_room(resident, footprint)
                    if not busy:
                        await self._open(resident, footprint)
                        return
                # Busy models hold the memory: wait for them without the lock, so loads that fit and
                # unloads go on meanwhile.
                if time.monotonic() >= deadline:
                    raise ModelBusyError(f"model {resident.name!r} needs {format_size(footprint.cpu())}, held by "
                                         f"busy models ({', '.join(busy)}); retry once they finish", retry_after=5)
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            resident.loading = None
            if resident.status == "loading":
                resident.status = "failed" if previous == "failed" and resident.error else "unloaded"

    async def _open(self, resident: Resident, footprint: Footprint) -> None:
        """Open the model's engine (or child process) and its adapters (lock held, room made)."""
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        try:
            opened = await asyncio.to_thread(self._open_engine, resident.config)
        except ConfigError as exc:
            self._failed(resident, str(exc))
            raise ModelLoadError(f"model {resident.name!r} failed to load: {exc}", param="model",
                                     path=resident.config.path) from None
        served = ServedModel.of(resident.config, opened)
        try:
            if served.engine is not None:  # a child process opens its adapters itself
                await self._hooks.attach(resident.name, served.engine)
        except BaseException:
            await asyncio.to_thread(served.close)
            raise
        self.mark_loaded(resident, served, footprint)
        log.info("loaded %s on demand in %.2fs (estimated %s; %s of %s budget in use)", resident.name,
                 time.perf_counter() - started, format_size(footprint.total()), format_size(self.used()),
                 format_size(self.budget))

    def estimate(self, config: ModelConfig) -> Footprint:
        """The footprint of `config`; for a file whose header cannot be read, its size (the load then says why)."""
        try:
            return estimate_footprint(config)
        except ModelFileError as exc:
            log.debug("no memory estimate for %s: %s", config.name, exc)
            try:
                return Footprint(weights=Path(config.path).stat().st_size, kv_per_context=0, compute_per_context=0)
            except OSError:
                return Footprint(weights=0, kv_per_context=0, compute_per_context=0)

    def mark_loaded(self, resident: Resident, served: ServedModel, footprint: Footprint) -> None:
        resident.served, resident.footprint, resident.status = served, footprint, "loaded"
        resident.error = resident.failed_key = None
        resident.loaded_at, resident.last_used = time.time(), time.monotonic()
        self.reschedule(resident)
        self._changed()

    def _failed(self, resident: Resident, reason: str, *, by_file: bool = False) -> None:
        log.error("model %s failed to load: %s", resident.name, reason)
        # An `rpc` model fails on its workers, not its file: the next request tries again (a cheap connect first).
        resident.status, resident.error = "failed", reason
        resident.failed_key = None if resident.config.rpc and not by_file else file_key(resident.config)

    # --- a model's child process (server/child.py) -------------------------------------

    def child_exited(self, child: ChildModel, reason: str) -> None:
        """From the child's watcher thread: its process ended unasked (a worker went away, or it crashed)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._child_lost, child, reason)

    def _child_lost(self, child: ChildModel, reason: str) -> None:
        """The model is failed with the child's reason and loads again on its next request; a pinned one at once,
        retrying with backoff until its workers answer."""
        resident = next((r for r in self.residents.values() if r.served is not None and r.served.child is child), None)
        if resident is None:
            return  # unloaded or replaced meanwhile
        self._cancel_timer(resident)
        log.error("model %s stopped: %s", resident.name, reason)
        resident.served, resident.loaded_at, resident.idle_since, resident.keep_alive = None, None, None, None
        resident.status, resident.error, resident.failed_key = "failed", reason, None
        self._hooks.detach(resident.name)
        self._changed()
        self._spawn(asyncio.to_thread(child.close))  # its files; the process has ended
        if resident.config.pinned:
            self._spawn(self._reload_pinned(resident))

    async def _reload_pinned(self, resident: Resident) -> None:
        delay = 1.0
        while self.residents.get(resident.name) is resident and resident.status == "failed":
            await asyncio.sleep(delay)
            try:
                await self._wait_loaded(resident)
            except ServiceUnavailableError as exc:
                log.warning("model %s: loading again in %.0fs: %s", resident.name, min(delay * 2, 60), exc)
                delay = min(delay * 2, 60.0)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _make_room(self, resident: Resident, footprint: Footprint) -> list[str]:
        """Unload idle models, least recently used first, until `footprint` fits (lock held): [] once it
        fits, else the busy models that hold the memory."""
        need, gpu_need = footprint.cpu(), footprint.gpu()
        limit = self._settings.max_loaded_models
        if need > self.budget or (self.gpu_budget is not None and gpu_need > self.gpu_budget):
            raise ModelTooLargeError(
                f"model {resident.name!r} needs an estimated {format_size(need)}"
                + (f" ({format_size(gpu_need)} on the GPU)" if gpu_need else "")
                + f"; memory_budget is {format_size(self.budget)}"
                + (f", gpu_memory_budget {format_size(self.gpu_budget)}" if self.gpu_budget is not None else ""),
                param="model")
        while True:
            loaded = [r for r in self.residents.values() if r.status == "loaded" and r is not resident]
            if self._fits(loaded, need, gpu_need, limit):
                return []
            idle = sorted((r for r in loaded if not r.config.pinned and not r.busy), key=lambda r: r.last_used)
            if not idle:
                break
            await self._unload(idle[0], "evicted to make room for " + resident.name)
            if self._metrics is not None:
                self._metrics.evictions.labels(idle[0].name).inc()
        pinned = [r for r in loaded if r.config.pinned]
        if limit and len(pinned) >= limit:
            raise MaxLoadedModelsError(
                f"model {resident.name!r} cannot be loaded: max_loaded_models ({limit}) is reached by pinned models "
                f"({', '.join(r.name for r in pinned)}), which never unload; raise max_loaded_models or pin fewer "
                "models", param="model")
        if not self._fits(pinned, need, gpu_need, limit):
            raise ModelTooLargeError(
                f"model {resident.name!r} needs an estimated {format_size(need)}; memory_budget is "
                f"{format_size(self.budget)}, of which pinned models ({', '.join(r.name for r in pinned)}) "
                f"use {format_size(sum(r.memory('cpu') for r in pinned))}", param="model")
        return [r.name for r in loaded if not r.config.pinned]

    def _fits(self, loaded: list[Resident], need: int, gpu_need: int, limit: int) -> bool:
        if limit and len(loaded) >= limit:
            return False
        if sum(r.memory("cpu") for r in loaded) + need > self.budget:
            return False
        gpu_used = sum(r.memory("gpu") for r in loaded)
        return self.gpu_budget is None or gpu_used + gpu_need <= self.gpu_budget

    async def _unload(self, resident: Resident, why: str) -> None:
        """Unload an idle model (lock held; the caller checked it is idle, with no await since)."""
        served = resident.served
        assert served is not None and not resident.busy
        self._cancel_timer(resident)
        resident.status, resident.served, resident.loaded_at, resident.idle_since = "unloaded", None, None, None
        resident.keep_alive = None
        self._hooks.detach(resident.name)
        self._changed()
        await asyncio.to_thread(served.close)
        log.info("unloaded %s (%s)", resident.name, why)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def unload(self, name: str) -> bool:
        """Unload `name` now if idle (True); a busy or loading model unloads once idle (False). A pinned one
        stays (409)."""
        resident = self.residents[name]
        if resident.config.pinned:
            raise ConflictError(f"model {name!r} is pinned (load = \"startup\" in models.toml): it stays loaded",
                                param="model")
        if resident.status == "loading":
            # The load goes on for the requests waiting on it (the lock is the load's until it ends);
            # keep_alive 0 unloads the model as soon as they are answered.
            resident.keep_alive = 0.0
            return False
        async with self.lock:
            resident = self.residents[name]
            if resident.status != "loaded":
                return True
            if not resident.busy:
                await self._unload(resident, "asked to")
                return True
            resident.keep_alive = 0.0
            return False

    # --- keep-alive ----------------------------------------------------------------------

    def ttl(self, resident: Resident) -> float:
        """Seconds a loaded model stays once idle (math.inf: until asked or evicted; pinned: for ever)."""
        if resident.config.pinned:
            return math.inf
        if resident.keep_alive is not None:
            return resident.keep_alive
        if resident.config.keep_alive is not None:
            return parse_duration(resident.config.keep_alive)
        return self._settings.keep_alive_seconds()

    def expires_at(self, resident: Resident) -> float | None:
        """Wall-clock time a loaded idle model unloads; None while busy, or never."""
        ttl = self.ttl(resident)
        if resident.status != "loaded" or resident.idle_since is None or math.isinf(ttl):
            return None
        return resident.idle_since + ttl

    def reschedule(self, resident: Resident) -> None:
        """Arm the keep-alive timer of a loaded model that is idle (poll while its engine still drains)."""
        self._cancel_timer(resident)
        if resident.status != "loaded" or resident.leases or resident.waiting:
            return
        loop = asyncio.get_running_loop() if _in_loop() else None
        if loop is None:
            return
        if resident.busy:  # generations outstanding: a cancelled stream is still draining
            resident.timer = loop.call_later(0.1, self.reschedule, resident)
            return
        if resident.idle_since is None:
            resident.idle_since = time.time()
        ttl = self.ttl(resident)
        if not math.isinf(ttl):
            delay = max(0.0, resident.idle_since + ttl - time.time())
            resident.timer = loop.call_later(delay, self._expire, resident)

    def _expire(self, resident: Resident) -> None:
        resident.timer = None
        self._spawn(self._unload_expired(resident))

    async def _unload_expired(self, resident: Resident) -> None:
        async with self.lock:
            expires = self.expires_at(resident)
            if self.residents.get(resident.name) is resident and not resident.busy and expires is not None \
                    and expires <= time.time() + 0.01:
                await self._unload(resident, f"idle past keep_alive {self.ttl(resident):g}s")

    def _cancel_timer(self, resident: Resident) -> None:
        if resident.timer is not None:
            resident.timer.cancel()
            resident.timer = None

    # --- views ---------------------------------------------------------------------------

    def state(self, resident: Resident) -> ModelState:
        return ModelState(resident.status, resident.config.pinned, resident.memory() or None, resident.loaded_at,
                          self.expires_at(resident), resident.busy, resident.error)

    async def estimate_all(self) -> None:
        """Estimate the footprint of every model that has none yet (a header read each, off the loop); one whose
        file cannot be read or whose header is refused is failed with the reason, as its load would be."""
        for resident in [r for r in self.residents.values() if r.footprint is None]:
            if resident.status == "failed" and resident.failed_key == file_key(resident.config):
                continue  # failed for this very file: neither a header read nor a log line per listing
            try:
                resident.footprint = await asyncio.to_thread(estimate_footprint, resident.config)
            except ModelFileError as exc:
                if resident.status in ("unloaded", "failed") and resident.loading is None:
                    self._failed(resident, str(exc), by_file=True)

    def used(self) -> int:
        return sum(r.memory("cpu") for r in self.residents.values() if r.status == "loaded")

    def loaded(self) -> dict[str, ServedModel]:
        return {n: r.served for n, r in self.residents.items() if r.status == "loaded" and r.served is not None}

    async def aclose(self) -> None:
        for resident in self.residents.values():
            self._cancel_timer(resident)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
