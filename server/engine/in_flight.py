"""A count of a model's requests in flight, kept on the event loop, and a wait for it to reach zero."""

from __future__ import annotations

import asyncio


class InFlight:
    """Requests admitted and not yet finished, with `wait_idle()` woken the moment the count drops to zero.

    Changed and read on the event loop only (the engine's worker hands its results back there
    before a request counts as finished), so it needs no lock. Each waiter parks on a future of
    its own running loop rather than on one shared asyncio.Event, which would bind to whichever
    loop waited first: a model outlives the loops of tests that each run their own.
    """

    def __init__(self) -> None:
        self._count = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def count(self) -> int:
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        self._count = value
        if value == 0:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_idle(self) -> None:
        """Return once no request is in flight (at once when none is); any number of tasks may wait."""
        if self._count == 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
