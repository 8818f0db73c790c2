"""One reload at a time, with no load opening beside it: the gate loads wait at and a reload holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class ReloadGate:
    """Held by one reload at a time; a load about to reserve room waits while it is held (on the reload's own
    future, never a poll), and a reload waits for the reload before it and for the loads already opening."""

    def __init__(self) -> None:
        self._reload: asyncio.Future[None] | None = None  # set while a reload runs

    @property
    def held(self) -> bool:
        return self._reload is not None

    async def clear(self) -> None:
        """Return once no reload holds the gate."""
        while self._reload is not None:
            await asyncio.shield(self._reload)

    @contextlib.asynccontextmanager
    async def hold(self, opening: Iterable[asyncio.Future[None]]) -> AsyncIterator[None]:
        """Hold the gate for a reload, once the reload before it ended and the loads `opening` finished."""
        await self.clear()
        reload = self._reload = asyncio.get_running_loop().create_future()
        try:
            if waiting := list(opening):
                await asyncio.wait(waiting)
            yield
        finally:
            self._reload = None
            reload.set_result(None)
