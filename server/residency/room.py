"""The memory budget: whether a model fits beside the models loaded, opening and still closing, and which idle
models to unload, least recently used first, to make it fit; and the GPU room n_gpu_layers = "auto" plans in.

"auto" takes what the GPU has left beside the other models (engine/offload.py), so on the GPU side it fits
by construction and never evicts: two models share the card, the later one with fewer layers if need be. A
fixed n_gpu_layers still makes room under gpu_memory_budget by evicting, as memory_budget does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..engine.offload import GpuRoom
from ..errors import MaxLoadedModelsError, ModelBusyError, ModelTooLargeError, NomoatError
from ..quantities import format_size
from ..settings import Settings
from .footprint import Footprint
from .resident import Resident, ServedModel, Status


@dataclass(frozen=True, eq=False)
class Closing:
    """An unloaded model's engine on its way out: its memory counts against the budget until its close returns."""

    cpu: int
    gpu: int
    name: str
    served: ServedModel
    why: str  # for the log line once it is closed


@dataclass(frozen=True)
class Room:
    """What a load needs done before it may open: unload `evict` (idle, least recently used first); then it
    fits, or waits for `holders` (busy models holding the memory), or is refused (`refusal`)."""

    evict: list[Resident] = field(default_factory=list)
    fits: bool = False
    holders: list[str] = field(default_factory=list)
    refusal: NomoatError | None = None


class Budget:
    """memory_budget, gpu_memory_budget and max_loaded_models, and what they let a load do."""

    def __init__(self, settings: Settings) -> None:
        self.cpu = settings.memory_budget_bytes()
        self.gpu = settings.gpu_memory_budget_bytes()
        self.max_loaded = settings.max_loaded_models
        self.outside: dict[str, int] = {}  # memory held outside any model: a trainer's child (reservation.py)

    def room(self, resident: Resident, footprint: Footprint, residents: Iterable[Resident],
             closing: Iterable[Closing]) -> Room:
        """What loading `resident` takes; ModelTooLargeError when it could never fit."""
        need, gpu_need = footprint.cpu(), footprint.gpu()
        if need > self.cpu or (self.gpu is not None and gpu_need > self.gpu):
            raise ModelTooLargeError(
                f"model {resident.name!r} needs an estimated {format_size(need)}"
                + (f" ({format_size(gpu_need)} on the GPU)" if gpu_need else "")
                + f"; memory_budget is {format_size(self.cpu)}"
                + (f", gpu_memory_budget {format_size(self.gpu)}" if self.gpu is not None else ""),
                param="model")
        holders = [r for r in residents if r.holds_memory and r is not resident]
        freeing = list(closing)
        evict: list[Resident] = []
        while True:
            kept = [r for r in holders if r not in evict]
            if self._fits(kept, freeing, need, gpu_need):
                return Room(evict, fits=True)
            idle = sorted((r for r in kept if r.status is Status.LOADED and not r.config.pinned and not r.busy),
                          key=lambda r: r.last_used)
            if not idle:
                break
            evict.append(idle[0])
        pinned = [r for r in holders if r.config.pinned]
        if self.max_loaded and len(pinned) >= self.max_loaded:
            return Room(evict, refusal=MaxLoadedModelsError(
                f"model {resident.name!r} cannot be loaded: max_loaded_models ({self.max_loaded}) is reached by "
                f"pinned models ({', '.join(r.name for r in pinned)}), which never unload; raise "
                "max_loaded_models or pin fewer models", param="model"))
        if not self._fits(pinned, [], need, gpu_need, outside=False):  # a trainer's memory comes back: it waits
            return Room(evict, refusal=ModelTooLargeError(
                f"model {resident.name!r} needs an estimated {format_size(need)}; memory_budget is "
                f"{format_size(self.cpu)}, of which pinned models ({', '.join(r.name for r in pinned)}) "
                f"use {format_size(sum(r.memory('cpu') for r in pinned))}", param="model"))
        busy = [r.name for r in kept if not r.config.pinned]
        if self.outside and not busy and not freeing:  # only a trainer holds it, for minutes or hours: waiting
            # the load's EVICT_WAIT_SECONDS would only delay the same 503
            return Room(evict, refusal=ModelBusyError(
                f"model {resident.name!r} needs an estimated {format_size(need)}; the memory is held by "
                f"{', '.join(self.outside)} ({format_size(self.held())} of memory_budget {format_size(self.cpu)}): "
                "retry once it finishes, or cancel it", retry_after=30))
        return Room(evict, holders=busy + list(self.outside))

    def gpu_room(self, resident: Resident | None, residents: Iterable[Resident], closing: Iterable[Closing]) -> GpuRoom:
        """What the other models hold of the GPU, for `resident`'s "auto" plan: the loads under way (reserved, not
        yet all on the device, whose free memory shows the loaded and closing models already) and, under
        gpu_memory_budget, what is left of it beside every model loaded, loading or closing."""
        holders = [r for r in residents if r.holds_memory and r is not resident and r.footprint is not None]
        pending = sum(r.memory("gpu") + r.footprint.gpu_compute for r in holders
                      if r.status is Status.LOADING and r.footprint is not None)
        if self.gpu is None:
            return GpuRoom(pending)
        return GpuRoom(pending, self.gpu - sum(r.memory("gpu") for r in holders) - sum(c.gpu for c in closing))

    def _fits(self, holders: list[Resident], closing: list[Closing], need: int, gpu_need: int, *,
              outside: bool = True) -> bool:
        if self.max_loaded and len(holders) + len(closing) >= self.max_loaded:
            return False
        if sum(r.memory("cpu") for r in holders) + sum(h.cpu for h in closing) + need > self.cpu - self.held(outside):
            return False
        gpu_used = sum(r.memory("gpu") for r in holders) + sum(h.gpu for h in closing)
        return self.gpu is None or gpu_used + gpu_need <= self.gpu


    def held(self, outside: bool = True) -> int:
        return sum(self.outside.values()) if outside else 0

    def fits_outside(self, need: int, residents: Iterable[Resident], closing: Iterable[Closing]) -> bool:
        """Whether `need` bytes held outside any model (a trainer) fit beside what is loaded, loading and closing."""
        holders = [r for r in residents if r.holds_memory]
        return sum(r.memory("cpu") for r in holders) + sum(c.cpu for c in closing) + self.held() + need <= self.cpu


class Wakeup:
    """Wakes every task waiting at the moment `notify()` is called (room may have been freed). Used on the
    event loop only; each waiter is a future of its own running loop (engine/in_flight.py says why)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def waiter(self) -> asyncio.Future[None]:
        """A future done at the next `notify()`: registered now, so a notify before it is awaited is not lost."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        waiter.add_done_callback(self._waiters.discard)
        return waiter

    def notify(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)
