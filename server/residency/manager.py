"""Which models are loaded: each model's state (unloaded, loading, loaded, failed), one shared load per model
on demand, keep-alive unloads once idle, room made under the memory budget by unloading idle models.

A model is busy while a lease holds it (a request, from resolve to its last byte; an adapter opening on it), while
a request waits for its load, or while its engine has generations outstanding; a busy model is never unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from ..child import ChildModel
from ..engine.engine import Engine
from ..engine.errors import ModelFileError
from ..engine.offload import GpuRoom
from ..errors import ConfigError, ConflictError, ModelBusyError, ModelLoadError, ServiceUnavailableError
from ..metrics import Metrics
from ..models_toml import ModelConfig
from ..quantities import format_size
from ..settings import Settings
from ..tasks import Supervisor
from .footprint import Footprint, as_placed, estimate_or_size
from .footprint import estimate as estimate_footprint
from .gate import ReloadGate
from .keepalive import KeepAlive
from .lease import Lease
from .resident import Hooks, ModelState, Resident, ServedModel, Status, file_key
from .room import Budget, Closing, Wakeup

log = logging.getLogger(__name__)

# How long a load waits for busy models to go idle before it answers 503: a request that just
# finished releases its model a moment after its client has read the last byte.
EVICT_WAIT_SECONDS = 30.0


class Residency:
    """Every available model's state; `acquire()` hands out a lease on a loaded model, loading it first if need be.

    Locks: none guards a model's state. Every change of it is a synchronous method run on the event loop (reserve,
    commit, mark unloaded, release), so none is seen half-done, and the I/O between them (a header read, llama.cpp
    opening or closing a model, its adapters opening) runs holding nothing. A load's footprint counts from its
    reservation until its model's close returns, so overlapping loads never overcommit the budget. Reloads do not
    interleave with loads: `reloading()` waits (on events) for the reload before it and for the loads already
    opening, and a load reserves only while no reload is under way. Lock order: Residency holds nothing while it
    calls the catalogue (attach, a reload's reconcile), whose name claims (adapters/claims.py) are the only ones on
    this path, so no order can invert.
    """

    def __init__(self, settings: Settings, open_engine: Callable[[ModelConfig], Engine | ChildModel],
                 metrics: Metrics | None, hooks: Hooks, supervisor: Supervisor | None = None) -> None:
        self._open_engine = open_engine
        self._metrics = metrics
        self._hooks = hooks
        self._own_supervisor = supervisor is None  # else its owner closes it
        self._supervisor = supervisor if supervisor is not None else Supervisor()
        self.residents: dict[str, Resident] = {}
        self._budget = Budget(settings)
        self.keep_alive = KeepAlive(settings, self._supervisor, self._expire)
        self._closing: list[Closing] = []
        self._room = Wakeup()  # a lease released, a load ended, a close returned: a waiting load looks again
        self._gate = ReloadGate()
        self.memory_room = (self._budget, self._closing, self._room)  # for memory held outside models: reservation.py
        self.on_change: Callable[[], None] | None = None  # a model loaded or unloaded (sd_notify's STATUS)
        self._loop: asyncio.AbstractEventLoop | None = None  # where a child process's exit is handled
        if metrics is not None:
            metrics.memory_budget.set(self.budget)

    @property
    def budget(self) -> int:
        return self._budget.cpu

    def add(self, config: ModelConfig) -> Resident:
        resident = self.residents[config.name] = Resident(config, int(time.time()))
        return resident

    # --- startup (blocking, before the loop serves) -------------------------------------

    def load_startup(self) -> None:
        """Load every `load = "startup"` model (blocking); ConfigError when one cannot be served."""
        for resident in self.residents.values():
            if resident.config.pinned and resident.status is not Status.LOADED:
                footprint = estimate_or_size(resident.config, self.gpu_room(resident))
                used = self.used()
                if used + footprint.cpu() > self.budget:
                    raise ConfigError(f"model {resident.name!r} (load = \"startup\") needs an estimated "
                                      f"{format_size(footprint.total())}; memory_budget {format_size(self.budget)} "
                                      f"has {format_size(self.budget - used)} left")
                opened = self._open_engine(as_placed(resident.config, footprint))
                self._mark_loaded(resident, ServedModel.of(resident.config, opened), footprint)

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
        while resident.status is not Status.LOADED or resident.served is None:
            await self._wait_loaded(resident)
            if self.residents.get(name) is not resident:  # a reload replaced it meanwhile
                raise ServiceUnavailableError(f"model {name!r} was reconfigured while it loaded; retry", retry_after=1)
        resident.last_used = time.monotonic()
        resident.idle_since = None
        return self.hold(name)

    def hold(self, name: str) -> Lease:
        """Keep a loaded model busy until the lease is released (a request, or work outside one: an adapter load)."""
        resident = self.residents[name]
        assert resident.served is not None, f"{name} is not loaded"
        resident.leases += 1
        self.keep_alive.cancel(resident)
        return Lease(resident.served, lambda: self._release(resident))

    def _release(self, resident: Resident) -> None:
        resident.leases -= 1
        resident.last_used = time.monotonic()
        self.keep_alive.reschedule(resident)
        self._room.notify()

    async def _wait_loaded(self, resident: Resident) -> None:
        if resident.loading is None:
            if resident.status is Status.FAILED and resident.failed_key == file_key(resident.config):
                raise ModelLoadError(f"model {resident.name!r} failed to load: {resident.error}; it is retried "
                                     "once its file or configuration changes", param="model", path=resident.config.path)
            resident.loading = asyncio.ensure_future(self._load(resident))
            resident.loading.add_done_callback(lambda f: f.cancelled() or f.exception())
        resident.waiting += 1
        try:
            await asyncio.shield(resident.loading)
        finally:
            resident.waiting -= 1
            self._room.notify()

    # --- loads ---------------------------------------------------------------------------

    async def _load(self, resident: Resident) -> None:
        previous = resident.start_loading()
        try:
            footprint = None  # planned again while the GPU's room changes before room is made (a load began or ended)
            while footprint is None or footprint.planned not in (None, self.gpu_room(resident)):
                try:
                    footprint = await asyncio.to_thread(estimate_footprint, resident.config, self.gpu_room(resident))
                except ModelFileError as exc:  # a header the bounded walk refuses never reaches llama.cpp (it may abort)
                    raise self._failed(resident, str(exc), by_file=True) from None
                if not await self._make_room(resident, footprint):
                    return
            resident.reserve(footprint)  # no await since room was made: nothing else took it
            await self._open(resident, footprint)
        finally:
            resident.loading = None
            resident.load_ended(previous)
            self._room.notify()

    async def _make_room(self, resident: Resident, footprint: Footprint) -> bool:
        """Unload idle models, least recently used first, until `footprint` fits, waiting for busy ones to go
        idle for up to EVICT_WAIT_SECONDS (503 then). False when the load is no longer needed: a reload
        replaced the model or loaded it meanwhile."""
        deadline = time.monotonic() + EVICT_WAIT_SECONDS
        while True:
            await self._gate.clear()  # a reload counts the budget with no load opening beside it
            if self.residents.get(resident.name) is not resident or resident.status is Status.LOADED:
                return False
            room = self._budget.room(resident, footprint, self.residents.values(), self._closing)
            if room.evict:
                closing = [self._mark_unloaded(r, "evicted to make room for " + resident.name) for r in room.evict]
                if self._metrics is not None:
                    for victim in room.evict:
                        self._metrics.evictions.labels(victim.name).inc()
                await asyncio.gather(*(self._close(c) for c in closing))
                continue
            if room.refusal is not None:
                raise room.refusal
            if room.fits:
                return True
            if time.monotonic() >= deadline:
                raise ModelBusyError(f"model {resident.name!r} needs {format_size(footprint.cpu())}, held by "
                                     f"busy models ({', '.join(room.holders)}); retry once they finish",
                                     retry_after=5)
            await self._wait_for_room(room.holders, deadline)

    async def _wait_for_room(self, holders: list[str], deadline: float) -> None:
        """Until a lease is released, a load ends, a close returns or a holder's engine goes idle; or the deadline."""
        waits: list[asyncio.Future[None]] = [self._room.waiter()]
        waits += [asyncio.ensure_future(r.served.wait_idle()) for r in self.residents.values()
                  if r.name in holders and r.served is not None and r.served.outstanding]
        try:
            await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _open(self, resident: Resident, footprint: Footprint) -> None:
        """Open the model's engine (or child process) and its adapters (room reserved, nothing held)."""
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        try:
            opened = await asyncio.to_thread(self._open_engine, as_placed(resident.config, footprint))
        except ConfigError as exc:
            raise self._failed(resident, str(exc)) from None
        served = ServedModel.of(resident.config, opened)
        try:
            if served.engine is not None:  # a child process opens its adapters itself
                await self._hooks.attach(resident.name, served.engine)
        except BaseException:
            await asyncio.to_thread(served.close)
            raise
        self._mark_loaded(resident, served, footprint)
        log.info("loaded %s on demand in %.2fs (estimated %s; %s of %s budget in use)", resident.name,
                 time.perf_counter() - started, format_size(footprint.total()), format_size(self.used()),
                 format_size(self.budget))

    def _mark_loaded(self, resident: Resident, served: ServedModel, footprint: Footprint) -> None:
        resident.mark_loaded(served, footprint, time.time(), time.monotonic())
        self.keep_alive.reschedule(resident)
        self._changed()

    def _failed(self, resident: Resident, reason: str, *, by_file: bool = False) -> ModelLoadError:
        log.error("model %s failed to load: %s", resident.name, reason)
        # An `rpc` model fails on its workers, not its file: the next request tries again (a cheap connect first).
        resident.mark_failed(reason, None if resident.config.rpc and not by_file else file_key(resident.config))
        return ModelLoadError(f"model {resident.name!r} failed to load: {reason}", param="model", path=resident.config.path)

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
        self.keep_alive.cancel(resident)
        log.error("model %s stopped: %s", resident.name, reason)
        resident.mark_lost(reason)
        self._hooks.detach(resident.name)
        self._changed()
        self._room.notify()
        self._supervisor.spawn(asyncio.to_thread(child.close), name=f"close {resident.name}'s child")  # its files
        if resident.config.pinned:
            self._supervisor.spawn(self._reload_pinned(resident), name=f"reload pinned {resident.name}")

    async def _reload_pinned(self, resident: Resident) -> None:
        delay = 1.0
        while self.residents.get(resident.name) is resident and resident.status is Status.FAILED:
            await asyncio.sleep(delay)  # backoff between tries, not a poll: each try is a load
            try:
                await self._wait_loaded(resident)
            except ServiceUnavailableError as exc:
                log.warning("model %s: loading again in %.0fs: %s", resident.name, min(delay * 2, 60), exc)
                delay = min(delay * 2, 60.0)

    # --- unloads -------------------------------------------------------------------------

    def _mark_unloaded(self, resident: Resident, why: str) -> Closing:
        """Unload an idle model: its state now, its close to follow (`_close`), its memory counted until then."""
        assert resident.served is not None and not resident.busy
        self.keep_alive.cancel(resident)
        cpu, gpu = resident.memory("cpu"), resident.memory("gpu")
        served = resident.mark_unloaded()
        assert served is not None
        closing = Closing(cpu, gpu, resident.name, served, why)
        self._closing.append(closing)
        self._hooks.detach(resident.name)
        self._changed()
        return closing

    async def _close(self, closing: Closing) -> None:
        try:
            await asyncio.to_thread(closing.served.close)
        finally:
            self._closing.remove(closing)
            self._room.notify()
        log.info("unloaded %s (%s)", closing.name, closing.why)

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
        if resident.status is Status.LOADING:
            # The load goes on for the requests waiting on it; keep_alive 0 unloads the model as soon as
            # they are answered.
            resident.keep_alive = 0.0
            return False
        if resident.status is not Status.LOADED:
            return True
        if not resident.busy:
            await self._close(self._mark_unloaded(resident, "asked to"))
            return True
        resident.keep_alive = 0.0
        return False

    def _expire(self, resident: Resident) -> None:
        """Its keep-alive timer fired: unload it if it is still idle and still the model of that name."""
        expires = self.keep_alive.expires_at(resident)
        if self.residents.get(resident.name) is resident and not resident.busy and expires is not None \
                and expires <= time.time() + 0.01:
            closing = self._mark_unloaded(resident, f"idle past keep_alive {self.keep_alive.ttl(resident):g}s")
            self._supervisor.spawn(self._close(closing), name=f"unload {resident.name}")

    # --- reloads -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reloading(self) -> AsyncIterator[None]:
        """One reload at a time, with no load opening beside it: waits for the reload before it and for the
        loads already opening; a load that comes later waits for this one to end before it reserves room."""
        async with self._gate.hold(r.loading for r in self.residents.values() if r.reserved and r.loading is not None):
            yield

    def swap_in(self, residents: dict[str, Resident], opened: Mapping[str, tuple[ServedModel, Footprint]]) -> \
            list[ServedModel]:
        """A reload's commit (inside `reloading()`, one step on the loop): `residents` serve from now on, the
        `opened` models loaded. Returns the engines it retires: loaded before, reached by nobody now."""
        assert self._gate.held, "a reload's swap runs inside reloading()"
        for name, (served, footprint) in opened.items():
            residents[name].mark_loaded(served, footprint, time.time(), time.monotonic())
        retired = []
        for name, resident in self.residents.items():
            if resident.served is not None and residents.get(name) is not resident:
                self.keep_alive.cancel(resident)
                gone = resident.mark_unloaded()
                assert gone is not None
                retired.append(gone)
        self.residents = residents
        self._changed()
        return retired

    # --- views ---------------------------------------------------------------------------

    def state(self, resident: Resident) -> ModelState:
        engine = resident.served.engine if resident.served is not None else None
        cache = getattr(engine, "prompt_cache", None)  # None also for the tests' stand-in engines
        return ModelState(resident.status, resident.config.pinned, resident.memory() or None, resident.loaded_at,
                          self.keep_alive.expires_at(resident), resident.busy, resident.error,
                          cache.bytes if cache is not None else 0)

    async def estimate_all(self) -> None:
        """Estimate the footprint of every model that has none yet (a header read each, off the loop); one whose
        file cannot be read or whose header is refused is failed with the reason, as its load would be."""
        for resident in [r for r in self.residents.values() if r.footprint is None]:
            if resident.status is Status.FAILED and resident.failed_key == file_key(resident.config):
                continue  # failed for this very file: neither a header read nor a log line per listing
            try:
                resident.footprint = await asyncio.to_thread(estimate_footprint, resident.config, self.gpu_room(resident))
            except ModelFileError as exc:
                if resident.status in (Status.UNLOADED, Status.FAILED) and resident.loading is None:
                    self._failed(resident, str(exc), by_file=True)

    def gpu_room(self, resident: Resident | None = None) -> GpuRoom:  # for an "auto" plan: residency/room.py
        return self._budget.gpu_room(resident, self.residents.values(), self._closing)

    def used(self) -> int:
        return sum(r.memory("cpu") for r in self.residents.values() if r.status is Status.LOADED)

    def loaded(self) -> dict[str, ServedModel]:
        return {n: r.served for n, r in self.residents.items() if r.status is Status.LOADED and r.served is not None}

    def close(self) -> None:
        """Close every loaded model (blocking: at shutdown, or when startup fails); every model ends unloaded."""
        for resident in self.residents.values():
            served = resident.mark_unloaded()
            if served is not None:
                served.close()

    async def aclose(self) -> None:
        """Stop the keep-alive timers, and the background tasks (unloads, drains) when the supervisor is ours."""
        self.keep_alive.cancel_all()
        if self._own_supervisor:
            await self._supervisor.aclose()

