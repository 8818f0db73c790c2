"""keep_alive: how long an idle loaded model stays, and the timer that unloads it once that time is up."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from ..quantities import parse_duration
from ..settings import Settings
from ..tasks import Supervisor
from .resident import Resident, ServedModel, Status


class KeepAlive:
    """One timer per idle loaded model; `expire` is called on the loop when a model's time is up.

    A model whose leases are gone but whose engine still drains (a cancelled stream finishing its step)
    is not idle yet: a task waits for its engine to go idle, then arms the timer.
    """

    def __init__(self, settings: Settings, supervisor: Supervisor, expire: Callable[[Resident], None]) -> None:
        self._settings = settings
        self._supervisor = supervisor
        self._expire = expire
        self._timers: dict[Resident, asyncio.TimerHandle] = {}
        self._drains: dict[Resident, asyncio.Task[None]] = {}

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
        if resident.status is not Status.LOADED or resident.idle_since is None or math.isinf(ttl):
            return None
        return resident.idle_since + ttl

    def reschedule(self, resident: Resident) -> None:
        """Arm the timer of a loaded model that is idle; nothing while it is held or waited for."""
        self.cancel(resident)
        if resident.status is not Status.LOADED or resident.leases or resident.waiting:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # startup loads, before the loop serves: the first request's release arms it
        if resident.busy:  # generations outstanding: a cancelled stream is still draining
            served = resident.served
            assert served is not None
            self._drains[resident] = self._supervisor.spawn(self._after_drain(resident, served),
                                                            name=f"keep-alive drain {resident.name}")
            return
        if resident.idle_since is None:
            resident.idle_since = time.time()
        ttl = self.ttl(resident)
        if not math.isinf(ttl):
            delay = max(0.0, resident.idle_since + ttl - time.time())
            self._timers[resident] = asyncio.get_running_loop().call_later(delay, self._fire, resident)

    async def _after_drain(self, resident: Resident, served: ServedModel) -> None:
        await served.wait_idle()
        self._drains.pop(resident, None)
        if resident.served is served:
            self.reschedule(resident)

    def _fire(self, resident: Resident) -> None:
        self._timers.pop(resident, None)
        self._expire(resident)

    def cancel(self, resident: Resident) -> None:
        timer = self._timers.pop(resident, None)
        if timer is not None:
            timer.cancel()
        drain = self._drains.pop(resident, None)
        if drain is not None and drain is not asyncio.current_task():
            drain.cancel()

    def cancel_all(self) -> None:
        for resident in [*self._timers, *self._drains]:
            self.cancel(resident)
