"""Memory held outside any model (a fine-tuning job's trainer child), reserved in the same budget as the models:
idle models are unloaded, least recently used first, to make room; a reservation that must wait for busy models
waits (for a lease released, a load ended, a close returned) with no deadline, its caller's task cancelling it.

While it is held, model loads count it (room.py's `Budget.outside`): a load that cannot fit beside it waits while
busy models may still free enough, and is answered 503 at once, naming the reservation, when only the reservation
stands in its way (a trainer holds its memory for minutes or hours).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import ModelTooLargeError
from ..quantities import format_size
from .manager import Residency
from .resident import Status

log = logging.getLogger(__name__)


@dataclass
class Reservation:
    """`need` bytes held by `name` until `release()` (idempotent)."""

    name: str
    need: int
    _residency: Residency | None  # None: nothing was reserved (no budget to keep)

    def release(self) -> None:
        if self._residency is None:
            return
        budget, _, wakeup = self._residency.memory_room
        if budget.outside.pop(self.name, None) is not None:
            wakeup.notify()


class MemoryReservations:
    """Reserve memory for work outside the models in the residency's budget."""

    def __init__(self, residency: Residency) -> None:
        self._residency = residency

    @property
    def budget(self) -> int:
        return self._residency.budget

    def check(self, name: str, need: int) -> None:
        """ModelTooLargeError when `need` could never fit the budget, models or not."""
        if need > self._residency.budget:
            raise ModelTooLargeError(f"{name} needs an estimated {format_size(need)}; memory_budget is "
                                     f"{format_size(self._residency.budget)}", param="model")

    async def reserve(self, name: str, need: int) -> Reservation:
        """Hold `need` bytes as `name`, unloading idle models to make room and waiting for busy ones to go idle."""
        self.check(name, need)
        budget, closing, wakeup = self._residency.memory_room
        while True:
            residents = list(self._residency.residents.values())
            if budget.fits_outside(need, residents, closing):
                budget.outside[name] = need  # no await since the check: nothing else took the room
                return Reservation(name, need, self._residency)
            idle = sorted((r for r in residents if r.status is Status.LOADED and not r.config.pinned and not r.busy),
                          key=lambda r: r.last_used)
            if idle:
                log.info("unloading %s to make room for %s (%s)", idle[0].name, name, format_size(need))
                await self._residency.unload(idle[0].name)
                continue
            pinned = sum(r.memory("cpu") for r in residents if r.config.pinned and r.holds_memory)
            if pinned + budget.held() + need > budget.cpu and not budget.outside:
                raise ModelTooLargeError(f"{name} needs an estimated {format_size(need)}; memory_budget is "
                                         f"{format_size(budget.cpu)}, of which pinned models use {format_size(pinned)}",
                                         param="model")
            await wakeup.waiter()
